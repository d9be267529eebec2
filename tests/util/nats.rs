//! A real `nats-server` with JetStream per test: a random loopback port,
//! its store in the test's temp dir, killed by pid when dropped. Restart
//! on the same store, SIGSTOP and SIGCONT for the outage cases.
//!
//! Without `nats-server` a test prints a loud skip line naming the Debian
//! package, unless `WEAVER_REQUIRE_ALL=1` (CI), where that is a failure.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub struct NatsServer {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
}

/// Whether `nats-server` can run here; prints the skip line (or fails
/// under `WEAVER_REQUIRE_ALL=1`) when it cannot.
pub fn available() -> bool {
    let ok = Command::new("nats-server")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let require = std::env::var("WEAVER_REQUIRE_ALL").is_ok_and(|v| v == "1");
        let msg = "nats-server not found: the fleet tests did not run \
                   (install it: apt-get install nats-server)";
        assert!(!require, "{msg}; WEAVER_REQUIRE_ALL=1 requires them");
        let _ = std::io::stderr()
            .write_all(format!("\n======== SKIPPED: {msg} ========\n\n").as_bytes());
    }
    ok
}

impl NatsServer {
    /// Start a server with JetStream, its store and ports file under `dir`.
    pub fn start(dir: &Path) -> NatsServer {
        Self::start_with(dir, &[])
    }

    /// With extra arguments (`--auth TOKEN`...).
    pub fn start_with(dir: &Path, extra: &[&str]) -> NatsServer {
        std::fs::create_dir_all(dir).unwrap();
        let mut s = NatsServer {
            dir: dir.to_path_buf(),
            port: 0,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn(None);
        s
    }

    fn spawn(&mut self, port: Option<u16>) {
        let ports = self.dir.join("ports");
        let _ = std::fs::remove_dir_all(&ports);
        std::fs::create_dir_all(&ports).unwrap();
        let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(self.dir.join("store"))
            .arg("--ports_file_dir")
            .arg(&ports)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("server.log")).unwrap())
            .spawn()
            .expect("spawn nats-server");
        let pid = child.id();
        self.child = Some(child);
        // The ports file appears once the server listens.
        let file = ports.join(format!("nats-server_{pid}.ports"));
        let end = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    let url = v["nats"][0].as_str().or(v["client"][0].as_str()).unwrap_or("");
                    if let Some(p) = url.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()) {
                        break p;
                    }
                }
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                panic!("nats-server exited ({st}) before listening:\n{log}");
            }
            assert!(Instant::now() < end, "nats-server wrote no ports file in 20 s");
            std::thread::sleep(Duration::from_millis(10));
        };
        self.port = port;
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same store and port.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        // The port may take a moment to be free again.
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            self.spawn(Some(port));
            if self.port == port {
                return;
            }
            self.kill();
            assert!(Instant::now() < end, "port {port} not free again");
        }
    }

    pub fn stop(&self) {
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGSTOP);
    }

    pub fn cont(&self) {
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGCONT);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.cont();
        }
        self.kill();
    }
}

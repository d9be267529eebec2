//! Test harness: each test gets a private runtime dir, runs the real
//! binaries, and kills (by pid) every process it started when it ends.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use weaver::client::Client;
use weaver::pidfile;

pub const WEAVER: &str = env!("CARGO_BIN_EXE_weaver");
pub const COMPUTE: &str = env!("CARGO_BIN_EXE_compute-daemon");

pub struct TestEnv {
    pub tmp: tempfile::TempDir,
    /// The runtime dir weaver uses (created by weaver itself).
    pub rt: PathBuf,
    extra_env: Vec<(String, String)>,
    pids: Mutex<Vec<u32>>,
}

/// Poll `f` every few milliseconds until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    pub fn new() -> Self {
        // Short paths: Unix socket paths are limited to 108 bytes.
        let tmp = tempfile::Builder::new().prefix("wv").tempdir_in("/tmp").unwrap();
        let rt = tmp.path().join("rt");
        TestEnv { tmp, rt, extra_env: Vec::new(), pids: Mutex::new(Vec::new()) }
    }

    /// Set an environment variable for every weaver command of this test.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.extra_env.push((k.into(), v.into()));
        self
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(WEAVER);
        c.env("WEAVER_RUNTIME_DIR", &self.rt)
            .env("XDG_RUNTIME_DIR", self.tmp.path())
            .env("WEAVER_COMPUTE_BIN", COMPUTE)
            .env("WEAVER_LOG", "debug")
            .env_remove("WEAVER_COMPUTE_WORKERS")
            .env_remove("RUST_LOG")
            // Never the user's own weaver.toml.
            .env_remove("WEAVER_CONFIG")
            .env("XDG_CONFIG_HOME", self.tmp.path().join("config"))
            // Never the user's own state dir either.
            .env_remove("WEAVER_STATE_DIR")
            .env("XDG_STATE_HOME", self.tmp.path().join("state"))
            .stdin(Stdio::null());
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    /// Run weaver with `args`, at most 60 s, and record the daemon's pid.
    pub fn run(&self, args: &[&str]) -> Output {
        let child =
            self.cmd().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let out = wait_output(child, Duration::from_secs(60));
        self.track_daemon();
        out
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "weaver {args:?} failed: {:?}\nstdout: {}\nstderr: {}\nlog:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `status --json --wait`, parsed; records the daemon and compute pids.
    pub fn status(&self) -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["status", "--json", "--wait"])).unwrap();
        if let Some(p) = v["compute"]["pid"].as_u64() {
            self.track(p as u32);
        }
        v
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        pidfile::live_pid(&self.rt.join("weaver.pid"))
    }

    pub fn compute_pid(&self) -> u32 {
        self.status()["compute"]["pid"].as_u64().expect("compute running") as u32
    }

    fn track_daemon(&self) {
        if let Some(p) = self.daemon_pid() {
            self.track(p);
        }
    }

    pub fn track(&self, pid: u32) {
        let mut v = self.pids.lock().unwrap();
        if !v.contains(&pid) {
            v.push(pid);
        }
    }

    /// A library client on the control socket (the daemon must be running).
    pub fn client(&self) -> Client {
        Client::connect(&self.rt.join("control.sock"), false).unwrap().unwrap()
    }

    pub fn raw(&self) -> UnixStream {
        UnixStream::connect(self.rt.join("control.sock")).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.rt.join("weaver.log")).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.rt.join(name)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.track_daemon();
        let pids = self.pids.lock().unwrap().clone();
        for &p in &pids {
            if pidfile::alive(p) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let left: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|&p| !wait_for(Duration::from_secs(5), || !pidfile::alive(p)))
            .collect();
        if !left.is_empty() && !std::thread::panicking() {
            panic!("processes left behind: {left:?}");
        }
    }
}

/// Wait for a child with a limit; kill it if it overruns.
pub fn wait_output(mut child: Child, limit: Duration) -> Output {
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut v);
        }
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut v);
        }
        v
    });
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("command ran over {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Output { status, stdout: t_out.join().unwrap(), stderr: t_err.join().unwrap() }
}

/// True if `p` exists (any file type, symlinks not followed).
pub fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Reference Mandelbrot renderer, written from the formula in
/// include/weaver_compute.h independently of the C code.
pub fn render_reference(w: u32, h: u32, iters: u32, region: [f64; 4]) -> Vec<u8> {
    let [x_min, x_max, y_min, y_max] = region;
    let mut out = format!("P6\n{w} {h}\n255\n").into_bytes();
    for py in 0..h {
        for px in 0..w {
            let cx = x_min + (px as f64 + 0.5) * (x_max - x_min) / w as f64;
            let cy = y_max - (py as f64 + 0.5) * (y_max - y_min) / h as f64;
            let (mut zx, mut zy) = (0.0f64, 0.0f64);
            let mut n = 0;
            while n < iters {
                if zx * zx + zy * zy > 4.0 {
                    break;
                }
                let t = zx * zx - zy * zy + cx;
                zy = 2.0 * zx * zy + cy;
                zx = t;
                n += 1;
            }
            if n >= iters && zx * zx + zy * zy <= 4.0 {
                out.extend_from_slice(&[0, 0, 0]);
            } else {
                let t = n * 255 / iters;
                out.extend_from_slice(&[t as u8, ((t * 7) & 255) as u8, (255 - t) as u8]);
            }
        }
    }
    out
}

/// Live processes whose command line holds every one of `needles` as an
/// argument (for "exactly one daemon").
pub fn processes_mentioning(needles: &[&str]) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd);
        let args: Vec<&str> = cmd.split('\0').collect();
        if needles.iter().all(|n| args.contains(n)) && pidfile::alive(pid) {
            v.push(pid);
        }
    }
    v
}

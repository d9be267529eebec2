//! The Python weavelet client's tests (`python/tests`, standard `unittest`),
//! run with this build's `weaver` and `compute-daemon` so that the tests
//! against a real weaver can run where it has the `config` command.
//!
//! Without `python3` the test passes with a loud skip line, unless
//! `WEAVER_REQUIRE_ALL=1` (CI), where a missing `python3` is a failure.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const WEAVER: &str = env!("CARGO_BIN_EXE_weaver");
const COMPUTE: &str = env!("CARGO_BIN_EXE_compute-daemon");

fn python3_available() -> bool {
    Command::new("python3")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn python_unittests() {
    if !python3_available() {
        let require = std::env::var("WEAVER_REQUIRE_ALL").is_ok_and(|v| v == "1");
        let msg = "python3 not found: the weavelet Python tests did not run \
                   (install Python 3.8 or later, e.g. apt-get install python3)";
        assert!(!require, "{msg}; WEAVER_REQUIRE_ALL=1 requires them");
        let line = format!("\n======== SKIPPED: {msg} ========\n\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "python/tests", "-v"])
        .current_dir(root)
        .env("WEAVER_BIN", WEAVER)
        .env("WEAVER_COMPUTE_BIN", COMPUTE)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("WEAVER_WEAVELET_SOCKET")
        .env_remove("WEAVER_RUNTIME_DIR")
        .env_remove("WEAVER_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run python3 -m unittest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // unittest reports on stderr: every test line, the skips with their
    // reasons, then "Ran N tests" and "OK (skipped=K)" or "FAILED (...)".
    print!("{stdout}");
    let summary: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            l.starts_with("SKIP ")
                || l.contains("skipped")
                || l.starts_with("Ran ")
                || l.starts_with("OK")
                || l.starts_with("FAILED")
        })
        .collect();
    if !out.status.success() {
        panic!("python/tests failed ({}):\n{stderr}", out.status);
    }
    // The whole report is captured (shown with --nocapture); the summary and
    // the skips go straight to stderr, so they show in a plain `cargo test`.
    eprintln!("{stderr}");
    let mut text = String::from("\npython/tests summary:\n");
    for line in summary {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    let _ = std::io::stderr().write_all(text.as_bytes());
}

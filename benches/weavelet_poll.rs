//! The Python weavelet client's `poll()` when nothing changed (goal < 5 us),
//! against baselines taken in the same run: a bare non-blocking `recv` that
//! raises BlockingIOError, `select.poll().poll(0)` and an empty method call.
//! `python/bench_poll.py` does the measuring against its own fake weaver;
//! this harness runs it and prints the figures with their ratios.
//!
//! `cargo bench --bench weavelet_poll`; WEAVER_BENCH_QUICK=1 runs fewer calls.
//! Without python3 it says so and measures nothing.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = match Command::new("python3")
        .arg(root.join("python/bench_poll.py"))
        .current_dir(root)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            println!("weavelet_poll: SKIPPED: python3 could not be run ({e}); install Python 3.8+");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python/bench_poll.py failed ({}):\n{text}", out.status);
    let result = text.lines().find_map(|l| l.strip_prefix("RESULT ")).expect("a RESULT line");
    let fig: HashMap<&str, f64> = result
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k, v.parse().expect("a number")))
        .collect();
    let (poll, recv, poll0, empty) =
        (fig["poll_ns"], fig["recv_ns"], fig["poll0_ns"], fig["empty_ns"]);
    println!("weavelet_poll: Weavelet.poll() with nothing changed, {} calls", fig["calls"]);
    let rows = [
        ("poll()", poll, String::new()),
        (
            "baseline: recv raising BlockingIOError",
            recv,
            format!("poll()/recv  = {:.2}x", poll / recv),
        ),
        ("baseline: select.poll().poll(0)", poll0, format!("poll()/poll0 = {:.2}x", poll / poll0)),
        ("baseline: empty method call", empty, format!("poll()/empty = {:.1}x", poll / empty)),
    ];
    for (label, ns, ratio) in rows {
        let line = format!("  {label:<40} {ns:>7.0} ns/call   {ratio}");
        println!("{}", line.trim_end());
    }
    println!("  goal: under 5000 ns per call: {}", if poll < 5000.0 { "met" } else { "NOT MET" });
}

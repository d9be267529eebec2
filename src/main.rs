//! `weaver`: parse the command line, run the client or the daemon, and map
//! errors to exit codes (the only place that does).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::Parser;

use weaver::cli::{Cli, Command, ComputeArgs, Global, Targets};
use weaver::client::Client;
use weaver::error::{Error, Kind, Result};
use weaver::launch::{self, Launch, Outcome};
use weaver::protocol::{
    EventRecord, LogChunk, LogQuery, LogStream, ProcRow, ReloadReport, Request, Response,
    StatusReport, Verb,
};
use weaver::runtime_dir::{self, RuntimeDir};
use weaver::{daemon, logging};

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("weaver: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<()> {
    if let Command::Guard = cli.command {
        weaver::daemon::guard::run(std::io::stdin().lock());
        return Ok(());
    }
    let g = cli.global;
    let dir = RuntimeDir::open(&g.runtime_dir.clone().unwrap_or_else(runtime_dir::default_path))?;
    match cli.command {
        Command::Daemon { foreground: true, ready_fd, log_file } => {
            logging::init();
            let opts = daemon::Options {
                dir,
                compute_bin: compute_bin(&g)?,
                compute_workers: g.compute_workers,
                config: weaver::supervise::locate(g.config.as_deref()),
                ready_fd,
                log_file,
            };
            daemon::run(opts)
        }
        Command::Guard => unreachable!("handled above"),
        Command::Daemon { foreground: false, .. } => {
            let (_, outcome) = connect(&g, &dir)?;
            match outcome {
                Outcome::Started(pid) => println!("weaver daemon started (pid {pid})"),
                Outcome::Connected => println!("weaver daemon already running"),
            }
            Ok(())
        }
        Command::Status { json, wait } => {
            let (mut c, _) = connect(&g, &dir)?;
            let r = c.call(Request::Status { wait_compute: wait }, &[])?;
            let Response::Status(s) = r.resp else { return Err(unexpected(&r.resp)) };
            if json {
                println!("{}", serde_json::to_string_pretty(&s).expect("status serialises"));
            } else {
                print_status(&s);
            }
            Ok(())
        }
        Command::Compute(args) => compute(&g, &dir, args),
        Command::Shutdown => shutdown(&dir),
        Command::Ps { json } => {
            let (mut c, _) = connect(&g, &dir)?;
            let r = c.call(Request::Ps, &[])?;
            let Response::Ps(rows) = r.resp else { return Err(unexpected(&r.resp)) };
            if json {
                println!("{}", serde_json::to_string_pretty(&rows).expect("rows serialise"));
            } else {
                print_ps(&rows);
            }
            Ok(())
        }
        Command::Start(t) => control(&g, &dir, Verb::Start, t),
        Command::Stop(t) => control(&g, &dir, Verb::Stop, t),
        Command::Restart(t) => control(&g, &dir, Verb::Restart, t),
        Command::Logs { name, follow, lines, stream, since, json } => {
            let tail = lines.or(if follow && since.is_none() { Some(10) } else { None });
            logs(&g, &dir, name, follow, tail, stream, since.unwrap_or(0), json)
        }
        Command::Events { names, output, history, json } => {
            let (mut c, _) = connect(&g, &dir)?;
            let tag = c
                .send(Request::Events { names, output, history }, &[])
                .map_err(|e| Error::new(Kind::Daemon, format!("cannot send request: {e}")))?;
            let mut out = std::io::stdout().lock();
            loop {
                let r = match c.recv() {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        return Err(Error::new(Kind::Daemon, format!("lost the daemon: {e}")))
                    }
                };
                if r.tag != tag {
                    continue;
                }
                match r.resp {
                    Response::Event(e) => {
                        let line = if json { json_line(&e) } else { event_text(&e) };
                        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                            return Ok(());
                        }
                    }
                    Response::Error(e) => return Err(e.into()),
                    other => return Err(unexpected(&other)),
                }
            }
        }
        Command::Reload { dry_run, json } => {
            let (mut c, _) = connect(&g, &dir)?;
            let r = c.call(Request::Reload { dry_run }, &[])?;
            let Response::Reload(rep) = r.resp else { return Err(unexpected(&r.resp)) };
            if json {
                println!("{}", serde_json::to_string_pretty(&rep).expect("report serialises"));
            } else {
                print_reload(&rep);
            }
            Ok(())
        }
    }
}

fn control(g: &Global, dir: &RuntimeDir, verb: Verb, t: Targets) -> Result<()> {
    let (mut c, _) = connect(g, dir)?;
    let names = if t.all { Vec::new() } else { t.names };
    let r = c.call(Request::Control { verb, names }, &[])?;
    let Response::Done { instances } = r.resp else { return Err(unexpected(&r.resp)) };
    if t.json {
        println!("{}", serde_json::to_string(&instances).expect("names serialise"));
    } else {
        let what = match verb {
            Verb::Start => "starting",
            Verb::Stop => "stopping",
            Verb::Restart => "restarting",
        };
        println!(
            "{what}: {}",
            if instances.is_empty() { "nothing".to_string() } else { instances.join(", ") }
        );
    }
    Ok(())
}

/// One JSON object on a line, without null fields.
fn json_line<T: serde::Serialize>(v: &T) -> String {
    let mut v = serde_json::to_value(v).expect("serialisable");
    if let serde_json::Value::Object(m) = &mut v {
        m.retain(|_, x| !x.is_null());
    }
    v.to_string()
}

fn event_text(e: &EventRecord) -> String {
    let mut s = format!("{} {} {}", e.seq, e.instance, e.event);
    if let Some(p) = e.pid {
        s += &format!(" pid={p}");
    }
    if let Some(c) = e.code {
        s += &format!(" code={c}");
    }
    if let Some(sig) = &e.signal {
        s += &format!(" signal={sig}");
    }
    if let Some(d) = e.delay_ms {
        s += &format!(" in={d}ms attempt={}", e.attempt.unwrap_or(0));
    }
    if let Some(d) = &e.detail {
        s += &format!(": {d}");
    }
    s
}

#[allow(clippy::too_many_arguments)]
fn logs(
    g: &Global,
    dir: &RuntimeDir,
    name: String,
    follow: bool,
    tail: Option<u32>,
    stream: Option<LogStream>,
    mut after: u64,
    json: bool,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let mut tail = tail;
    // The daemon we read from: sequence numbers belong to one daemon, so a
    // follow that finds a different one starts from its oldest kept line.
    let mut daemon_pid = None;
    let mut waiting = false;
    loop {
        let (mut c, _) = match daemon_pid {
            None => connect(g, dir)?,
            // Reconnecting: never start a daemon (a follow must not undo a
            // shutdown); wait for one to appear, like `tail -F`.
            Some(_) => {
                let quiet = Global { no_start: true, ..g.clone() };
                match connect(&quiet, dir) {
                    Ok(c) => c,
                    Err(_) => {
                        if !waiting {
                            eprintln!("weaver: the daemon is gone; waiting for it to come back (Ctrl-C to quit)");
                            waiting = true;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        continue;
                    }
                }
            }
        };
        if daemon_pid.is_some_and(|p| p != c.server.pid) {
            eprintln!(
                "weaver: the daemon restarted (pid {}); following its output from the start",
                c.server.pid
            );
            after = 0;
        }
        daemon_pid = Some(c.server.pid);
        waiting = false;
        let req = Request::Logs(LogQuery {
            name: name.clone(),
            after,
            tail: tail.take(),
            stream,
            follow,
        });
        let tag = c
            .send(req, &[])
            .map_err(|e| Error::new(Kind::Daemon, format!("cannot send request: {e}")))?;
        loop {
            let r = match c.recv() {
                Ok(Some(r)) => r,
                // The daemon went away while following: resume where we
                // were once it is back.
                Ok(None) | Err(_) if follow => break,
                Ok(None) => return Ok(()),
                Err(e) => return Err(Error::new(Kind::Daemon, format!("lost the daemon: {e}"))),
            };
            if r.tag != tag {
                continue;
            }
            let chunk: LogChunk = match r.resp {
                Response::Logs(c) => c,
                Response::Error(e) => return Err(e.into()),
                other => return Err(unexpected(&other)),
            };
            after = chunk.next;
            if print_chunk(&mut out, &chunk, json).is_err() {
                return Ok(()); // stdout closed (a pager quit)
            }
            if !follow {
                return Ok(());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn print_chunk(out: &mut impl Write, c: &LogChunk, json: bool) -> std::io::Result<()> {
    if c.lost > 0 {
        if json {
            writeln!(out, "{}", serde_json::json!({"instance": c.instance, "lost": c.lost}))?;
        } else {
            writeln!(
                out,
                "[weaver: {} line(s) of {} were dropped before they could be shown]",
                c.lost, c.instance
            )?;
        }
    }
    for l in &c.lines {
        if json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"instance": c.instance, "seq": l.seq, "stream": l.stream, "time_ms": l.time_ms, "text": l.text})
            )?;
        } else {
            writeln!(out, "{}", l.text)?;
        }
    }
    out.flush()
}

fn ms_text(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 120_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m", ms / 60_000)
    }
}

fn print_ps(rows: &[ProcRow]) {
    if rows.is_empty() {
        println!("no supervised processes (declare them in weaver.toml)");
        return;
    }
    // One write for the whole table (stdout is line-buffered).
    use std::fmt::Write as _;
    let mut table = String::with_capacity(80 * (rows.len() + 1));
    let _ = writeln!(
        table,
        "{:<20} {:<14} {:>8} {:>8} {:>8}  INFO",
        "NAME", "STATE", "PID", "RESTARTS", "UPTIME"
    );
    for r in rows {
        let mut info = Vec::new();
        if let Some(ms) = r.next_restart_ms {
            info.push(format!("restart in {}", ms_text(ms)));
        }
        if let Some(e) = &r.last_exit {
            info.push(format!("last: {e}"));
        }
        if let Some(e) = &r.reason {
            info.push(e.clone());
        }
        if let Some(g) = &r.gpus {
            info.push(format!(
                "gpus {}",
                g.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",")
            ));
        }
        let _ = writeln!(
            table,
            "{:<20} {:<14} {:>8} {:>8} {:>8}  {}",
            r.name,
            r.state,
            r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            r.restarts,
            r.uptime_ms.map(ms_text).unwrap_or_else(|| "-".into()),
            info.join("; ")
        );
    }
    print!("{table}");
}

fn print_reload(r: &ReloadReport) {
    let verb = if r.applied { "applied" } else { "plan (dry run, nothing changed)" };
    println!("reload {verb}: {}", r.config.as_deref().unwrap_or("no configuration file"));
    for (label, names) in [
        ("added", &r.added),
        ("removed", &r.removed),
        ("changed", &r.changed),
        ("unchanged", &r.unchanged),
    ] {
        println!(
            "  {label:<9} {}",
            if names.is_empty() { "-".to_string() } else { names.join(", ") }
        );
    }
    if r.compute_changed {
        println!("  compute   changed{}", if r.applied { ": restarted" } else { "" });
    }
}

fn connect(g: &Global, dir: &RuntimeDir) -> Result<(Client, Outcome)> {
    let mut daemon_args: Vec<OsString> = Vec::new();
    if let Some(b) = &g.compute_bin {
        daemon_args.push("--compute-bin".into());
        daemon_args.push(absolute(b)?.into());
    }
    if let Some(w) = g.compute_workers {
        daemon_args.push("--compute-workers".into());
        daemon_args.push(w.to_string().into());
    }
    if let Some(c) = &g.config {
        daemon_args.push("--config".into());
        daemon_args.push(absolute(c)?.into());
    }
    launch::connect_or_start(&Launch { dir, daemon_args, no_start: g.no_start })
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| Error::new(Kind::Io, format!("cannot resolve {}: {e}", p.display())))?;
    Ok(cwd.join(p))
}

/// The compute daemon: --compute-bin, else `compute-daemon` beside weaver.
fn compute_bin(g: &Global) -> Result<PathBuf> {
    if let Some(b) = &g.compute_bin {
        return absolute(b);
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::new(Kind::Io, format!("cannot locate the weaver executable: {e}")))?;
    Ok(exe.with_file_name("compute-daemon"))
}

fn unexpected(r: &Response) -> Error {
    Error::new(Kind::Daemon, format!("the daemon sent an unexpected reply: {r:?}"))
}

fn compute(g: &Global, dir: &RuntimeDir, a: ComputeArgs) -> Result<()> {
    let payload = if let Some(d) = a.data {
        if !a.params.is_empty() {
            return Err(Error::new(
                Kind::Usage,
                "give either --data/--input or KEY=VALUE parameters, not both",
            ));
        }
        d.into_bytes()
    } else if let Some(p) = a.input {
        if !a.params.is_empty() {
            return Err(Error::new(
                Kind::Usage,
                "give either --data/--input or KEY=VALUE parameters, not both",
            ));
        }
        let mut buf = Vec::new();
        let res = if p.as_os_str() == "-" {
            std::io::stdin().read_to_end(&mut buf).map(|_| ())
        } else {
            std::fs::File::open(&p).and_then(|mut f| f.read_to_end(&mut buf)).map(|_| ())
        };
        res.map_err(|e| Error::io(Kind::Usage, "read input", &p, &e))?;
        buf
    } else {
        for p in &a.params {
            if !p.contains('=') || p.starts_with('=') {
                return Err(Error::new(Kind::Usage, format!("parameter {p:?} is not KEY=VALUE")));
            }
        }
        a.params.join("\n").into_bytes()
    };
    if payload.len() > weaver::wire::MAX_PAYLOAD {
        return Err(Error::new(
            Kind::Usage,
            format!(
                "input of {} bytes is over the {}-byte limit of one request; split it",
                payload.len(),
                weaver::wire::MAX_PAYLOAD
            ),
        ));
    }
    let (mut c, _) = connect(g, dir)?;
    let r = c
        .call(Request::Compute { op: a.op.clone(), timeout_ms: a.timeout }, &payload)
        .map_err(|e| Error::new(e.kind, format!("compute {} failed: {}", a.op, e.message)))?;
    match a.output {
        Some(p) if p.as_os_str() != "-" => std::fs::write(&p, &r.payload)
            .map_err(|e| Error::io(Kind::Io, "write output to", &p, &e)),
        _ => {
            let mut out = std::io::stdout().lock();
            out.write_all(&r.payload)
                .and_then(|_| out.flush())
                .map_err(|e| Error::new(Kind::Io, format!("cannot write the reply to stdout: {e}")))
        }
    }
}

fn shutdown(dir: &RuntimeDir) -> Result<()> {
    let sock = dir.control_socket();
    let mut c = match Client::connect(&sock, true) {
        Ok(c) => c?,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ECONNREFUSED)) => {
            println!("no weaver daemon is running");
            return Ok(());
        }
        Err(e) => return Err(Error::io(Kind::Daemon, "connect to", &sock, &e)),
    };
    let pid = c.server.pid;
    c.wait_closed()
        .map_err(|e| Error::new(Kind::Daemon, format!("waiting for the daemon to stop: {e}")))?;
    println!("weaver daemon (pid {pid}) stopped");
    Ok(())
}

fn print_status(s: &StatusReport) {
    let d = &s.daemon;
    let c = &s.compute;
    println!("weaver {} (protocol {})", s.version, s.protocol);
    println!(
        "daemon   pid {}, up {:.1}s, {} client(s)",
        d.pid,
        d.uptime_ms as f64 / 1000.0,
        d.clients
    );
    println!(
        "         runtime dir {}, log {}",
        d.runtime_dir,
        d.log_file.as_deref().unwrap_or("stderr")
    );
    let pid = c.pid.map(|p| format!("pid {p}")).unwrap_or_else(|| "no process".into());
    let workers = c.workers.map(|w| format!(", {w} workers")).unwrap_or_default();
    println!("compute  {}, {pid}{workers}, {} restart(s), bin {}", c.state, c.restarts, c.bin);
    println!(
        "         in flight {}, queued {}, served {}, errors {}, cancelled {}, timed out {}, busy {}, late {}",
        c.in_flight, c.queued, c.served, c.errors, c.cancelled, c.timed_out, c.busy_rejected, c.dropped_late
    );
    if let Some(e) = &c.last_exit {
        println!("         last exit: {e}");
    }
    if let Some(e) = &c.last_error {
        println!("         last error: {e}");
    }
    if let Some(ms) = c.next_restart_ms {
        println!("         next start in {ms} ms");
    }
}

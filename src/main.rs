//! `weaver`: parse the command line, run the client or the daemon, and map
//! errors to exit codes (the only place that does).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::Parser;

use weaver::cli::{Cli, Command, ComputeArgs, Global};
use weaver::client::Client;
use weaver::error::{Error, Kind, Result};
use weaver::launch::{self, Launch, Outcome};
use weaver::protocol::{Request, Response, StatusReport};
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
    let g = cli.global;
    let dir = RuntimeDir::open(&g.runtime_dir.clone().unwrap_or_else(runtime_dir::default_path))?;
    match cli.command {
        Command::Daemon { foreground: true, ready_fd, log_file } => {
            logging::init();
            let opts = daemon::Options {
                dir,
                compute_bin: compute_bin(&g)?,
                compute_workers: g.compute_workers,
                ready_fd,
                log_file,
            };
            daemon::run(opts)
        }
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

//! `weaver run` and `weaver runs`. A run streams one reply per change of a
//! job's state and one at the end; this side draws them (bars updated in
//! place on a terminal, one line per change otherwise), prints the summary
//! and exits with the run's code. Ctrl-C asks the daemon to cancel the run
//! and waits for the summary (a second Ctrl-C leaves at once: the closed
//! connection cancels the run too). The wait is a `poll` on the connection
//! and a signal pipe, with the client's ping deadlines.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{unexpected, Ctx};
use crate::cli::RunArgs;
use crate::client::{Client, Deadlines};
use crate::error::{Error, Kind, Result};
use crate::output::print;
use crate::protocol::{Request, Response};
use crate::render;
use crate::run::render as text;
use crate::run::{JobResult, JobState, RunMode, RunReport, RunReq};

/// `weaver run`.
pub(super) fn run(ctx: &Ctx, a: RunArgs) -> Result<()> {
    let (mut c, _) = ctx.connect()?;
    let attach = a.attach.is_some();
    let req = match a.attach {
        Some(id) => Request::RunAttach { id },
        None => Request::Run(RunReq {
            jobs: a.jobs,
            mode: if a.sequential {
                RunMode::Sequential
            } else if a.parallel {
                RunMode::Parallel
            } else {
                RunMode::Graph
            },
            max_parallel: a.max_parallel,
            keep_going: a.keep_going,
            detach: a.detach,
        }),
    };
    if a.detach {
        let r = c.call(req, &[])?;
        let Response::RunStarted { id, .. } = r.resp else { return Err(unexpected(&r.resp)) };
        return print(&if a.json {
            format!("{}\n", serde_json::json!({ "id": id }))
        } else {
            format!("{id}\n")
        });
    }
    let view = if a.json {
        View::Quiet
    } else if std::io::stdout().is_terminal() {
        View::Bars(Bars::new())
    } else {
        View::Lines
    };
    let report = follow(&mut c, req, attach, view)?;
    if a.json {
        print(&render::json_pretty(&report))?;
    } else {
        print(&text::summary(&report))?;
    }
    match report.exit_code() {
        0 => Ok(()),
        code => Err(Error::new(Kind::Reported(code), String::new())),
    }
}

/// `weaver runs`.
pub(super) fn runs(ctx: &Ctx, json: bool) -> Result<()> {
    let (mut c, _) = ctx.connect()?;
    let r = c.call(Request::Runs, &[])?;
    let Response::Runs(runs) = r.resp else { return Err(unexpected(&r.resp)) };
    print(&if json { render::json_pretty(&runs) } else { text::runs_table(&runs) })
}

/// How progress is shown.
enum View {
    /// `--json`: nothing until the end.
    Quiet,
    /// One line per change.
    Lines,
    /// A line per job, updated in place.
    Bars(Bars),
}

struct Bars {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    width: usize,
}

impl Bars {
    fn new() -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            bars: HashMap::new(),
            width: 0,
        }
    }

    fn style(template: &str) -> ProgressStyle {
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
    }

    fn begin(&mut self, jobs: &[String]) {
        self.width = jobs.iter().map(String::len).max().unwrap_or(0);
        for name in jobs {
            let b = self.multi.add(ProgressBar::new_spinner());
            b.set_style(Self::style("  {prefix} {msg}"));
            b.set_prefix(format!("{name:<w$}", w = self.width));
            b.set_message("pending");
            self.bars.insert(name.clone(), b);
        }
    }

    fn update(&mut self, j: &JobResult) {
        let Some(b) = self.bars.get(&j.name) else { return };
        match j.state {
            JobState::Pending => b.set_message("pending"),
            JobState::Running => {
                b.set_style(Self::style("{spinner} {prefix} running {elapsed:>4} {msg}"));
                b.set_message(j.pid.map(|p| format!("(pid {p})")).unwrap_or_default());
                b.reset_elapsed();
                b.enable_steady_tick(Duration::from_millis(100));
            }
            _ => {
                let mut m = j.state.as_str().to_string();
                if let Some(d) = j.duration_ms {
                    m.push_str(&format!(" in {}", text::secs(d)));
                }
                let how = text::how(j);
                if !how.is_empty() {
                    m.push_str(&format!(" ({how})"));
                }
                b.set_style(Self::style("  {prefix} {msg}"));
                b.finish_with_message(m);
            }
        }
    }

    fn end(&mut self) {
        for b in self.bars.values() {
            if !b.is_finished() {
                b.finish();
            }
        }
        let _ = self.multi.clear();
    }
}

impl View {
    fn begin(&mut self, id: u64, jobs: &[String]) {
        match self {
            View::Quiet => {}
            View::Lines => {
                let _ = print(&format!("run {id}: {}\n", jobs.join(", ")));
            }
            View::Bars(b) => {
                let _ = b.multi.println(format!("run {id}"));
                b.begin(jobs)
            }
        }
    }

    fn update(&mut self, j: &JobResult) {
        match self {
            View::Quiet => {}
            View::Lines => {
                let _ = print(&format!("{}\n", text::change(j)));
            }
            View::Bars(b) => b.update(j),
        }
    }

    fn note(&mut self, what: &str) {
        match self {
            View::Quiet => {}
            View::Lines => crate::output::eprint(&render::notice(what)),
            View::Bars(b) => {
                let _ = b.multi.println(format!("weaver: {what}"));
            }
        }
    }

    fn end(&mut self) {
        if let View::Bars(b) = self {
            b.end();
        }
    }
}

/// Send `req` and follow the run until its `RunDone`, cancelling it on
/// Ctrl-C (following an attached run, Ctrl-C just stops following).
fn follow(c: &mut Client, req: Request, attach: bool, mut view: View) -> Result<RunReport> {
    let (sig_rx, sig_tx) = UnixStream::pair()
        .map_err(|e| Error::new(Kind::Io, format!("cannot make a signal pipe: {e}")))?;
    let _ = sig_rx.set_nonblocking(true);
    let mut ids = Vec::new();
    for s in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let tx = sig_tx
            .try_clone()
            .map_err(|e| Error::new(Kind::Io, format!("cannot watch for Ctrl-C: {e}")))?;
        let id = signal_hook::low_level::pipe::register(s, tx)
            .map_err(|e| Error::new(Kind::Io, format!("cannot watch for Ctrl-C: {e}")))?;
        ids.push(id);
    }
    let r = follow_loop(c, req, attach, &mut view, &sig_rx);
    view.end();
    for id in ids {
        signal_hook::low_level::unregister(id);
    }
    r
}

fn follow_loop(
    c: &mut Client,
    req: Request,
    attach: bool,
    view: &mut View,
    sig: &UnixStream,
) -> Result<RunReport> {
    let d = Deadlines::from_env();
    let lost = |e: std::io::Error| {
        Error::new(Kind::Daemon, format!("lost the connection to the daemon: {e}"))
    };
    let tag = c.send(req, &[]).map_err(lost)?;
    // The connection as `poll` watches it (the client reads it).
    let watched = c.stream().try_clone().map_err(lost)?;
    let mut run_id = None;
    // Ctrl-C came: the cancel is sent (or goes out once the run's id is
    // known).
    let mut cancelled = false;
    let mut cancel_sent = false;
    let mut heard = Instant::now();
    let mut ping_due: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let wait = match ping_due {
            Some(at) => at.saturating_duration_since(now),
            None => (heard + d.ping_after).saturating_duration_since(now),
        };
        let (sock_ready, sig_ready) = {
            let mut fds = [
                PollFd::new(watched.as_fd(), PollFlags::POLLIN),
                PollFd::new(sig.as_fd(), PollFlags::POLLIN),
            ];
            let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::new(Kind::Io, format!("poll failed: {e}"))),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if sig_ready {
            let mut buf = [0u8; 64];
            let _ = std::io::Read::read(&mut &*sig, &mut buf);
            if attach || cancelled {
                // Leaving: a closed connection cancels a run it owns.
                return Err(Error::new(Kind::Reported(130), String::new()));
            }
            cancelled = true;
        }
        if let (true, false, Some(id)) = (cancelled, cancel_sent, run_id) {
            view.note(&format!(
                "cancelling run {id}: stopping its jobs (Ctrl-C again to leave at once)"
            ));
            c.send(Request::RunCancel { id }, &[]).map_err(lost)?;
            cancel_sent = true;
        }
        if sock_ready {
            let _ = c.stream().set_read_timeout(Some(d.pong_within));
            let got = c.recv();
            let _ = c.stream().set_read_timeout(None);
            let Some(r) = got.map_err(lost)? else {
                return Err(Error::new(
                    Kind::Daemon,
                    "the daemon closed the connection before the run ended; see its log \
                     (`weaver status` shows where)",
                ));
            };
            heard = Instant::now();
            ping_due = None;
            if r.tag != tag {
                if let Response::Error(e) = r.resp {
                    return Err(e.into());
                }
                continue;
            }
            match r.resp {
                Response::RunStarted { id, jobs } => {
                    run_id = Some(id);
                    view.begin(id, &jobs);
                    if cancelled && !cancel_sent {
                        view.note(&format!("cancelling run {id}: stopping its jobs"));
                        c.send(Request::RunCancel { id }, &[]).map_err(lost)?;
                        cancel_sent = true;
                    }
                }
                Response::RunJob(j) => view.update(&j),
                Response::RunDone(report) => return Ok(*report),
                Response::Error(e) => return Err(e.into()),
                other => return Err(unexpected(&other)),
            }
            continue;
        }
        let now = Instant::now();
        match ping_due {
            Some(at) if now >= at => {
                return Err(Error::not_responding(
                    Some(c.daemon_pid()),
                    "it answered nothing on a live connection while a run was followed",
                ))
            }
            None if now >= heard + d.ping_after => {
                c.send(Request::Ping, &[]).map_err(lost)?;
                ping_due = Some(now + d.pong_within);
            }
            _ => {}
        }
    }
}

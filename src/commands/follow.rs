//! `weaver logs` and `weaver events`: requests answered by a stream of
//! replies, printed as they come. A closed stdout (a pager quit) ends the
//! command quietly ([`Kind::StdoutClosed`]). A quiet stream goes on while
//! the daemon answers its pings; one that stops answering ends the command
//! ([`Kind::NotResponding`]).

use std::time::Duration;

use super::{unexpected, Ctx};
use crate::cli::{EventsArgs, LogsArgs};
use crate::error::{Kind, Result};
use crate::output::{eprint, write_to};
use crate::protocol::{LogQuery, Request, Response};
use crate::render;

/// Lines `logs -f` shows first when neither `-n` nor `--since` says.
const FOLLOW_TAIL: u32 = 10;
/// How often `logs -f` looks for a daemon that went away.
const RECONNECT_EVERY: Duration = Duration::from_millis(100);
/// Pause before `logs -f` reconnects after its daemon closed the stream.
const RESUME_AFTER: Duration = Duration::from_millis(50);

/// `weaver logs`. With `-f`, it follows across daemon restarts: when the
/// daemon goes away it waits for one to come back (never starting one, so
/// a follow does not undo a shutdown), like `tail -F`. A daemon that is
/// there but does not respond ends the follow.
pub(super) fn logs(ctx: &Ctx, a: LogsArgs) -> Result<()> {
    let LogsArgs { name, follow, lines, stream, since, json } = a;
    let mut out = std::io::stdout().lock();
    let mut tail = lines.or(if follow && since.is_none() { Some(FOLLOW_TAIL) } else { None });
    let mut after = since.unwrap_or(0);
    // The daemon we read from: sequence numbers belong to one daemon, so a
    // follow that finds a different one starts from its oldest kept line.
    let mut daemon_pid = None;
    let mut waiting = false;
    loop {
        let mut c = match daemon_pid {
            None => ctx.connect()?.0,
            Some(_) => match ctx.connect_running() {
                Ok(c) => c,
                Err(e) if e.kind == Kind::NotResponding => return Err(e),
                Err(_) => {
                    if !waiting {
                        eprint(&render::notice(
                            "the daemon is gone; waiting for it to come back (Ctrl-C to quit)",
                        ));
                        waiting = true;
                    }
                    std::thread::sleep(RECONNECT_EVERY);
                    continue;
                }
            },
        };
        if daemon_pid.is_some_and(|p| p != c.server.pid) {
            eprint(&render::notice(&format!(
                "the daemon restarted (pid {}); following its output from the start",
                c.server.pid
            )));
            after = 0;
        }
        daemon_pid = Some(c.server.pid);
        waiting = false;
        let query = LogQuery { name: name.clone(), after, tail: tail.take(), stream, follow };
        for r in c.stream_replies(Request::Logs(query), &[])? {
            let chunk = match r {
                Ok(r) => match r.resp {
                    Response::Logs(chunk) => chunk,
                    other => return Err(unexpected(&other)),
                },
                // The daemon went away while following: resume where we
                // were once it is back.
                Err(e) if follow && e.kind == Kind::Daemon => break,
                Err(e) => return Err(e),
            };
            after = chunk.next;
            write_to(&mut out, &render::log_chunk(&chunk, json))?;
            if !follow {
                return Ok(());
            }
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(RESUME_AFTER);
    }
}

/// `weaver events`: until the daemon closes the connection.
pub(super) fn events(ctx: &Ctx, a: EventsArgs) -> Result<()> {
    let EventsArgs { names, output, history, json } = a;
    let (mut c, _) = ctx.connect()?;
    let mut out = std::io::stdout().lock();
    for r in c.stream_replies(Request::Events { names, output, history }, &[])? {
        match r?.resp {
            Response::Event(e) => write_to(&mut out, &render::event(&e, json))?,
            other => return Err(unexpected(&other)),
        }
    }
    Ok(())
}

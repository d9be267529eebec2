//! `send` and `attach`: input to a supervised process's stdin, through the
//! stdin room; `attach` also follows the output, as `logs -f`.

use std::time::Duration;

use super::{not_found, Ctx};
use crate::daemon::follow::Follower;
use crate::daemon::stdin::{Send, Writer};
use crate::protocol::{ErrorKind, ErrorReply, Response};
use crate::supervise::config::StdinMode;
use crate::supervise::Supervisor;

/// `send`: answered by the stdin room once the bytes are in.
pub fn send(cx: &mut Ctx, client: u64, tag: u64, s: SendReq, payload: Vec<u8>) {
    if let Err(e) = send_inner(cx, client, tag, s, payload) {
        cx.reply(client, tag, Response::Error(e));
    }
}

/// The fields of `Request::Send`.
pub struct SendReq {
    pub name: String,
    pub close: bool,
    pub timeout_ms: u64,
    pub attached: bool,
}

fn send_inner(
    cx: &mut Ctx,
    client: u64,
    tag: u64,
    s: SendReq,
    payload: Vec<u8>,
) -> Result<(), ErrorReply> {
    cx.not_stopping()?;
    let by_job = !s.attached && job_takes_input(cx, &s.name)?;
    let instance = if by_job { s.name.clone() } else { one_instance(&cx.procs.sup, &s.name)? };
    if !by_job {
        takes_input(&cx.procs.sup, &instance, "")?;
    }
    let by = if s.attached { "weaver attach (end of input)" } else { "weaver send --close" };
    if s.attached {
        match cx.procs.stdin.writer(&instance) {
            Some(w) if w.client == client => {}
            _ => {
                return Err(ErrorReply {
                    kind: ErrorKind::BadRequest,
                    message: format!("this attach no longer writes to {instance}'s stdin"),
                })
            }
        }
    }
    if !cx.procs.stdin.has(&instance) {
        let state = cx.procs.sup.instance(&instance).map(|i| i.state().label()).unwrap_or_default();
        return Err(ErrorReply {
            kind: ErrorKind::BadRequest,
            message: format!(
                "{instance} is not running ({state}): input is not kept for a later run; \
                 `weaver start {instance}` first"
            ),
        });
    }
    let timeout = Duration::from_millis(s.timeout_ms.max(1));
    let req = Send { client, tag, instance, bytes: payload, close: s.close, timeout, by };
    cx.procs.stdin.send(req, cx.now, cx.fx)
}

/// `attach`: the writer slot (unless read-only), then the output.
pub fn attach(
    cx: &mut Ctx,
    client: u64,
    tag: u64,
    name: &str,
    read_only: bool,
    force: bool,
    tail: u32,
) {
    if let Err(e) = attach_inner(cx, client, tag, name, read_only, force, tail) {
        cx.reply(client, tag, Response::Error(e));
    }
}

fn attach_inner(
    cx: &mut Ctx,
    client: u64,
    tag: u64,
    name: &str,
    read_only: bool,
    force: bool,
    tail: u32,
) -> Result<(), ErrorReply> {
    cx.not_stopping()?;
    let instance = one_instance(&cx.procs.sup, name)?;
    if !read_only {
        takes_input(&cx.procs.sup, &instance, "; `attach --read-only` follows its output")?;
        let pid = cx.clients.get(client).map_or(0, |c| c.peer_pid);
        let me = Writer { client, tag, pid };
        match cx.procs.stdin.attach(&instance, me, force) {
            Ok(None) => {}
            Ok(Some(old)) => {
                let message = format!(
                    "another `weaver attach --force` (pid {pid}) took over {instance}'s stdin"
                );
                let resp = Response::Error(ErrorReply { kind: ErrorKind::Cancelled, message });
                cx.reply(old.client, old.tag, resp);
            }
            Err(other) => {
                return Err(ErrorReply {
                    kind: ErrorKind::Busy,
                    message: format!(
                        "{instance}'s stdin is written by another `weaver attach` (pid {}); one \
                         writer at a time: `--read-only` follows the output, `--force` takes \
                         over",
                        other.pid
                    ),
                })
            }
        }
    }
    cx.reply(client, tag, Response::Attached { instance: instance.clone(), writer: !read_only });
    let sup = &cx.procs.sup;
    let last = sup.instance(&instance).map_or(0, |i| i.ring().last_seq());
    let f =
        Follower { client, tag, instance, after: last.saturating_sub(tail as u64), stream: None };
    cx.follow.logs(sup, f, true, cx.fx);
    Ok(())
}

/// The instance `name` stands for: an instance, or a process with one.
fn one_instance(sup: &Supervisor, name: &str) -> Result<String, ErrorReply> {
    let list = sup.resolve(&[name.to_string()]).map_err(not_found)?;
    match &list[..] {
        [one] => Ok(one.clone()),
        many => Err(ErrorReply {
            kind: ErrorKind::BadRequest,
            message: format!(
                "{name} has {} instances ({}): name one of them",
                many.len(),
                many.join(", ")
            ),
        }),
    }
}

/// `instance` was started with a stdin pipe.
/// Whether `name` is a declared `[[job]]` (not a process) that takes input
/// now: true when it runs with a stdin pipe, an error when it is a job that
/// does not, false when it is no job.
fn job_takes_input(cx: &Ctx, name: &str) -> Result<bool, ErrorReply> {
    let declared = cx.procs.sup.config().jobs.iter().any(|j| j.name == name);
    if !declared {
        return Ok(false);
    }
    let message = match cx.runner.running_job(name) {
        Some(true) => return Ok(true),
        Some(false) => format!(
            "job {name} takes no input: its stdin is /dev/null. Add stdin = \"pipe\" to its \
             [[job]] in weaver.toml and run `weaver reload`"
        ),
        None => format!(
            "job {name} is not running: input is not kept for a later run; `weaver run \
             {name}` first"
        ),
    };
    Err(ErrorReply { kind: ErrorKind::BadRequest, message })
}

fn takes_input(sup: &Supervisor, instance: &str, hint: &str) -> Result<(), ErrorReply> {
    let pipe = sup.instance(instance).is_some_and(|i| i.spec().stdin == StdinMode::Pipe);
    if pipe {
        return Ok(());
    }
    Err(ErrorReply {
        kind: ErrorKind::BadRequest,
        message: format!(
            "{instance} takes no input: its stdin is /dev/null. Add stdin = \"pipe\" to its \
             [[process]] in weaver.toml and run `weaver reload`{hint}"
        ),
    })
}

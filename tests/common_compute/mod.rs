//! Helpers shared by the compute tests (`tests/ffi.rs`,
//! `tests/compute_exe.rs`): a frame-level peer over a Unix stream, a child
//! guard that never leaves a process behind, and a deadline poll.

#![allow(dead_code)]

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::time::{Duration, Instant};

use weaver::wire::{self, kind, Frame, FrameDecoder};

/// How long a test waits for a frame it expects before failing.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// The weaver side of one compute connection, at frame level.
pub struct Peer {
    pub stream: UnixStream,
    dec: FrameDecoder,
}

impl Peer {
    pub fn new(stream: UnixStream) -> Peer {
        Peer { stream, dec: FrameDecoder::new() }
    }

    pub fn send(&mut self, kind: u16, id: u64, code: u32, payload: &[u8]) {
        let f = wire::encode_frame(kind, id, code, payload);
        self.stream.write_all(&f).expect("write a frame to compute");
    }

    pub fn request(&mut self, id: u64, op: u32, params: &str) {
        self.send(kind::REQUEST, id, op, params.as_bytes());
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write raw bytes to compute");
    }

    /// The next frame, or None at a clean end of file; panics after
    /// `timeout` or on a broken frame.
    pub fn recv_within(&mut self, timeout: Duration) -> Option<Frame> {
        self.stream.set_read_timeout(Some(timeout)).expect("set read timeout");
        match weaver::stream::read_frame(&mut self.dec, &mut self.stream) {
            Ok(f) => f,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                panic!("no frame from compute within {timeout:?}")
            }
            Err(e) => panic!("reading a frame from compute: {e}"),
        }
    }

    /// The next frame; panics at end of file or after [`FRAME_TIMEOUT`].
    pub fn recv(&mut self) -> Frame {
        self.recv_within(FRAME_TIMEOUT).expect("compute closed the connection")
    }

    /// The next frame, which must be a RESPONSE to `id`.
    pub fn response(&mut self, id: u64) -> Frame {
        let f = self.recv();
        assert_eq!(f.header.kind, kind::RESPONSE, "expected RESPONSE to {id}, got {f:?}");
        assert_eq!(f.header.request_id, id, "expected RESPONSE to {id}, got {}", describe(&f));
        f
    }

    /// Every frame until end of file.
    pub fn drain_to_eof(&mut self) -> Vec<Frame> {
        let mut v = Vec::new();
        while let Some(f) = self.recv_within(FRAME_TIMEOUT) {
            v.push(f);
        }
        v
    }
}

/// One line about a frame, for assertion messages.
pub fn describe(f: &Frame) -> String {
    let text = String::from_utf8_lossy(&f.payload[..f.payload.len().min(200)]).into_owned();
    format!(
        "kind {} id {} code {} ({}) payload {} bytes: {text:?}",
        f.header.kind,
        f.header.request_id,
        f.header.code,
        wire::status::name(f.header.code),
        f.payload.len()
    )
}

/// The payload of a non-OK response as text.
pub fn text(f: &Frame) -> String {
    String::from_utf8_lossy(&f.payload).into_owned()
}

/// Poll `cond` every 5 ms until it holds or `within` passes.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A spawned process that is killed (SIGKILL) and reaped on drop unless it
/// was already waited for, so no failing test leaves it behind. Extra pids
/// (grandchildren found through SO_PEERCRED) are killed too.
pub struct ChildGuard {
    pub child: Option<Child>,
    pub extra_pids: Vec<i32>,
}

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard { child: Some(child), extra_pids: Vec::new() }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child not yet reaped").id()
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child not yet reaped")
    }

    /// Wait up to `within` for the exit; its exit status, or None if it is
    /// still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut().expect("child not yet reaped");
        let mut status = None;
        wait_until(within, || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        });
        status
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        for &pid in &self.extra_pids {
            // SAFETY: plain kill(2); the pid came from SO_PEERCRED of a
            // process this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(mut c) = self.child.take() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// True while a process with this pid exists (and is not a zombie we
/// could still reap: callers reap their own children first).
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    let r = unsafe { libc::kill(pid, 0) };
    if r != 0 {
        return false;
    }
    // A zombie still answers kill(0); look at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

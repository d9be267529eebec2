//! Where the CLI's text goes. Every write to stdout goes through [`print`],
//! which turns a closed stdout (a pager quit, `| head -c0`) into an error of
//! its own kind, [`Kind::StdoutClosed`], that ends the command quietly
//! instead of a panic; stderr is best effort ([`eprint`]): a closed stderr
//! loses the message, never the exit code.

use std::io::{self, Write};

use crate::error::{Error, Kind, Result};

/// Write `text` to stdout and flush it.
pub fn print(text: &str) -> Result<()> {
    write_to(&mut io::stdout().lock(), text)
}

/// Write `text` to `out` and flush it; a closed pipe is
/// [`Kind::StdoutClosed`].
pub fn write_to(out: &mut impl Write, text: &str) -> Result<()> {
    write_bytes(out, text.as_bytes())
}

/// Write `bytes` to `out` and flush them; a closed pipe is
/// [`Kind::StdoutClosed`].
pub fn write_bytes(out: &mut impl Write, bytes: &[u8]) -> Result<()> {
    out.write_all(bytes).and_then(|_| out.flush()).map_err(|e| {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Error::new(Kind::StdoutClosed, "standard output is closed")
        } else {
            Error::new(Kind::Io, format!("cannot write to standard output: {e}"))
        }
    })
}

/// Write `text` to stderr, ignoring failure (there is nowhere left to tell).
pub fn eprint(text: &str) {
    let mut err = io::stderr().lock();
    let _ = err.write_all(text.as_bytes()).and_then(|_| err.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_is_its_own_kind_and_other_failures_are_io() {
        let (rd, wr) = nix::unistd::pipe().unwrap();
        drop(rd);
        let mut w = std::fs::File::from(wr);
        // SIGPIPE is ignored in Rust programs (and in the test harness), so
        // the write fails with EPIPE.
        let e = write_to(&mut w, "lost").unwrap_err();
        assert_eq!(e.kind, Kind::StdoutClosed);
        assert_eq!(e.exit_code(), 141);
        let mut full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let e = write_to(&mut full, "x").unwrap_err();
        assert_eq!(e.kind, Kind::Io);
        assert!(e.message.contains("standard output"), "{}", e.message);
        let mut v = Vec::new();
        write_bytes(&mut v, b"ok").unwrap();
        assert_eq!(v, b"ok");
    }
}

//! Blocking frame I/O, for the command line and test peers: read one whole
//! frame (payload bytes straight into place), write one without copying a
//! large payload. The daemon's non-blocking side is `daemon/conn.rs`.

use std::io::{self, Read, Write};

use crate::codec::{Decoder, Framing, NextBuffer};

/// Payloads up to this size are written together with their head in one
/// buffer; larger ones go in a second write, uncopied.
const COPY_MAX: usize = 64 * 1024;

/// Bounds on the body bytes one read asks for. Each read may take twice
/// what the one before it got, within these: the buffer is zero-filled up
/// to what is asked, so a peer that sends a little at a time costs a
/// little per read, not the whole rest of a large payload every time.
const READ_MIN: usize = 4 * 1024;
const READ_MAX: usize = 256 * 1024;

/// Read one frame from a blocking reader (a read interrupted by a signal
/// is retried); `Ok(None)` on EOF between frames, `UnexpectedEof` inside one, `InvalidData` for a bad head.
pub fn read_frame<F: Framing, R: Read>(
    dec: &mut Decoder<F>,
    r: &mut R,
) -> io::Result<Option<F::Frame>> {
    let mut ask = READ_MIN;
    loop {
        let n = match dec.next_buffer() {
            None => return Ok(dec.direct_done()),
            Some(NextBuffer::Head(buf)) => {
                let n = match r.read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    n => n?,
                };
                if n == 0 {
                    if !dec.in_head() {
                        return Ok(None);
                    }
                    return Err(eof("head"));
                }
                dec.head_read(n)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                continue;
            }
            Some(NextBuffer::Body(buf, want)) => {
                let start = buf.len();
                buf.resize(want.min(start + ask), 0);
                let n = r.read(&mut buf[start..]);
                buf.truncate(start + *n.as_ref().unwrap_or(&0));
                let n = match n {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    n => n?,
                };
                ask = (2 * n).clamp(READ_MIN, READ_MAX);
                n
            }
        };
        if n == 0 {
            return Err(eof("body"));
        }
    }
}

/// Write one control frame (prefix, message, payload).
pub fn write_control<W: Write>(w: &mut W, meta: &[u8], payload: &[u8]) -> io::Result<()> {
    let mut head = Vec::with_capacity(crate::frame::PREFIX_LEN + meta.len());
    head.extend_from_slice(&crate::frame::prefix(meta.len(), payload.len()));
    head.extend_from_slice(meta);
    write_frame(w, &head, payload)
}

fn eof(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, format!("connection closed inside a frame {what}"))
}

/// Write `head` then `payload` to a blocking writer: one write for a small
/// payload, two (the payload uncopied) for a large one.
pub fn write_frame<W: Write>(w: &mut W, head: &[u8], payload: &[u8]) -> io::Result<()> {
    if payload.len() <= COPY_MAX {
        let mut buf = Vec::with_capacity(head.len() + payload.len());
        buf.extend_from_slice(head);
        buf.extend_from_slice(payload);
        return w.write_all(&buf);
    }
    w.write_all(head)?;
    w.write_all(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{frame, wire};

    #[test]
    fn control_frames_read_back_and_eof_is_told_apart() {
        let mut bytes = Vec::new();
        write_control(&mut bytes, b"x", &vec![1u8; 200_000]).unwrap();
        write_control(&mut bytes, b"y", b"small").unwrap();
        let mut r = &bytes[..];
        let mut d = frame::Decoder::new();
        assert_eq!(read_frame(&mut d, &mut r).unwrap().unwrap().payload.len(), 200_000);
        assert_eq!(read_frame(&mut d, &mut r).unwrap().unwrap().payload, b"small");
        assert!(read_frame(&mut d, &mut r).unwrap().is_none());
        let mut r = &bytes[..5];
        let mut d = frame::Decoder::new();
        assert_eq!(read_frame(&mut d, &mut r).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        // An oversized prefix is refused before anything is buffered.
        let mut r = &[0xffu8; 8][..];
        let mut d = frame::Decoder::new();
        assert_eq!(read_frame(&mut d, &mut r).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    /// Returns at most `per_read` bytes a read and records what each read
    /// asked for.
    struct Recorder<'a> {
        data: &'a [u8],
        per_read: usize,
        asked: Vec<usize>,
    }

    impl Read for Recorder<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.asked.push(buf.len());
            let n = buf.len().min(self.per_read).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_slow_peer_is_asked_for_little_and_a_fast_one_for_more() {
        let payload = vec![3u8; 4 * 1024 * 1024];
        let bytes = wire::encode_frame(wire::kind::RESPONSE, 1, wire::status::OK, &payload);
        let read = |per_read| {
            let mut r = Recorder { data: &bytes, per_read, asked: Vec::new() };
            let f = read_frame(&mut wire::FrameDecoder::new(), &mut r).unwrap().unwrap();
            assert!(f.payload == payload);
            r.asked
        };
        // A little at a time: no read asks for (and zero-fills) more than
        // READ_MIN, however much of the payload is still to come.
        let asked = read(100);
        assert_eq!(asked.iter().max(), Some(&READ_MIN));
        // All there is: the asks double up to READ_MAX.
        let asked = read(usize::MAX);
        assert_eq!(asked.iter().max(), Some(&READ_MAX));
        assert!(asked.len() < 4 * 1024 * 1024 / READ_MAX + 10, "{} reads", asked.len());
    }

    #[test]
    fn compute_frames_read_back_and_eof_inside_is_an_error() {
        let bytes = wire::encode_frame(wire::kind::RESPONSE, 7, wire::status::OK, b"hello");
        let mut d = wire::FrameDecoder::new();
        let mut r = &bytes[..bytes.len() - 1];
        assert_eq!(read_frame(&mut d, &mut r).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let mut d = wire::FrameDecoder::new();
        let mut r = &bytes[..];
        assert_eq!(read_frame(&mut d, &mut r).unwrap().unwrap().payload, b"hello");
        assert!(read_frame(&mut d, &mut r).unwrap().is_none());
    }
}

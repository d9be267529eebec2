//! Blocking frame I/O, for the command line and test peers: read one whole
//! frame (payload bytes straight into place), write one without copying a
//! large payload. The daemon's non-blocking side is `daemon/conn.rs`.

use std::io::{self, Read, Write};

use crate::codec::{Decoder, Framing, NextBuffer};

/// Payloads up to this size are written together with their head in one
/// buffer; larger ones go in a second write, uncopied.
const COPY_MAX: usize = 64 * 1024;

/// Read one frame from a blocking reader (a read interrupted by a signal
/// is retried); `Ok(None)` on EOF between frames, `UnexpectedEof` inside one, `InvalidData` for a bad head.
pub fn read_frame<F: Framing, R: Read>(
    dec: &mut Decoder<F>,
    r: &mut R,
) -> io::Result<Option<F::Frame>> {
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
                buf.resize(want, 0);
                let n = r.read(&mut buf[start..]);
                buf.truncate(start + *n.as_ref().unwrap_or(&0));
                match n {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    n => n?,
                }
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

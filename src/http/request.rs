//! One HTTP/1.x request head, parsed with `httparse` (sans I/O): the
//! method, the path, whether the connection stays open, and what is wrong
//! with it when it cannot be served. Bodies are not read: a request that
//! has one is answered and its connection closed.

/// A request head may be at most this long (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Headers per request.
pub const MAX_HEADERS: usize = 32;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head<'a> {
    pub method: &'a str,
    /// The path without its query string.
    pub path: &'a str,
    /// Bytes of the head, to drop from the buffer once answered.
    pub len: usize,
    /// The client asked to close (or speaks HTTP/1.0 without keep-alive),
    /// or sent a body: the connection closes after the answer.
    pub close: bool,
}

/// What the bytes so far are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Not a whole head yet (and under [`MAX_HEAD`]).
    Partial,
    Head(Head<'a>),
    /// Cannot be served: answer `status` with `reason` and close.
    Bad {
        status: u16,
        reason: &'static str,
    },
}

/// Parse the head at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_HEAD {
                return too_large();
            }
            return Parsed::Partial;
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Bad { status: 431, reason: "more than 32 header fields" }
        }
        Err(_) => return Parsed::Bad { status: 400, reason: "malformed HTTP request" },
    };
    if len > MAX_HEAD {
        return too_large();
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Bad { status: 400, reason: "malformed HTTP request" };
    };
    let mut close = version == 0;
    let mut body = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in String::from_utf8_lossy(h.value).split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && version == 0 {
                    close = false;
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length")
                && std::str::from_utf8(h.value).map_or(true, |v| v.trim() != "0"))
        {
            body = true;
        }
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    Parsed::Head(Head { method, path, len, close: close || body })
}

fn too_large() -> Parsed<'static> {
    Parsed::Bad { status: 431, reason: "request head over 8192 bytes" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_with_keep_alive_by_version_and_header() {
        let p = parse(b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\n\r\nGET /ready");
        let Parsed::Head(h) = p else { panic!("{p:?}") };
        assert_eq!((h.method, h.path, h.close, h.len), ("GET", "/health", false, 37));
        let Parsed::Head(h) = parse(b"HEAD /metrics HTTP/1.0\r\n\r\n") else { panic!() };
        assert!(h.close, "HTTP/1.0 closes by default");
        let Parsed::Head(h) = parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n") else {
            panic!()
        };
        assert!(!h.close);
        let Parsed::Head(h) = parse(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n") else {
            panic!()
        };
        assert!(h.close);
        let Parsed::Head(h) = parse(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc") else {
            panic!()
        };
        assert!(h.close, "a body is never read: the connection closes");
    }

    #[test]
    fn partial_bad_and_oversized_heads() {
        assert_eq!(parse(b"GET /hea"), Parsed::Partial);
        assert_eq!(parse(b""), Parsed::Partial);
        assert!(matches!(parse(b"\x00\x01 nonsense\r\n\r\n"), Parsed::Bad { status: 400, .. }));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD, b'a');
        assert!(matches!(parse(&big), Parsed::Bad { status: 431, .. }));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..40 {
            many.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&many), Parsed::Bad { status: 431, .. }));
    }
}

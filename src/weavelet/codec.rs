//! NDJSON, sans I/O: lines of at most [`MAX_LINE`] bytes before their
//! `\n`, and the messages of the weavelet protocol both ways
//! (`docs/weavelet-protocol.md`).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{json, Map, Value};

use super::doc::Doc;
use super::MAX_LINE;
use crate::codec::StreamDecoder;

/// Splits bytes into lines; holds at most one partial line of at most
/// [`MAX_LINE`] bytes.
#[derive(Debug, Default)]
pub struct LineDecoder {
    buf: Vec<u8>,
    /// Lines completed so far (for error messages: "line 3").
    pub lines: u64,
}

/// A line longer than [`MAX_LINE`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLong {
    pub line: u64,
}

impl fmt::Display for TooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: over {MAX_LINE} bytes without a newline", self.line)
    }
}

impl LineDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of the partial line held.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

impl StreamDecoder for LineDecoder {
    type Frame = Vec<u8>;
    type Error = TooLong;

    fn feed(&mut self, data: &[u8]) -> Result<(usize, Option<Vec<u8>>), TooLong> {
        let too_long = |d: &Self| TooLong { line: d.lines + 1 };
        match data.iter().position(|&b| b == b'\n') {
            Some(i) => {
                if self.buf.len() + i > MAX_LINE {
                    return Err(too_long(self));
                }
                self.buf.extend_from_slice(&data[..i]);
                self.lines += 1;
                Ok((i + 1, Some(std::mem::take(&mut self.buf))))
            }
            None => {
                if self.buf.len() + data.len() > MAX_LINE {
                    return Err(too_long(self));
                }
                self.buf.extend_from_slice(data);
                Ok((data.len(), None))
            }
        }
    }

    fn direct_target(&mut self) -> Option<&mut Vec<u8>> {
        None
    }

    fn direct_done(&mut self) -> Option<Vec<u8>> {
        None
    }
}

/// Most metrics in one `status`.
pub const MAX_METRICS: usize = 16;
/// Longest `reason` of a `rejected`.
pub const MAX_REASON: usize = 1024;
/// Longest `name` in a `hello`.
pub const MAX_WEAVELET_NAME: usize = 256;

/// What a weavelet says.
#[derive(Debug, Clone, PartialEq)]
pub enum In {
    Hello { protocol: u64, target: Option<String>, name: Option<String> },
    Applied { revision: u64, step: Option<u64> },
    Rejected { revision: u64, step: Option<u64>, reason: String },
    Status { step: Option<u64>, metrics: BTreeMap<String, f64> },
}

/// One line from a weavelet, or what is wrong with it.
pub fn parse(line: &[u8]) -> Result<In, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(m) = v else {
        return Err("not a JSON object".into());
    };
    let ty = match m.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("member \"type\" must be a string".into()),
        None => return Err("no member \"type\"".into()),
    };
    Ok(match ty {
        "hello" => In::Hello {
            protocol: uint(&m, "protocol")?.ok_or("hello: member \"protocol\" is required")?,
            target: string(&m, "target", super::doc::MAX_NAME)?,
            name: string(&m, "name", MAX_WEAVELET_NAME)?,
        },
        "applied" => In::Applied { revision: revision(&m)?, step: uint(&m, "step")? },
        "rejected" => In::Rejected {
            revision: revision(&m)?,
            step: uint(&m, "step")?,
            reason: string(&m, "reason", MAX_REASON)?
                .ok_or("rejected: member \"reason\" is required")?,
        },
        "status" => {
            let mut metrics = BTreeMap::new();
            match m.get("metrics") {
                None | Some(Value::Null) => {}
                Some(Value::Object(o)) => {
                    if o.len() > MAX_METRICS {
                        return Err(format!(
                            "status: {} metrics, over the limit of {MAX_METRICS}",
                            o.len()
                        ));
                    }
                    for (k, v) in o {
                        let n = v
                            .as_f64()
                            .ok_or_else(|| format!("status: metric {k:?} must be a number"))?;
                        metrics.insert(k.clone(), n);
                    }
                }
                Some(_) => return Err("status: member \"metrics\" must be an object".into()),
            }
            In::Status { step: uint(&m, "step")?, metrics }
        }
        other => {
            return Err(format!(
                "unknown type {other:?}: a weavelet sends hello, applied, rejected or status"
            ))
        }
    })
}

fn uint(m: &Map<String, Value>, key: &str) -> Result<Option<u64>, String> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("member {key:?} must be a non-negative integer")),
    }
}

fn revision(m: &Map<String, Value>) -> Result<u64, String> {
    uint(m, "revision")?.ok_or_else(|| "member \"revision\" is required".to_string())
}

fn string(m: &Map<String, Value>, key: &str, max: usize) -> Result<Option<String>, String> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(format!("member {key:?} is over {max} bytes")),
        Some(_) => Err(format!("member {key:?} must be a string")),
    }
}

fn line(v: Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(&v).expect("JSON values always encode");
    out.push(b'\n');
    out
}

/// `welcome`.
pub fn welcome(target: &str, instance: Option<&str>, id: u64) -> Vec<u8> {
    let mut v = json!({
        "type": "welcome",
        "protocol": super::PROTOCOL,
        "weaver": crate::protocol::RELEASE,
        "target": target,
        "id": id,
    });
    if let Some(i) = instance {
        v["instance"] = json!(i);
    }
    line(v)
}

/// `config`: the whole document at `revision`.
pub fn config(target: &str, revision: u64, values: &Doc, changed: &[String]) -> Vec<u8> {
    line(json!({
        "type": "config",
        "target": target,
        "revision": revision,
        "values": values,
        "changed": changed,
    }))
}

/// `error`.
pub fn error(message: &str) -> Vec<u8> {
    line(json!({ "type": "error", "message": message }))
}

/// Whether `values` fits in a `config` line for `target` at any revision
/// with every key listed as changed.
pub fn check_fits(target: &str, values: &Doc) -> Result<(), String> {
    let keys: Vec<String> = values.keys().cloned().collect();
    let len = config(target, u64::MAX, values, &keys).len() - 1;
    if len > MAX_LINE {
        return Err(format!(
            "the document would make a {len}-byte config line, over the {MAX_LINE}-byte limit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(d: &mut LineDecoder, mut data: &[u8]) -> Result<Vec<Vec<u8>>, TooLong> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let (used, l) = d.feed(data)?;
            data = &data[used..];
            out.extend(l);
        }
        Ok(out)
    }

    #[test]
    fn lines_split_anywhere_and_are_bounded() {
        let mut d = LineDecoder::new();
        assert_eq!(feed_all(&mut d, b"ab\ncd").unwrap(), [b"ab".to_vec()]);
        assert_eq!(d.buffered(), 2);
        assert_eq!(feed_all(&mut d, b"\n\n").unwrap(), [b"cd".to_vec(), b"".to_vec()]);
        let mut d = LineDecoder::new();
        let exact = vec![b'x'; MAX_LINE];
        assert_eq!(feed_all(&mut d, &exact).unwrap().len(), 0);
        assert_eq!(feed_all(&mut d, b"\n").unwrap()[0].len(), MAX_LINE);
        assert_eq!(feed_all(&mut d, &exact).unwrap().len(), 0);
        let e = feed_all(&mut d, b"y").unwrap_err();
        assert_eq!(e.line, 2);
        let mut d = LineDecoder::new();
        let mut long = vec![b'x'; MAX_LINE + 1];
        long.push(b'\n');
        assert!(feed_all(&mut d, &long).is_err());
    }

    /// Fuzz-style: random lines, some over the bound, fed byte by byte and
    /// in random chunks, give the same lines (or the same error at the same
    /// line) as splitting the whole input at once.
    #[test]
    fn fed_byte_by_byte_or_in_chunks_it_agrees_with_a_plain_split() {
        let mut rng = crate::sys::Rng::seeded(7);
        for round in 0..100 {
            let mut input = Vec::new();
            let lines = (rng.next_u64() % 8) + 1;
            for _ in 0..lines {
                let len = match rng.next_u64() % 10 {
                    0 => MAX_LINE + (rng.next_u64() % 3) as usize,
                    1 => MAX_LINE - (rng.next_u64() % 2) as usize,
                    _ => (rng.next_u64() % 40) as usize,
                };
                input.extend((0..len).map(|_| b"ab{}\":, \xff"[(rng.next_u64() % 9) as usize]));
                if rng.next_u64() % 8 != 0 {
                    input.push(b'\n');
                }
            }
            // The reference: split at newlines; the first over-long one fails.
            let mut expect: Result<Vec<Vec<u8>>, u64> = Ok(Vec::new());
            let mut parts: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
            let tail = parts.pop().unwrap();
            for (i, p) in parts.iter().enumerate() {
                if p.len() > MAX_LINE {
                    expect = Err(i as u64 + 1);
                    break;
                }
                if let Ok(v) = &mut expect {
                    v.push(p.to_vec());
                }
            }
            if expect.is_ok() && tail.len() > MAX_LINE {
                expect = Err(parts.len() as u64 + 1);
            }
            let chunked = |step: &mut dyn FnMut() -> usize| {
                let mut d = LineDecoder::new();
                let mut out = Vec::new();
                let mut rest = &input[..];
                while !rest.is_empty() {
                    let n = step().clamp(1, rest.len());
                    let mut chunk = &rest[..n];
                    rest = &rest[n..];
                    while !chunk.is_empty() {
                        match d.feed(chunk) {
                            Ok((used, l)) => {
                                assert!(used > 0);
                                chunk = &chunk[used..];
                                out.extend(l);
                            }
                            Err(e) => return Err(e.line),
                        }
                    }
                }
                assert!(d.buffered() <= MAX_LINE);
                Ok(out)
            };
            assert_eq!(chunked(&mut || 1), expect, "round {round}, byte by byte");
            let mut r2 = crate::sys::Rng::seeded(round as u64);
            assert_eq!(
                chunked(&mut || (r2.next_u64() % 5000) as usize + 1),
                expect,
                "round {round}"
            );
        }
    }

    #[test]
    fn messages_parse_with_clear_errors() {
        let p = |s: &str| parse(s.as_bytes());
        assert_eq!(
            p(r#"{"type":"hello","protocol":1,"target":"t","name":"r0","extra":[1]}"#),
            Ok(In::Hello { protocol: 1, target: Some("t".into()), name: Some("r0".into()) })
        );
        assert_eq!(
            p(r#"{"type":"applied","revision":7,"step":1200}"#),
            Ok(In::Applied { revision: 7, step: Some(1200) })
        );
        assert_eq!(
            p(r#"{"type":"rejected","revision":7,"reason":"no"}"#),
            Ok(In::Rejected { revision: 7, step: None, reason: "no".into() })
        );
        match p(r#"{"type":"status","step":3,"metrics":{"loss":0.5}}"#) {
            Ok(In::Status { step: Some(3), metrics }) => assert_eq!(metrics["loss"], 0.5),
            other => panic!("{other:?}"),
        }
        for (line, want) in [
            ("nope", "not JSON"),
            ("[1]", "not a JSON object"),
            ("{}", "no member \"type\""),
            (r#"{"type":3}"#, "must be a string"),
            (r#"{"type":"dance"}"#, "unknown type"),
            (r#"{"type":"hello"}"#, "protocol"),
            (r#"{"type":"hello","protocol":"1"}"#, "non-negative integer"),
            (r#"{"type":"applied","revision":-1}"#, "non-negative integer"),
            (r#"{"type":"applied"}"#, "\"revision\" is required"),
            (r#"{"type":"rejected","revision":1}"#, "reason"),
            (r#"{"type":"hello","protocol":1,"target":5}"#, "\"target\" must be a string"),
            (r#"{"type":"status","metrics":{"a":"b"}}"#, "must be a number"),
            (r#"{"type":"status","metrics":[]}"#, "must be an object"),
        ] {
            let e = p(line).unwrap_err();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn lines_out_are_one_json_object_each() {
        let mut d = Doc::new();
        d.insert("lr".into(), json!(0.01));
        let l = config("t", 3, &d, &["lr".into()]);
        assert_eq!(l.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&l).unwrap();
        assert_eq!(v["revision"], 3);
        assert_eq!(v["values"]["lr"], 0.01);
        let w: Value = serde_json::from_slice(&welcome("t", Some("t.0"), 4)).unwrap();
        assert_eq!((w["instance"].as_str(), w["id"].as_u64()), (Some("t.0"), Some(4)));
        assert!(check_fits("t", &d).is_ok());
        d.insert("big".into(), json!("x".repeat(MAX_LINE - 60)));
        assert!(check_fits("t", &d).is_err());
    }
}

//! Recent output of one process, in memory and bounded.
//!
//! [`LineAssembler`] turns raw pipe chunks into lines (a line longer than
//! its cap is cut into pieces, so a process that never writes a newline
//! cannot grow memory). [`Ring`] keeps the newest lines within a byte
//! budget, each with a sequence number that is never reused, so a follower
//! (`logs -f`) resumes with [`Ring::since`] from the last number it saw
//! and gets nothing twice; when lines it had not seen were evicted it is
//! told how many.

use std::collections::VecDeque;

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based, increasing, never reused within a ring.
    pub seq: u64,
    pub stream: Stream,
    /// Wall-clock milliseconds since the Unix epoch, as the caller said.
    pub time_ms: u64,
    /// Without the newline.
    pub bytes: Vec<u8>,
    /// Not a whole line: cut at the length cap, or unterminated at EOF.
    pub cut: bool,
}

/// What each line costs besides its bytes, so that a flood of empty lines
/// is bounded too.
pub const LINE_OVERHEAD: usize = 48;

/// Default cap on one line; longer ones are cut into pieces.
pub const MAX_LINE: usize = 16 * 1024;

/// Lines after a sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Since {
    pub lines: Vec<Line>,
    /// Lines after the cursor that were evicted before being read.
    pub lost: u64,
    /// The cursor for the next call: the last sequence number covered.
    pub next: u64,
}

#[derive(Debug, Clone)]
pub struct Ring {
    cap: usize,
    lines: VecDeque<Line>,
    used: usize,
    /// The sequence number the next line gets.
    next_seq: u64,
}

fn cost(line: &Line) -> usize {
    line.bytes.len() + LINE_OVERHEAD
}

impl Ring {
    /// A ring holding about `cap_bytes` (the newest line is always kept,
    /// so the bound is `cap_bytes` plus one line).
    pub fn new(cap_bytes: usize) -> Ring {
        Ring { cap: cap_bytes, lines: VecDeque::new(), used: 0, next_seq: 1 }
    }

    /// Add a line; returns its sequence number.
    pub fn push(&mut self, stream: Stream, time_ms: u64, bytes: Vec<u8>, cut: bool) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let line = Line { seq, stream, time_ms, bytes, cut };
        self.used += cost(&line);
        self.lines.push_back(line);
        self.evict();
        seq
    }

    fn evict(&mut self) {
        while self.used > self.cap && self.lines.len() > 1 {
            let old = self.lines.pop_front().expect("len > 1");
            self.used -= cost(&old);
        }
    }

    /// Change the budget (a reloaded `ring_bytes`), evicting as needed.
    pub fn set_capacity(&mut self, cap_bytes: usize) {
        self.cap = cap_bytes;
        self.evict();
    }

    /// Up to `max` lines with a sequence number above `after` (0: from the
    /// oldest kept). A cursor beyond the newest line (from before a daemon
    /// restart) is treated as 0.
    pub fn since(&self, after: u64, max: usize) -> Since {
        let last = self.next_seq - 1;
        let after = if after > last { 0 } else { after };
        let first = self.lines.front().map_or(self.next_seq, |l| l.seq);
        let lost = first.saturating_sub(after + 1);
        let skip = (after + 1).saturating_sub(first) as usize;
        let lines: Vec<Line> = self.lines.iter().skip(skip).take(max).cloned().collect();
        let next = match lines.last() {
            Some(l) => l.seq,
            None => after.max(first.saturating_sub(1)),
        };
        Since { lines, lost, next }
    }

    /// The newest `n` lines (for `logs --tail n`).
    pub fn tail(&self, n: usize) -> Vec<Line> {
        self.lines.iter().skip(self.lines.len().saturating_sub(n)).cloned().collect()
    }

    /// The sequence number of the newest line (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Bytes accounted (payload plus [`LINE_OVERHEAD`] per line).
    pub fn used(&self) -> usize {
        self.used
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// A line (or piece of one) out of a [`LineAssembler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub bytes: Vec<u8>,
    /// See [`Line::cut`].
    pub cut: bool,
}

/// Raw pipe chunks in, lines out; holds at most `max_line` bytes.
#[derive(Debug, Clone)]
pub struct LineAssembler {
    buf: Vec<u8>,
    max_line: usize,
}

impl Default for LineAssembler {
    fn default() -> Self {
        LineAssembler::new(MAX_LINE)
    }
}

impl LineAssembler {
    pub fn new(max_line: usize) -> Self {
        LineAssembler { buf: Vec::new(), max_line: max_line.max(1) }
    }

    /// Feed a chunk; returns the lines it completed (without `\n`) and the
    /// pieces of over-long lines.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Vec<Piece> {
        let mut out = Vec::new();
        while !chunk.is_empty() {
            let room = self.max_line - self.buf.len();
            match chunk.iter().take(room + 1).position(|&b| b == b'\n') {
                Some(nl) => {
                    self.buf.extend_from_slice(&chunk[..nl]);
                    out.push(Piece { bytes: std::mem::take(&mut self.buf), cut: false });
                    chunk = &chunk[nl + 1..];
                }
                None => {
                    let take = room.min(chunk.len());
                    self.buf.extend_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    if self.buf.len() == self.max_line && !chunk.is_empty() {
                        out.push(Piece { bytes: std::mem::take(&mut self.buf), cut: true });
                    }
                }
            }
        }
        out
    }

    /// The pipe closed: what is left, as a cut piece.
    pub fn finish(&mut self) -> Option<Piece> {
        (!self.buf.is_empty()).then(|| Piece { bytes: std::mem::take(&mut self.buf), cut: true })
    }

    /// Bytes held waiting for a newline.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lines: &[Line]) -> Vec<String> {
        lines.iter().map(|l| String::from_utf8_lossy(&l.bytes).into_owned()).collect()
    }

    #[test]
    fn the_ring_keeps_the_newest_lines_within_its_budget() {
        // Room for exactly three 2-byte lines.
        let mut r = Ring::new(3 * (2 + LINE_OVERHEAD));
        for (i, s) in ["l1", "l2", "l3", "l4", "l5"].iter().enumerate() {
            let seq = r.push(Stream::Stdout, i as u64, s.as_bytes().to_vec(), false);
            assert_eq!(seq, i as u64 + 1);
        }
        assert_eq!(texts(&r.tail(10)), ["l3", "l4", "l5"]);
        assert_eq!(r.used(), 3 * (2 + LINE_OVERHEAD));
        assert_eq!(texts(&r.tail(2)), ["l4", "l5"]);
        // A line larger than the whole budget is still kept, alone.
        r.push(Stream::Stderr, 9, vec![b'x'; 1000], false);
        assert_eq!(r.len(), 1);
        r.set_capacity(0);
        assert_eq!(r.len(), 1, "the newest line stays");
    }

    #[test]
    fn a_follower_resumes_with_nothing_doubled_and_is_told_what_it_lost() {
        let mut r = Ring::new(3 * (1 + LINE_OVERHEAD));
        assert_eq!(r.since(0, 10), Since { lines: vec![], lost: 0, next: 0 });
        r.push(Stream::Stdout, 0, b"a".to_vec(), false);
        r.push(Stream::Stdout, 0, b"b".to_vec(), false);
        let s = r.since(0, 1);
        assert_eq!((texts(&s.lines), s.lost, s.next), (vec!["a".into()], 0, 1));
        let s = r.since(s.next, 10);
        assert_eq!((texts(&s.lines), s.lost, s.next), (vec!["b".into()], 0, 2));
        let idle = r.since(s.next, 10);
        assert_eq!((idle.lines.len(), idle.lost, idle.next), (0, 0, 2));
        // c, d, e arrive; a and b... and c fall out before the follower reads.
        for x in ["c", "d", "e", "f"] {
            r.push(Stream::Stderr, 0, x.as_bytes().to_vec(), false);
        }
        let s = r.since(2, 10);
        assert_eq!(s.lost, 1, "c was evicted unseen");
        assert_eq!(texts(&s.lines), ["d", "e", "f"]);
        assert_eq!(s.next, 6);
        // Everything gone since an old cursor: lost counts all of it.
        let s = r.since(0, 10);
        assert_eq!(s.lost, 3);
        // A cursor from the future starts over.
        assert_eq!(r.since(99, 10).lines.len(), 3);
    }

    #[test]
    fn chunks_become_lines_and_long_lines_are_cut() {
        let mut a = LineAssembler::new(4);
        let p = |s: &str, cut| Piece { bytes: s.as_bytes().to_vec(), cut };
        assert_eq!(a.feed(b"ab"), []);
        assert_eq!(a.feed(b"c\nde"), [p("abc", false)]);
        assert_eq!(a.feed(b"\n\n"), [p("de", false), p("", false)]);
        // Exactly max_line then a newline: one whole line.
        assert_eq!(a.feed(b"wxyz\n"), [p("wxyz", false)]);
        // Longer: cut into pieces of max_line.
        assert_eq!(a.feed(b"0123456789"), [p("0123", true), p("4567", true)]);
        assert_eq!(a.pending(), 2);
        assert_eq!(a.feed(b"\nq"), [p("89", false)]);
        assert_eq!(a.finish(), Some(p("q", true)));
        assert_eq!(a.finish(), None);
    }
}

//! What waits to go into one instance's stdin, without I/O: the sends in
//! arrival order, which of them the buffer holds, and which wait for room.
//!
//! A send is *accepted* into the buffer while the bytes accepted and not yet
//! written stay within [`STDIN_BUFFER`]; the ones behind wait, in order (a
//! later send never overtakes one that waits, even if it would fit). Bytes
//! go out from the front only. A send is answered once its last byte is
//! written ([`Queue::wrote`]); one that fails (its deadline passed, the
//! process went away) is withdrawn with what of it was written, and so is
//! every later send of the same client, so what one client sends reaches
//! the process as a prefix of what it meant, never with a hole.

use std::collections::VecDeque;

/// Bytes accepted for one instance and not yet in its pipe, at most.
pub const STDIN_BUFFER: usize = 1 << 20;
/// The largest payload of one send request (`weaver send` splits its
/// input into requests of [`SEND_CHUNK`]).
pub const MAX_SEND: usize = STDIN_BUFFER;
/// What `weaver send` and `weaver attach` put in one request.
pub const SEND_CHUNK: usize = 256 * 1024;

/// One send request waiting to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Never reused; names its deadline.
    pub id: u64,
    pub client: u64,
    pub tag: u64,
    pub bytes: Vec<u8>,
    /// Bytes of it in the pipe.
    pub written: usize,
    /// Close stdin once it is written.
    pub close: bool,
}

impl Pending {
    fn left(&self) -> usize {
        self.bytes.len() - self.written
    }
}

/// A send that is over: written whole, or failed with `written` of its
/// bytes in the pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Over {
    pub id: u64,
    pub client: u64,
    pub tag: u64,
    pub len: usize,
    pub written: usize,
    pub close: bool,
}

impl From<Pending> for Over {
    fn from(p: Pending) -> Self {
        Over {
            id: p.id,
            client: p.client,
            tag: p.tag,
            len: p.bytes.len(),
            written: p.written,
            close: p.close,
        }
    }
}

#[derive(Debug, Default)]
pub struct Queue {
    /// Accepted first (`accepted` of them), then the waiting ones.
    sends: VecDeque<Pending>,
    /// How many at the front are accepted.
    accepted: usize,
    /// Unwritten bytes of the accepted sends (at most [`STDIN_BUFFER`]).
    buffered: usize,
    /// Bytes of the waiting sends.
    waiting: usize,
}

impl Queue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }

    /// Unwritten bytes the buffer holds.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Bytes of the sends that wait for room.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Whether a send of `len` bytes would wait for room.
    pub fn would_wait(&self, len: usize) -> bool {
        self.accepted < self.sends.len() || self.buffered + len > STDIN_BUFFER
    }

    /// Queue a send (at most [`MAX_SEND`] bytes; the caller refuses more).
    pub fn push(&mut self, p: Pending) {
        debug_assert!(p.bytes.len() <= MAX_SEND);
        self.waiting += p.left();
        self.sends.push_back(p);
        self.promote();
    }

    /// Accept waiting sends, in order, while they fit.
    fn promote(&mut self) {
        while let Some(p) = self.sends.get(self.accepted) {
            if self.buffered + p.left() > STDIN_BUFFER {
                break;
            }
            self.buffered += p.left();
            self.waiting -= p.left();
            self.accepted += 1;
        }
    }

    /// The bytes to write next: the rest of the front send, if accepted.
    pub fn front(&self) -> Option<&[u8]> {
        if self.accepted == 0 {
            return None;
        }
        self.sends.front().map(|p| &p.bytes[p.written..])
    }

    /// Whether the front send closes stdin once written (and nothing of
    /// it is left): also true for an empty send with `close`.
    pub fn front_done(&self) -> Option<&Pending> {
        self.sends.front().filter(|p| self.accepted > 0 && p.left() == 0)
    }

    /// `n` bytes of the front went into the pipe: the sends that are now
    /// written whole, in order. A send that closes stdin ends the list: the
    /// caller closes, then fails what is left.
    pub fn wrote(&mut self, mut n: usize) -> Vec<Over> {
        let mut done = Vec::new();
        while let Some(p) = self.sends.front_mut() {
            if self.accepted == 0 {
                break;
            }
            let take = n.min(p.left());
            p.written += take;
            self.buffered -= take;
            n -= take;
            if p.left() > 0 {
                break;
            }
            let p = self.sends.pop_front().expect("front exists");
            self.accepted -= 1;
            let close = p.close;
            done.push(Over::from(p));
            if close {
                break;
            }
        }
        self.promote();
        done
    }

    /// Withdraw send `id` and every later send of the same client.
    /// Empty if `id` is not queued.
    pub fn fail(&mut self, id: u64) -> Vec<Over> {
        let Some(at) = self.sends.iter().position(|p| p.id == id) else { return Vec::new() };
        let client = self.sends[at].client;
        let mut out = Vec::new();
        let mut i = at;
        while i < self.sends.len() {
            if self.sends[i].client == client {
                let p = self.remove(i);
                out.push(Over::from(p));
            } else {
                i += 1;
            }
        }
        self.promote();
        out
    }

    /// Withdraw the sends of `client` of which nothing is written yet (it
    /// left; a send it began is finished, so the process gets no half
    /// message).
    pub fn forget_client(&mut self, client: u64) -> Vec<Over> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.sends.len() {
            if self.sends[i].client == client && self.sends[i].written == 0 {
                out.push(Over::from(self.remove(i)));
            } else {
                i += 1;
            }
        }
        self.promote();
        out
    }

    /// Withdraw everything (the pipe is gone).
    pub fn fail_all(&mut self) -> Vec<Over> {
        self.accepted = 0;
        self.buffered = 0;
        self.waiting = 0;
        self.sends.drain(..).map(Over::from).collect()
    }

    fn remove(&mut self, i: usize) -> Pending {
        let p = self.sends.remove(i).expect("index in range");
        if i < self.accepted {
            self.accepted -= 1;
            self.buffered -= p.left();
        } else {
            self.waiting -= p.left();
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(id: u64, client: u64, len: usize, byte: u8) -> Pending {
        Pending { id, client, tag: id * 10, bytes: vec![byte; len], written: 0, close: false }
    }

    #[test]
    fn sends_are_accepted_within_the_bound_and_the_rest_wait_in_order() {
        let mut q = Queue::new();
        q.push(send(1, 1, STDIN_BUFFER / 2, b'a'));
        q.push(send(2, 2, STDIN_BUFFER / 2, b'b'));
        q.push(send(3, 3, 10, b'c'));
        assert_eq!((q.buffered(), q.waiting()), (STDIN_BUFFER, 10));
        assert_eq!(q.front().unwrap().len(), STDIN_BUFFER / 2);
        // Part of the first: nothing is over, and the 100 bytes of room
        // let the third in (room is what is unwritten).
        assert!(q.wrote(100).is_empty());
        assert_eq!((q.buffered(), q.waiting()), (STDIN_BUFFER - 90, 0));
        let done = q.wrote(STDIN_BUFFER / 2 - 100);
        assert_eq!(
            done.iter().map(|o| (o.id, o.written)).collect::<Vec<_>>(),
            [(1, STDIN_BUFFER / 2)]
        );
        assert_eq!(q.front().unwrap()[0], b'b');
        let done = q.wrote(STDIN_BUFFER / 2 + 10);
        assert_eq!(done.iter().map(|o| o.id).collect::<Vec<_>>(), [2, 3]);
        assert!(q.is_empty());
        assert_eq!((q.buffered(), q.waiting()), (0, 0));
    }

    #[test]
    fn a_waiting_send_is_never_overtaken() {
        let mut q = Queue::new();
        q.push(send(1, 1, STDIN_BUFFER - 5, b'a'));
        q.push(send(2, 2, 100, b'b'));
        q.push(send(3, 3, 1, b'c'));
        assert_eq!(q.waiting(), 101, "the small one waits behind the big one");
        q.wrote(STDIN_BUFFER - 5);
        assert_eq!((q.buffered(), q.waiting()), (101, 0));
    }

    #[test]
    fn a_failed_send_takes_the_later_sends_of_its_client_with_it() {
        let mut q = Queue::new();
        q.push(send(1, 7, 100, b'a'));
        q.push(send(2, 8, 100, b'b'));
        q.push(send(3, 7, 100, b'c'));
        q.wrote(40);
        let failed = q.fail(1);
        assert_eq!(
            failed.iter().map(|o| (o.id, o.written, o.len)).collect::<Vec<_>>(),
            [(1, 40, 100), (3, 0, 100)]
        );
        assert_eq!(q.front().unwrap(), &[b'b'; 100][..]);
        assert_eq!((q.buffered(), q.waiting()), (100, 0));
        assert!(q.fail(99).is_empty());
    }

    #[test]
    fn a_client_that_left_loses_only_what_was_not_begun() {
        let mut q = Queue::new();
        q.push(send(1, 7, 100, b'a'));
        q.push(send(2, 7, 100, b'b'));
        q.wrote(1);
        let gone = q.forget_client(7);
        assert_eq!(gone.iter().map(|o| o.id).collect::<Vec<_>>(), [2]);
        assert_eq!(q.front().unwrap().len(), 99, "the begun send is finished");
        assert_eq!(q.fail_all().len(), 1);
        assert!(q.is_empty() && q.front().is_none());
    }

    #[test]
    fn a_closing_send_ends_the_writes_and_an_empty_one_is_done_at_once() {
        let mut q = Queue::new();
        let mut c = send(1, 1, 0, 0);
        c.close = true;
        q.push(c);
        q.push(send(2, 2, 5, b'x'));
        assert_eq!(q.front().unwrap().len(), 0);
        assert_eq!(q.front_done().map(|p| p.id), Some(1));
        let done = q.wrote(0);
        assert_eq!(done.iter().map(|o| (o.id, o.close)).collect::<Vec<_>>(), [(1, true)]);
        assert_eq!(q.fail_all().iter().map(|o| o.id).collect::<Vec<_>>(), [2]);
    }
}

"""The weavelet client: one connection to weaver's ``weavelet.sock``.

The protocol is specified in ``docs/weavelet-protocol.md`` of the weaver
repository: newline-delimited JSON over a Unix stream socket. This module
speaks version 1 of it with the standard library only.

A :class:`Weavelet` is meant to be used from one thread (the training loop's):
it holds no lock. Share it between threads only behind a lock of your own.
"""

from __future__ import annotations

import json
import math
import os
import select
import socket
import time
from typing import Any, Dict, FrozenSet, Iterator, Mapping, Optional, Set, Union

__all__ = [
    "Config",
    "MAX_LINE",
    "PROTOCOL",
    "Weavelet",
    "WeaveletError",
    "find_socket",
]

#: The protocol version this client speaks.
PROTOCOL = 1
#: The longest line either side may send, without its ``\n``.
MAX_LINE = 65536
#: The longest ``reason`` of a ``rejected``, in bytes.
MAX_REASON = 1024
#: The most metrics one ``status`` may carry.
MAX_METRICS = 16
#: weaver keeps at most one ``status`` per this many seconds per weavelet.
STATUS_INTERVAL = 0.1

_READ_CHUNK = 1 << 17


class WeaveletError(Exception):
    """weaver said the weavelet broke a rule (an ``error`` line), or weaver sent
    something this client cannot read. The connection is closed when this is
    raised; the next :meth:`Weavelet.poll` connects again after the backoff."""


def find_socket(runtime_dir: Optional[str] = None) -> str:
    """The path of ``weavelet.sock``.

    ``runtime_dir`` given: that dir. Otherwise ``$WEAVER_WEAVELET_SOCKET`` (set
    by weaver for the processes it supervises), else the runtime dir rules:
    ``$WEAVER_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/weaver``, else
    ``/tmp/weaver-<uid>``.
    """
    if runtime_dir is None:
        explicit = os.environ.get("WEAVER_WEAVELET_SOCKET")
        if explicit:
            return explicit
        runtime_dir = os.environ.get("WEAVER_RUNTIME_DIR") or None
        if runtime_dir is None:
            xdg = os.environ.get("XDG_RUNTIME_DIR")
            runtime_dir = os.path.join(xdg, "weaver") if xdg else "/tmp/weaver-%d" % os.getuid()
    return os.path.join(runtime_dir, "weavelet.sock")


class Config(Mapping[str, Any]):
    """One document from weaver: the whole effective set of parameters.

    It reads as a mapping (``cfg["lr"]``, ``cfg.get("optimizer")``,
    ``cfg.as_dict()``) and also
    carries ``revision`` (pass the Config, or the revision, to
    :meth:`Weavelet.applied`), ``changed`` (the keys that differ from the
    previous document :meth:`Weavelet.poll` returned, removed keys included;
    every key for the first one) and ``target``.
    """

    __slots__ = ("revision", "changed", "target", "_doc")

    def __init__(
        self,
        revision: int,
        values: Dict[str, Any],
        changed: FrozenSet[str],
        target: Optional[str] = None,
    ) -> None:
        self.revision = revision
        self.changed = changed
        self.target = target
        self._doc = values

    def __getitem__(self, key: str) -> Any:
        return self._doc[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._doc)

    def __len__(self) -> int:
        return len(self._doc)

    def as_dict(self) -> Dict[str, Any]:
        """A copy of the document as a plain dict."""
        return dict(self._doc)

    def __repr__(self) -> str:
        return "Config(revision=%d, values=%r, changed=%r)" % (
            self.revision,
            self._doc,
            sorted(self.changed),
        )


Revision = Union[Config, int]


def _revision_of(cfg: Revision) -> int:
    rev = cfg.revision if isinstance(cfg, Config) else cfg
    if isinstance(rev, bool) or not isinstance(rev, int) or rev < 0:
        raise ValueError("revision must be a non-negative integer, not %r" % (rev,))
    return rev


def _check_step(step: Optional[int]) -> Optional[int]:
    if step is None:
        return None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError("step must be a non-negative integer, not %r" % (step,))
    return step


def _truncate_utf8(text: str, limit: int) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", errors="ignore")


def _encode(msg: Dict[str, Any]) -> bytes:
    line = json.dumps(msg, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    data = line.encode("utf-8") + b"\n"
    if len(data) > MAX_LINE + 1:
        raise ValueError("message of %d bytes is over the %d-byte line limit" % (len(data) - 1, MAX_LINE))
    return data


class Weavelet:
    """A connection to weaver that receives configuration documents.

    ``Weavelet()`` inside a process weaver supervises finds everything in its
    environment. Elsewhere give the ``target`` (the ``[[process]]`` name) and,
    if weaver's runtime dir is not the default, ``runtime_dir``; or give
    ``socket_path`` directly.

    Nothing here blocks except :meth:`wait`, and nothing raises into the
    training loop because weaver is missing or restarting: the weavelet
    connects again with backoff (``backoff_initial`` doubling up to
    ``backoff_max`` seconds) and takes the fresh document. It raises
    :class:`WeaveletError` when weaver reports a broken rule.

    One Weavelet is used from one thread.
    """

    def __init__(
        self,
        target: Optional[str] = None,
        *,
        runtime_dir: Optional[str] = None,
        socket_path: Optional[str] = None,
        name: Optional[str] = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        if socket_path is None:
            socket_path = find_socket(runtime_dir)
        if target is None and not os.environ.get("WEAVER_WEAVELET_SOCKET"):
            raise ValueError(
                "no target: pass Weavelet(target=...) or run the process under weaver "
                "(which sets WEAVER_WEAVELET_SOCKET)"
            )
        self.socket_path: str = socket_path
        self.target: Optional[str] = target
        self.name: Optional[str] = name
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._backoff = backoff_initial
        self._next_attempt = 0.0

        self._sock: Optional[socket.socket] = None
        self._poller: Any = None
        self._poll0: Any = None
        self._inbuf = bytearray()
        self._out = bytearray()
        self._welcome: Optional[Dict[str, Any]] = None
        self._conn_revisions: Set[int] = set()
        self._conn_configs = 0

        self._latest: Optional[Dict[str, Any]] = None
        self._delivered: Optional[int] = None
        self._values: Dict[str, Any] = {}
        self._last_ack: Optional[Dict[str, Any]] = None

        self._pending_status: Optional[Dict[str, Any]] = None
        self._status_sent_at: float = -math.inf

    # -- public API ---------------------------------------------------------

    def poll(self) -> Optional[Config]:
        """The latest document if one arrived since the last call, else None.

        Never blocks. When several documents arrived, only the newest is
        returned. Connects (again) when due. Raises :class:`WeaveletError` on
        an ``error`` from weaver.
        """
        if (
            self._sock is not None
            and self._latest is None
            and self._pending_status is None
            and not self._out
            and not self._poll0(0)
        ):
            return None
        return self._poll_slow()

    def wait(self, timeout: Optional[float] = None) -> Optional[Config]:
        """Like :meth:`poll`, but waits up to ``timeout`` seconds (None: for
        good) for a document. Returns None when the time ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            cfg = self.poll()
            if cfg is not None:
                return cfg
            now = time.monotonic()
            remaining = None if deadline is None else deadline - now
            if remaining is not None and remaining <= 0:
                return None
            sock = self._sock
            if sock is None:
                delay = max(0.0, self._next_attempt - now)
                if remaining is not None:
                    delay = min(delay, remaining)
                time.sleep(delay)
                continue
            limit: Optional[float] = remaining
            if self._pending_status is not None:
                due = max(0.0, self._status_sent_at + STATUS_INTERVAL - now)
                limit = due if limit is None else min(limit, due)
            writers = [sock] if self._out else []
            try:
                select.select([sock], writers, [], limit)
            except (OSError, ValueError):
                self._lost()

    def applied(self, cfg: Revision, step: Optional[int] = None) -> None:
        """Tell weaver the document ``cfg`` (a Config or its revision) is in
        effect since training step ``step``."""
        msg: Dict[str, Any] = {"type": "applied", "revision": _revision_of(cfg)}
        if _check_step(step) is not None:
            msg["step"] = step
        self._ack(msg)

    def rejected(self, cfg: Revision, step: Optional[int], reason: str) -> None:
        """Tell weaver the document ``cfg`` was not applied, and why (cut to
        1024 bytes). The loop goes on with what it had."""
        msg: Dict[str, Any] = {"type": "rejected", "revision": _revision_of(cfg)}
        if _check_step(step) is not None:
            msg["step"] = step
        msg["reason"] = _truncate_utf8(str(reason) or "rejected", MAX_REASON)
        self._ack(msg)

    def status(self, step: Optional[int] = None, **metrics: float) -> None:
        """Report progress: the step and up to 16 numeric metrics.

        weaver keeps one status per 100 ms; calls in between are held here and
        the latest goes out when that interval has passed (on a later
        :meth:`poll`, :meth:`wait` or :meth:`status`). Non-finite values
        (NaN, inf) have no JSON form and are left out.
        """
        if len(metrics) > MAX_METRICS:
            raise ValueError("at most %d metrics, not %d" % (MAX_METRICS, len(metrics)))
        clean: Dict[str, float] = {}
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError("metric %r is not a number: %r" % (key, value))
            if isinstance(value, float) and not math.isfinite(value):
                continue
            clean[key] = value
        msg: Dict[str, Any] = {"type": "status"}
        if _check_step(step) is not None:
            msg["step"] = step
        msg["metrics"] = clean
        self._pending_status = msg
        if self._sock is not None:
            self._flush_status(time.monotonic())

    def close(self) -> None:
        """Close the connection; a later :meth:`poll` connects again."""
        self._drop()
        self._next_attempt = 0.0

    def fileno(self) -> int:
        """The socket's fd (for a select loop of your own), -1 when not
        connected."""
        return self._sock.fileno() if self._sock is not None else -1

    @property
    def connected(self) -> bool:
        """Whether a connection to weaver is open."""
        return self._sock is not None

    @property
    def welcome(self) -> Optional[Dict[str, Any]]:
        """weaver's ``welcome`` on the current connection (``instance``,
        ``id``, ``weaver``), or None."""
        return self._welcome

    @property
    def revision(self) -> Optional[int]:
        """The revision of the last document :meth:`poll` returned."""
        return self._delivered

    def __enter__(self) -> "Weavelet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()

    # -- connection ---------------------------------------------------------

    def _poll_slow(self) -> Optional[Config]:
        if self._sock is None and not self._connect():
            return None
        if self._out:
            self._flush()
        if self._sock is not None and self._pending_status is not None:
            self._flush_status(time.monotonic())
        if self._sock is not None and self._poll0(0):
            self._read()
        return self._take()

    def _connect(self) -> bool:
        now = time.monotonic()
        if now < self._next_attempt:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            self._schedule_retry(now)
            return False
        self._sock = sock
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            self._poller = poller
            self._poll0 = poller.poll
        else:  # pragma: no cover - platforms without poll(2)
            fds = [sock]
            self._poll0 = lambda timeout: select.select(fds, [], [], timeout)[0]
        hello: Dict[str, Any] = {"type": "hello", "protocol": PROTOCOL}
        if self.target is not None:
            hello["target"] = self.target
        if self.name is not None:
            hello["name"] = self.name
        self._out += _encode(hello)
        self._flush()
        return self._sock is not None

    def _schedule_retry(self, now: float) -> None:
        self._next_attempt = now + self._backoff
        self._backoff = min(self._backoff * 2, self._backoff_max)

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._poller = None
        self._poll0 = None
        self._inbuf.clear()
        self._out.clear()
        self._welcome = None
        self._conn_revisions.clear()
        self._conn_configs = 0

    def _lost(self) -> None:
        """The connection broke: connect again after the backoff (short when
        that connection had worked)."""
        healthy = self._conn_configs > 0
        self._drop()
        if healthy:
            self._backoff = self._backoff_initial
        self._schedule_retry(time.monotonic())

    def _fail(self, message: str) -> None:
        self._drop()
        self._backoff = self._backoff_max
        self._schedule_retry(time.monotonic())
        raise WeaveletError(message)

    def _flush(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            while self._out:
                sent = sock.send(self._out)
                del self._out[:sent]
        except BlockingIOError:
            pass
        except OSError:
            self._lost()

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            return
        self._out += data
        self._flush()

    def _flush_status(self, now: float) -> None:
        if now - self._status_sent_at < STATUS_INTERVAL:
            return
        msg = self._pending_status
        self._pending_status = None
        self._status_sent_at = now
        if msg is not None:
            self._send(_encode(msg))

    def _ack(self, msg: Dict[str, Any]) -> None:
        self._last_ack = msg
        rev = msg["revision"]
        if rev > 0 and rev in self._conn_revisions:
            self._send(_encode(msg))

    # -- reading ------------------------------------------------------------

    def _read(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                chunk = sock.recv(_READ_CHUNK)
            except BlockingIOError:
                break
            except OSError:
                self._lost()
                return
            if not chunk:
                self._parse()
                if self._sock is not None:
                    self._lost()
                return
            self._inbuf += chunk
            if len(chunk) < _READ_CHUNK:
                break
        self._parse()

    def _parse(self) -> None:
        buf = self._inbuf
        start = 0
        try:
            while True:
                end = buf.find(b"\n", start)
                if end < 0:
                    break
                if end - start > MAX_LINE:
                    self._fail("weaver sent a line of %d bytes, over the %d-byte limit" % (end - start, MAX_LINE))
                line = bytes(buf[start:end])
                start = end + 1
                self._handle(line)
                if self._sock is None:
                    return
            if len(buf) - start > MAX_LINE:
                self._fail("weaver sent over %d bytes without a newline" % MAX_LINE)
        finally:
            if self._sock is not None:
                del buf[:start]

    def _handle(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            msg = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            self._fail("weaver sent a line that is not JSON: %s" % exc)
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            self._fail("weaver sent a line that is not an object with a string type")
        kind = msg["type"]
        if kind == "config":
            rev = msg.get("revision")
            values = msg.get("values")
            if isinstance(rev, bool) or not isinstance(rev, int) or rev < 0 or not isinstance(values, dict):
                self._fail("weaver sent a config without a revision and values: %s" % line[:200].decode("utf-8", "replace"))
            self._conn_revisions.add(rev)
            self._conn_configs += 1
            self._backoff = self._backoff_initial
            self._latest = msg
        elif kind == "welcome":
            self._welcome = msg
        elif kind == "error":
            message = msg.get("message")
            self._fail("weaver: %s" % (message if isinstance(message, str) else line.decode("utf-8", "replace")))
        # Other types are from a later version of the protocol: ignored.

    def _take(self) -> Optional[Config]:
        msg = self._latest
        if msg is None:
            return None
        self._latest = None
        rev: int = msg["revision"]
        values: Dict[str, Any] = msg["values"]
        if rev == self._delivered and values == self._values:
            # The same document again, on a new connection (weaver restarted):
            # nothing for the loop to do; tell this weaver what was done.
            ack = self._last_ack
            if ack is not None and ack["revision"] == rev:
                self._ack(ack)
            return None
        old = self._values
        if self._delivered is None:
            changed = frozenset(values)
        else:
            changed = frozenset(k for k in set(old) | set(values) if k not in old or k not in values or old[k] != values[k])
        self._delivered = rev
        self._values = values
        target = msg.get("target")
        return Config(rev, dict(values), changed, target if isinstance(target, str) else self.target)


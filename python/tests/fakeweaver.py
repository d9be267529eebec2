"""A fake weaver for tests and the poll bench: it speaks the weavelet
protocol over a real Unix socket, one thread per connection.

It answers ``hello`` with ``welcome`` and the current document, records
every line it receives, and lets the test push documents, raw bytes or an
``error``, close connections, and stop and start again on the same path.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
from typing import Any, Dict, List, Optional


class FakeConn:
    """One accepted weavelet connection."""

    def __init__(self, server: "FakeWeaver", sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.hello: Optional[Dict[str, Any]] = None
        self.lock = threading.Lock()
        self.sent_values: Optional[Dict[str, Any]] = None
        self.closed = threading.Event()

    def send_raw(self, data: bytes) -> None:
        with self.lock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass

    def send(self, msg: Dict[str, Any]) -> None:
        self.send_raw(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    def send_config(self, revision: int, values: Dict[str, Any]) -> None:
        old = self.sent_values
        if old is None:
            changed = sorted(values)
        else:
            changed = sorted(k for k in set(old) | set(values) if old.get(k, object()) != values.get(k, object()))
        self.sent_values = dict(values)
        self.send(
            {
                "type": "config",
                "target": self.server.target,
                "revision": revision,
                "values": values,
                "changed": changed,
            }
        )

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.closed.set()

    def run(self) -> None:
        buf = b""
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self.server.received.put(line)
                    msg = json.loads(line)
                    if msg.get("type") == "hello" and self.hello is None:
                        self.hello = msg
                        self.send(
                            {
                                "type": "welcome",
                                "protocol": 1,
                                "weaver": "fake",
                                "target": msg.get("target", self.server.target),
                                "id": len(self.server.conns),
                            }
                        )
                        with self.server.lock:
                            rev, values = self.server.revision, dict(self.server.values)
                        self.send_config(rev, values)
                        self.server.hellos.put(self)
        except (OSError, ValueError):
            pass
        finally:
            self.closed.set()


class FakeWeaver:
    """A fake weaver listening on ``path``."""

    def __init__(self, path: str, target: str = "trainer", values: Optional[Dict[str, Any]] = None, revision: int = 1) -> None:
        self.path = path
        self.target = target
        self.values: Dict[str, Any] = dict(values if values is not None else {"lr": 0.1})
        self.revision = revision if self.values else 0
        self.lock = threading.Lock()
        self.received: "queue.Queue[bytes]" = queue.Queue()
        self.hellos: "queue.Queue[FakeConn]" = queue.Queue()
        self.conns: List[FakeConn] = []
        self.listener: Optional[socket.socket] = None
        self.thread: Optional[threading.Thread] = None

    def start(self) -> "FakeWeaver":
        if os.path.exists(self.path):
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(16)
        self.listener = listener
        self.thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self.thread.start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            conn = FakeConn(self, sock)
            self.conns.append(conn)
            threading.Thread(target=conn.run, daemon=True).start()

    def set(self, **values: Any) -> int:
        """Change the document and send it to every connection that said
        hello; returns the new revision."""
        with self.lock:
            self.values.update(values)
            self.revision += 1
            rev, doc = self.revision, dict(self.values)
        for conn in self.conns:
            if conn.hello is not None and not conn.closed.is_set():
                conn.send_config(rev, doc)
        return rev

    def stop(self) -> None:
        """Close the listener and every connection, and remove the socket."""
        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        for conn in self.conns:
            conn.close()
        self.conns = []
        if self.thread is not None:
            self.thread.join(5)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def next_hello(self, timeout: float = 5.0) -> FakeConn:
        return self.hellos.get(timeout=timeout)

    def next_message(self, timeout: float = 5.0) -> Dict[str, Any]:
        return json.loads(self.received.get(timeout=timeout))

    def next_of(self, kind: str, timeout: float = 5.0) -> Dict[str, Any]:
        """The next received message of type ``kind`` (others are skipped)."""
        while True:
            msg = self.next_message(timeout)
            if msg.get("type") == kind:
                return msg

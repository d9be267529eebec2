"""Unit tests of weavelet.Weavelet against a fake weaver on a real Unix socket."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import time
import unittest
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fakeweaver import FakeWeaver  # noqa: E402

import weavelet  # noqa: E402
from weavelet import Config, Weavelet, WeaveletError  # noqa: E402


def poll_until(wl: Weavelet, timeout: float = 5.0) -> Optional[Config]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cfg = wl.poll()
        if cfg is not None:
            return cfg
        time.sleep(0.001)
    return None


class Base(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="wl-")
        self.path = os.path.join(self.dir, "weavelet.sock")
        self.server = FakeWeaver(self.path, values={"lr": 0.1, "optimizer": "sgd"}).start()
        self.wl = Weavelet("trainer", socket_path=self.path, name="rank0", backoff_initial=0.01, backoff_max=0.05)

    def tearDown(self) -> None:
        self.wl.close()
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class TestConversation(Base):
    def test_hello(self) -> None:
        self.assertIsNone(self.wl.poll())  # connects and says hello; nothing read yet
        hello = self.server.next_message()
        self.assertEqual(hello, {"type": "hello", "protocol": 1, "target": "trainer", "name": "rank0"})

    def test_first_document(self) -> None:
        cfg = self.wl.wait(5)
        assert cfg is not None
        self.assertEqual(cfg.revision, 1)
        self.assertEqual(dict(cfg), {"lr": 0.1, "optimizer": "sgd"})
        self.assertEqual(cfg.changed, frozenset({"lr", "optimizer"}))
        self.assertEqual(cfg["lr"], 0.1)
        self.assertEqual(sorted(cfg.values(), key=str), [0.1, "sgd"])  # a full Mapping
        self.assertEqual(cfg.as_dict(), {"lr": 0.1, "optimizer": "sgd"})
        self.assertEqual(cfg.target, "trainer")
        self.assertIsNotNone(self.wl.welcome)
        self.assertEqual(self.wl.revision, 1)
        self.assertIsNone(self.wl.poll())

    def test_applied(self) -> None:
        cfg = self.wl.wait(5)
        assert cfg is not None
        self.wl.applied(cfg, 1200)
        self.assertEqual(self.server.next_of("applied"), {"type": "applied", "revision": 1, "step": 1200})
        self.wl.applied(cfg.revision)
        self.assertEqual(self.server.next_of("applied"), {"type": "applied", "revision": 1})

    def test_coalescing(self) -> None:
        self.assertIsNotNone(self.wl.wait(5))
        conn = self.server.next_hello()
        for i in range(2, 12):
            self.server.set(lr=i / 100)
        del conn
        time.sleep(0.1)  # every document has arrived in the socket
        cfg = self.wl.poll()
        assert cfg is not None
        self.assertEqual(cfg.revision, 11)
        self.assertEqual(cfg["lr"], 0.11)
        self.assertEqual(cfg.changed, frozenset({"lr"}))
        self.assertIsNone(self.wl.poll())

    def test_changed_includes_removed_keys(self) -> None:
        self.assertIsNotNone(self.wl.wait(5))
        self.server.next_hello()
        with self.server.lock:
            del self.server.values["optimizer"]
        self.server.set(lr=0.2)
        cfg = self.wl.wait(5)
        assert cfg is not None
        self.assertEqual(dict(cfg), {"lr": 0.2})
        self.assertEqual(cfg.changed, frozenset({"lr", "optimizer"}))

    def test_reject(self) -> None:
        self.assertIsNotNone(self.wl.wait(5))
        self.server.next_hello()
        rev = self.server.set(lr=-1)
        cfg = self.wl.wait(5)
        assert cfg is not None and cfg.revision == rev
        self.wl.rejected(cfg, 1300, "lr must be > 0")
        self.assertEqual(
            self.server.next_of("rejected"),
            {"type": "rejected", "revision": rev, "step": 1300, "reason": "lr must be > 0"},
        )

    def test_reject_reason_cut_to_1024_bytes(self) -> None:
        cfg = self.wl.wait(5)
        assert cfg is not None
        self.wl.rejected(cfg, None, "\u00e9" * 1000)
        msg = self.server.next_of("rejected")
        self.assertLessEqual(len(msg["reason"].encode()), 1024)
        self.assertNotIn("step", msg)

    def test_ack_for_a_revision_not_sent_on_this_connection_is_not_sent(self) -> None:
        self.assertIsNotNone(self.wl.wait(5))
        self.wl.applied(99, 1)  # never sent: weaver would close the connection
        self.wl.applied(1, 2)
        self.assertEqual(self.server.next_of("applied")["revision"], 1)

    def test_status(self) -> None:
        self.assertIsNotNone(self.wl.wait(5))
        self.wl.status(1300, loss=0.31, tokens_per_s=5100, nan=float("nan"))
        self.assertEqual(
            self.server.next_of("status"),
            {"type": "status", "step": 1300, "metrics": {"loss": 0.31, "tokens_per_s": 5100}},
        )
        # Within 100 ms: held, and only the latest goes out once it is due.
        self.wl.status(1301, loss=0.30)
        self.wl.status(1302, loss=0.29)
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            self.wl.poll()
            time.sleep(0.005)
        self.assertEqual(self.server.next_of("status")["step"], 1302)
        with self.assertRaises(ValueError):
            self.wl.status(1, **{"m%d" % i: i for i in range(17)})
        with self.assertRaises(ValueError):
            self.wl.status(1, loss="low")  # type: ignore[arg-type]

    def test_error_then_close(self) -> None:
        self.assertIsNotNone(self.wl.wait(5))
        conn = self.server.next_hello()
        conn.send({"type": "error", "message": "line 3: not JSON: expected value at column 1"})
        conn.close()
        with self.assertRaises(WeaveletError) as caught:
            poll_until(self.wl)
        self.assertIn("line 3: not JSON", str(caught.exception))
        self.assertFalse(self.wl.connected)
        # The next poll connects again (after the backoff): no exception.
        self.assertIsNone(self.wl.wait(0.5))  # same document again: nothing new
        self.assertIsNotNone(self.server.next_hello())

    def test_unknown_types_and_members_are_ignored(self) -> None:
        self.assertIsNotNone(self.wl.wait(5))
        conn = self.server.next_hello()
        conn.send({"type": "future", "x": 1})
        conn.send({"type": "config", "revision": 2, "values": {"lr": 1}, "changed": ["lr"], "extra": [1]})
        cfg = self.wl.wait(5)
        assert cfg is not None
        self.assertEqual(cfg.revision, 2)

    def test_garbage_from_weaver_raises(self) -> None:
        self.assertIsNotNone(self.wl.wait(5))
        conn = self.server.next_hello()
        conn.send_raw(b"{nope\n")
        with self.assertRaises(WeaveletError):
            poll_until(self.wl)


class TestLines(Base):
    def test_partial_lines(self) -> None:
        self.assertIsNotNone(self.wl.wait(5))
        conn = self.server.next_hello()
        line = json.dumps({"type": "config", "revision": 2, "values": {"lr": 0.5}, "changed": ["lr"]}).encode() + b"\n"
        for i in range(len(line)):
            conn.send_raw(line[i : i + 1])
            if i < len(line) - 1:
                time.sleep(0.0005)
                self.assertIsNone(self.wl.poll())
        cfg = self.wl.wait(5)
        assert cfg is not None
        self.assertEqual(cfg["lr"], 0.5)

    def test_line_of_exactly_64_kib(self) -> None:
        self.assertIsNotNone(self.wl.wait(5))
        conn = self.server.next_hello()
        head = {"type": "config", "revision": 2, "values": {"blob": ""}, "changed": ["blob"]}
        pad = 65536 - len(json.dumps(head, separators=(",", ":")))
        head["values"] = {"blob": "x" * pad}
        line = json.dumps(head, separators=(",", ":")).encode()
        self.assertEqual(len(line), 65536)
        conn.send_raw(line[:40000])
        time.sleep(0.01)
        self.assertIsNone(self.wl.poll())
        conn.send_raw(line[40000:] + b"\n")
        cfg = self.wl.wait(5)
        assert cfg is not None
        self.assertEqual(len(cfg["blob"]), pad)

    def test_line_of_65537_bytes_raises(self) -> None:
        self.assertIsNotNone(self.wl.wait(5))
        conn = self.server.next_hello()
        head = {"type": "config", "revision": 2, "values": {"blob": ""}, "changed": ["blob"]}
        pad = 65537 - len(json.dumps(head, separators=(",", ":")))
        head["values"] = {"blob": "x" * pad}
        line = json.dumps(head, separators=(",", ":")).encode()
        self.assertEqual(len(line), 65537)
        conn.send_raw(line + b"\n")
        with self.assertRaises(WeaveletError) as caught:
            poll_until(self.wl)
        self.assertIn("65536", str(caught.exception))
        self.assertFalse(self.wl.connected)

    def test_line_over_64_kib_raises(self) -> None:
        self.assertIsNotNone(self.wl.wait(5))
        conn = self.server.next_hello()
        conn.send_raw(b'{"type":"config","values":{"x":"' + b"y" * 65536 + b'"}}\n')
        with self.assertRaises(WeaveletError) as caught:
            poll_until(self.wl)
        self.assertIn("65536", str(caught.exception))

    def test_outgoing_line_over_64_kib_is_refused(self) -> None:
        cfg = self.wl.wait(5)
        assert cfg is not None
        # A reason is cut to 1024 bytes, so only a status can grow this big.
        with self.assertRaises(ValueError):
            self.wl.status(1, **{"m" * 70000: 1.0})


class TestReconnect(Base):
    def test_reconnect_after_server_restart_takes_new_document(self) -> None:
        cfg = self.wl.wait(5)
        assert cfg is not None
        self.wl.applied(cfg, 10)
        self.server.next_of("applied")
        self.server.stop()
        # weaver is gone: poll neither blocks nor raises.
        for _ in range(100):
            self.assertIsNone(self.wl.poll())
        self.server = FakeWeaver(self.path, values={"lr": 0.05, "optimizer": "sgd"}, revision=2).start()
        cfg = self.wl.wait(5)
        assert cfg is not None
        self.assertEqual(cfg.revision, 2)
        self.assertEqual(cfg["lr"], 0.05)
        self.assertEqual(cfg.changed, frozenset({"lr"}))
        self.assertEqual(self.server.next_message()["type"], "hello")

    def test_same_document_after_restart_is_acknowledged_again_not_redelivered(self) -> None:
        cfg = self.wl.wait(5)
        assert cfg is not None
        self.wl.applied(cfg, 10)
        self.server.next_of("applied")
        self.server.stop()
        self.assertIsNone(self.wl.poll())
        self.server = FakeWeaver(self.path, values={"lr": 0.1, "optimizer": "sgd"}, revision=1).start()
        self.assertIsNone(self.wl.wait(0.5))
        self.assertEqual(self.server.next_of("applied"), {"type": "applied", "revision": 1, "step": 10})

    def test_missing_weaver_never_raises(self) -> None:
        self.server.stop()
        wl = Weavelet("trainer", socket_path=os.path.join(self.dir, "nothing.sock"))
        start = time.monotonic()
        for _ in range(1000):
            self.assertIsNone(wl.poll())
        self.assertIsNone(wl.wait(0.05))
        self.assertLess(time.monotonic() - start, 2)
        wl.status(1, loss=1.0)
        wl.applied(3, 1)
        self.assertFalse(wl.connected)


class TestPollCost(Base):
    def test_poll_when_nothing_changed_is_cheap(self) -> None:
        self.assertIsNotNone(self.wl.wait(5))
        n = 20000
        start = time.perf_counter()
        for _ in range(n):
            self.wl.poll()
        per_call = (time.perf_counter() - start) / n
        print("\n  poll() with nothing changed: %.2f us per call over %d calls" % (per_call * 1e6, n), file=sys.stderr)
        # The goal is 5 us; a loaded CI machine gets a generous margin here
        # (python/bench_poll.py measures it properly).
        self.assertLess(per_call, 50e-6)


class TestFindSocket(unittest.TestCase):
    def test_rules(self) -> None:
        saved = {k: os.environ.get(k) for k in ("WEAVER_WEAVELET_SOCKET", "WEAVER_RUNTIME_DIR", "XDG_RUNTIME_DIR")}
        try:
            for k in saved:
                os.environ.pop(k, None)
            self.assertEqual(weavelet.find_socket(), "/tmp/weaver-%d/weavelet.sock" % os.getuid())
            os.environ["XDG_RUNTIME_DIR"] = "/run/user/7"
            self.assertEqual(weavelet.find_socket(), "/run/user/7/weaver/weavelet.sock")
            os.environ["WEAVER_RUNTIME_DIR"] = "/rt"
            self.assertEqual(weavelet.find_socket(), "/rt/weavelet.sock")
            os.environ["WEAVER_WEAVELET_SOCKET"] = "/x/w.sock"
            self.assertEqual(weavelet.find_socket(), "/x/w.sock")
            self.assertEqual(weavelet.find_socket("/mine"), "/mine/weavelet.sock")
            # Under weaver the target may be left out.
            self.assertIsNone(Weavelet().target)
            os.environ.pop("WEAVER_WEAVELET_SOCKET")
            with self.assertRaises(ValueError):
                Weavelet()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


class TestHelloWithoutTarget(unittest.TestCase):
    def test_supervised_hello_has_no_target(self) -> None:
        d = tempfile.mkdtemp(prefix="wl-")
        path = os.path.join(d, "weavelet.sock")
        server = FakeWeaver(path).start()
        old = os.environ.get("WEAVER_WEAVELET_SOCKET")
        os.environ["WEAVER_WEAVELET_SOCKET"] = path
        try:
            wl = Weavelet()
            self.assertIsNotNone(wl.wait(5))
            self.assertEqual(server.next_message(), {"type": "hello", "protocol": 1})
            wl.close()
        finally:
            if old is None:
                os.environ.pop("WEAVER_WEAVELET_SOCKET", None)
            else:
                os.environ["WEAVER_WEAVELET_SOCKET"] = old
            server.stop()
            shutil.rmtree(d, ignore_errors=True)


class TestSlowReader(unittest.TestCase):
    def test_wait_returns_none_on_timeout(self) -> None:
        d = tempfile.mkdtemp(prefix="wl-")
        path = os.path.join(d, "weavelet.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)  # accepts (in the kernel) but never answers
        try:
            wl = Weavelet("trainer", socket_path=path)
            start = time.monotonic()
            self.assertIsNone(wl.wait(0.2))
            self.assertGreaterEqual(time.monotonic() - start, 0.19)
            self.assertTrue(wl.connected)
            wl.close()
        finally:
            listener.close()
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()

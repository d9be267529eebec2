#!/usr/bin/env python3
"""The cost of ``Weavelet.poll()`` when nothing changed (goal: under 5 us),
against baselines measured in the same run on the same machine:

- ``recv``: a bare non-blocking ``socket.recv`` that raises BlockingIOError;
- ``poll0``: ``select.poll().poll(0)`` on an idle socket (the syscall floor);
- ``empty``: an empty method call.

It starts its own fake weaver (``tests/fakeweaver.py``) in a thread. Each
figure is the best of several rounds. ``WEAVER_BENCH_QUICK=1``: fewer calls.
The last line is machine-readable, for ``benches/weavelet_poll.rs``:

    RESULT calls=N poll_ns=.. recv_ns=.. poll0_ns=.. empty_ns=..
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import sys
import tempfile
import time
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "tests"))

from fakeweaver import FakeWeaver  # noqa: E402

from weavelet import Weavelet  # noqa: E402


def per_call_ns(fn: Callable[[], object], calls: int, rounds: int) -> float:
    """The best per-call time of ``fn`` over ``rounds`` rounds of ``calls``."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e9


def main() -> int:
    quick = os.environ.get("WEAVER_BENCH_QUICK") == "1"
    calls = 100_000 if quick else 1_000_000
    rounds = 3 if quick else 5

    tmp = tempfile.mkdtemp(prefix="wl-bench-")
    path = os.path.join(tmp, "weavelet.sock")
    server = FakeWeaver(path, values={"lr": 0.1}).start()
    try:
        wl = Weavelet("trainer", socket_path=path)
        if wl.wait(5) is None:
            print("no document from the fake weaver", file=sys.stderr)
            return 1
        poll_ns = per_call_ns(wl.poll, calls, rounds)
        if wl.poll() is not None or not wl.connected:
            print("poll() saw a change during the bench", file=sys.stderr)
            return 1

        a, b = socket.socketpair()
        a.setblocking(False)

        def bare_recv() -> None:
            try:
                a.recv(4096)
            except BlockingIOError:
                pass

        poller = select.poll()
        poller.register(a.fileno(), select.POLLIN)

        def poll0() -> None:
            poller.poll(0)

        class Empty:
            def call(self) -> None:
                return None

        recv_ns = per_call_ns(bare_recv, calls, rounds)
        poll0_ns = per_call_ns(poll0, calls, rounds)
        empty_ns = per_call_ns(Empty().call, calls, rounds)
        a.close()
        b.close()
        wl.close()
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print("Weavelet.poll() with nothing changed: %.0f ns per call (%d calls, best of %d)" % (poll_ns, calls, rounds))
    print("  baseline non-blocking recv raising BlockingIOError: %.0f ns (poll() is %.2fx)" % (recv_ns, poll_ns / recv_ns))
    print("  baseline select.poll().poll(0): %.0f ns (poll() is %.2fx)" % (poll0_ns, poll_ns / poll0_ns))
    print("  baseline empty method call: %.0f ns (poll() is %.1fx)" % (empty_ns, poll_ns / empty_ns))
    print("  goal: under 5000 ns: %s" % ("met" if poll_ns < 5000 else "NOT MET"))
    print("RESULT calls=%d poll_ns=%.1f recv_ns=%.1f poll0_ns=%.1f empty_ns=%.1f" % (calls, poll_ns, recv_ns, poll0_ns, empty_ns))
    return 0


if __name__ == "__main__":
    sys.exit(main())

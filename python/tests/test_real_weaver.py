"""Integration tests against a real weaver.

They run when ``WEAVER_BIN`` names the weaver binary and that weaver has the
``config`` command (``weaver config --help`` exits 0); otherwise they are
skipped with the reason printed. Each test runs its own daemon with a private
runtime dir, state dir and weaver.toml, and stops it with ``weaver shutdown``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.dirname(HERE)
REPO = os.path.dirname(PYTHON_DIR)
sys.path.insert(0, PYTHON_DIR)

from weavelet import Weavelet  # noqa: E402

WEAVER = os.environ.get("WEAVER_BIN", "")


def _why_skip() -> str:
    if not WEAVER:
        return "WEAVER_BIN is not set (cargo test --test python sets it)"
    if not os.access(WEAVER, os.X_OK):
        return "WEAVER_BIN=%s is not an executable" % WEAVER
    try:
        probe = subprocess.run(
            [WEAVER, "config", "--help"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "%s config --help failed: %s" % (WEAVER, exc)
    if probe.returncode != 0:
        return "this weaver has no config command (weaver config --help exited %d)" % probe.returncode
    return ""


SKIP = _why_skip()
if SKIP:
    print("SKIP test_real_weaver: %s" % SKIP, file=sys.stderr)


@unittest.skipIf(bool(SKIP), SKIP)
class RealWeaver(unittest.TestCase):
    toml = ""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="wl-real-")
        self.rt = os.path.join(self.dir, "rt")
        self.state = os.path.join(self.dir, "state")
        os.mkdir(self.rt, 0o700)
        os.mkdir(self.state, 0o700)
        self.config = os.path.join(self.dir, "weaver.toml")
        with open(self.config, "w") as f:
            f.write(self.toml)
        self.env = dict(os.environ)
        self.env.update(
            {
                "WEAVER_RUNTIME_DIR": self.rt,
                "WEAVER_STATE_DIR": self.state,
                "WEAVER_CONFIG": self.config,
                "WEAVER_LOG": "warn",
                "PYTHONPATH": PYTHON_DIR + os.pathsep + self.env.get("PYTHONPATH", ""),
            }
        )
        self.env.pop("WEAVER_WEAVELET_SOCKET", None)
        self.started = False
        # A cleanup, not tearDown: it runs even when starting weaver failed.
        self.addCleanup(self._cleanup)
        self.start_weaver()

    def _cleanup(self) -> None:
        try:
            self.weaver("shutdown", check=False)
        except subprocess.TimeoutExpired:
            pass
        self._kill_leftovers()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """Any daemon of this test's runtime dir still alive is killed."""
        pid_file = os.path.join(self.rt, "weaver.pid")
        try:
            with open(pid_file) as f:
                pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                if (b"WEAVER_RUNTIME_DIR=" + self.rt.encode()) not in f.read().split(b"\0"):
                    return
            os.kill(pid, 9)
        except (OSError, ProcessLookupError):
            pass

    def weaver(self, *args: str, check: bool = True, timeout: float = 60, start: bool = False) -> subprocess.CompletedProcess:
        argv = [WEAVER] + ([] if start else ["--no-start"]) + list(args)
        res = subprocess.run(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=timeout,
            text=True,
        )
        if check and res.returncode != 0:
            self.fail("%s exited %d:\n%s%s" % (" ".join(argv), res.returncode, res.stdout, res.stderr))
        return res

    def start_weaver(self) -> None:
        self.weaver("status", "--wait", start=True)
        self.started = True

    def stop_weaver(self) -> None:
        self.weaver("shutdown")
        self.started = False


class TestReconnect(RealWeaver):
    toml = """
[[process]]
name = "trainer"
command = ["sleep", "600"]
start_duration = "0s"

[process.params]
lr = 0.1
"""

    def test_reconnect_after_weaver_restart(self) -> None:
        wl = Weavelet("trainer", runtime_dir=self.rt, name="test", backoff_initial=0.05, backoff_max=0.2)
        try:
            first = wl.wait(10)
            assert first is not None, "no first document from weaver"
            self.assertEqual(first["lr"], 0.1)
            self.assertIsNotNone(wl.welcome)
            wl.applied(first, 0)

            self.weaver("config", "set", "trainer", "lr=0.02")
            second = wl.wait(10)
            assert second is not None, "no document after config set"
            self.assertEqual(second["lr"], 0.02)
            self.assertGreater(second.revision, first.revision)
            wl.applied(second, 1)

            self.stop_weaver()
            for _ in range(50):
                self.assertIsNone(wl.poll())  # weaver is gone: no exception, no block
                time.sleep(0.002)
            self.start_weaver()

            # After the restart the weavelet connects again by itself; the
            # same document is acknowledged again and not handed back.
            deadline = time.monotonic() + 10
            while not wl.connected or wl.welcome is None:
                again = wl.poll()
                if again is not None:
                    self.assertGreater(again.revision, second.revision, "revisions survive a weaver restart")
                    wl.applied(again, 2)
                self.assertLess(time.monotonic(), deadline, "no reconnect within 10 s")
                time.sleep(0.01)

            self.weaver("config", "set", "trainer", "lr=0.03")
            deadline = time.monotonic() + 10
            third = None
            while third is None or third["lr"] != 0.03:
                remaining = deadline - time.monotonic()
                self.assertGreater(remaining, 0, "no lr=0.03 after the restart")
                third = wl.wait(remaining) or third
            self.assertIn("lr", third.changed)
            self.assertGreater(third.revision, second.revision, "revisions survive a weaver restart")
            wl.applied(third, 3)
        finally:
            wl.close()


class TestSupervisedLoop(RealWeaver):
    @property  # type: ignore[override]
    def toml(self) -> str:  # noqa: D401
        train = os.path.join(REPO, "examples", "plain", "train.py")
        return """
[[process]]
name = "trainer"
command = [%r, "-u", %r, "--step-seconds", "0.01"]
work_dir = %r
start_duration = "0s"
env = { PYTHONPATH = %r }

[process.params]
lr = 0.1
""" % (sys.executable, train, os.path.dirname(train), PYTHON_DIR)

    def logs(self) -> str:
        return self.weaver("logs", "trainer", "-n", "1000").stdout

    def wait_for_log(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            out = self.logs()
            if text in out:
                return out
            time.sleep(0.1)
        self.fail("%r not in the trainer's output within %gs:\n%s" % (text, timeout, out[-4000:]))

    def test_lr_changes_live(self) -> None:
        self.wait_for_log("applied revision")
        self.assertIn("lr=0.1", self.logs())
        res = self.weaver("config", "set", "trainer", "lr=0.01", "--wait", timeout=60)
        self.assertEqual(res.returncode, 0)
        out = self.wait_for_log("lr=0.01")
        self.assertRegex(out, r"applied revision \d+: lr=0.01")
        # A bad value is rejected by the loop, which goes on with lr=0.01.
        self.weaver("config", "set", "trainer", "lr=5", "--wait", check=False, timeout=60)
        self.wait_for_log("rejected revision")


if __name__ == "__main__":
    unittest.main()

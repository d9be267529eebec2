#!/usr/bin/env python3
"""A training loop in plain Python (no torch) that takes its learning rate
from weaver while it runs.

It fits y = 3x + 1 by gradient descent, one step every --step-seconds, for
ever (or --steps steps). Run it under weaver (see README.md), then:

    weaver config set trainer lr=0.01 --wait
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

try:
    import weavelet
except ImportError:  # running from the source tree without pip install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
    import weavelet


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: never)")
    ap.add_argument("--step-seconds", type=float, default=0.05)
    ap.add_argument("--target", default=None, help="weaver target when not supervised by weaver")
    args = ap.parse_args()

    lr = 0.1
    w, b = 0.0, 0.0
    rng = random.Random(0)
    wl = weavelet.Weavelet(args.target)
    step = 0
    while args.steps == 0 or step < args.steps:
        cfg = wl.poll()
        if cfg is not None:
            new_lr = cfg.get("lr", lr)
            unknown = sorted(k for k in cfg.changed if k != "lr" and k in cfg)
            if isinstance(new_lr, bool) or not isinstance(new_lr, (int, float)) or not 0 < new_lr < 1:
                wl.rejected(cfg, step, "lr must be a number in (0, 1), not %r" % (new_lr,))
                print("step %d: rejected revision %d: lr=%r" % (step, cfg.revision, new_lr), flush=True)
            elif unknown:
                wl.rejected(cfg, step, "unknown parameters: %s" % ", ".join(unknown))
                print("step %d: rejected revision %d: %s" % (step, cfg.revision, unknown), flush=True)
            else:
                lr = float(new_lr)
                wl.applied(cfg, step)
                print("step %d: applied revision %d: lr=%g" % (step, cfg.revision, lr), flush=True)

        x = rng.uniform(-1, 1)
        err = (w * x + b) - (3 * x + 1)
        w -= lr * err * x
        b -= lr * err
        loss = err * err
        wl.status(step, loss=loss, lr=lr)
        if step % 100 == 0:
            print("step %d: lr=%g loss=%.6f w=%.3f b=%.3f" % (step, lr, loss, w, b), flush=True)
        step += 1
        time.sleep(args.step_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""weavelet: live configuration from weaver for training loops.

    from weavelet import Weavelet

    wl = Weavelet()                      # under weaver: finds its socket in the environment
    for step in range(steps):
        cfg = wl.poll()                  # non-blocking; the newest document or None
        if cfg is not None:
            if cfg.get("lr", lr) > 0:
                lr = cfg.get("lr", lr)
                wl.applied(cfg, step)
            else:
                wl.rejected(cfg, step, "lr must be > 0")
        ...
        wl.status(step, loss=loss)

The protocol is ``docs/weavelet-protocol.md`` in the weaver repository.
``weavelet.lightning.WeaveletCallback`` applies documents in a Lightning
``Trainer`` (and imports Lightning only when that module is imported).
"""

from .client import MAX_LINE, PROTOCOL, Config, Weavelet, WeaveletError, find_socket

__all__ = ["Config", "MAX_LINE", "PROTOCOL", "Weavelet", "WeaveletError", "find_socket"]
__version__ = "0.1.0"

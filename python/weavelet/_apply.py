"""Applying a document to a Lightning trainer, without importing Lightning
(so that it can be tested with stand-ins); see :mod:`weavelet.lightning`."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from .client import Config

Handler = Callable[[Any, Any, Any], None]


class Rejected(Exception):
    """The reason a document was not applied."""


def apply_document(
    cfg: Config,
    trainer: Any,
    module: Any,
    handlers: Dict[str, Handler],
    strict: bool = True,
) -> None:
    """Apply the changed keys of ``cfg`` to ``trainer`` and ``module``.

    Raises an exception whose message is the reason to reject the document.
    Kept free of Lightning imports so that it can be tested with stand-ins.
    """
    rebuild = False
    lr_value: Optional[float] = None
    hparams = getattr(module, "hparams", None)
    updates: Dict[str, Any] = {}
    for key in sorted(cfg.changed):
        if key not in cfg:
            continue  # removed from the document: keep what is in effect
        value = cfg[key]
        if key in handlers:
            continue
        if key == "lr":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise Rejected("lr must be a positive number, not %r" % (value,))
            lr_value = float(value)
            if hparams is not None and "lr" in hparams:
                updates[key] = value
        elif key == "optimizer" or (hparams is not None and key in hparams):
            updates[key] = value
            rebuild = True
        elif strict:
            raise Rejected("no handler for %r" % key)
    for key in sorted(cfg.changed):
        if key in handlers and key in cfg:
            handlers[key](cfg[key], trainer, module)
    if updates:
        if hparams is None:
            raise Rejected("the module has no hparams for %s" % ", ".join(sorted(updates)))
        for key, value in updates.items():
            hparams[key] = value
    if rebuild:
        trainer.strategy.setup_optimizers(trainer)
    if lr_value is not None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr_value

"""A Lightning callback that applies weaver's documents during ``fit``.

    from weavelet.lightning import WeaveletCallback

    trainer = Trainer(callbacks=[WeaveletCallback(handlers={"dropout": set_dropout})])

Importing this module imports Lightning (``lightning`` or, failing that,
``pytorch_lightning``; whichever the program already imported wins);
``import weavelet`` alone never does.

What a document's changed keys do, in this order:

- a key with a handler in ``handlers``: ``handler(value, trainer, module)``;
- ``lr``: every parameter group of every optimizer gets it (a learning-rate
  scheduler that sets ``lr`` itself will overwrite it at its next step);
- ``optimizer``, and any other key present in ``module.hparams``: written to
  ``hparams``, then ``trainer.strategy.setup_optimizers(trainer)`` builds the
  optimizers again through ``configure_optimizers`` (optimizer state such
  as momentum starts afresh);
- any other key: the document is rejected (``strict=True``, the default) or
  the key is ignored.

A handler that raises, or an ``lr`` that is not a positive number, rejects
the document with the message as the reason; the loop goes on with what it
had. With several processes (DDP), rank 0 alone talks to weaver: it polls
every ``every_n_steps`` optimizer steps and broadcasts what it got, so every
rank applies the same document at the same step.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional

from ._apply import Handler, apply_document
from .client import Config, Weavelet


def _lightning() -> Any:
    """The Lightning package in use: ``lightning.pytorch`` or
    ``pytorch_lightning``."""
    if "pytorch_lightning" in sys.modules and "lightning" not in sys.modules:
        import pytorch_lightning as pl  # type: ignore[import-not-found]

        return pl
    try:
        import lightning.pytorch as pl  # type: ignore[import-not-found]
    except ImportError:
        import pytorch_lightning as pl  # type: ignore[no-redef,unused-ignore]
    return pl


#: The Lightning package in use (``lightning.pytorch`` or ``pytorch_lightning``).
pl = _lightning()

class WeaveletCallback(pl.Callback):  # type: ignore[misc,name-defined]
    """Applies weaver's documents to a running ``Trainer.fit``.

    ``target``, ``runtime_dir``, ``socket_path`` and ``name`` are passed to
    :class:`weavelet.Weavelet` (or give a ``weavelet`` of your own). The first
    document is applied before the first step; later ones at the start of a
    training batch, every step in a single process and every
    ``every_n_steps`` optimizer steps with several. ``status_every_n_steps``
    steps, rank 0 reports the step and the trainer's scalar callback metrics.
    """

    def __init__(
        self,
        target: Optional[str] = None,
        *,
        handlers: Optional[Dict[str, Handler]] = None,
        every_n_steps: int = 10,
        status_every_n_steps: int = 50,
        strict: bool = True,
        runtime_dir: Optional[str] = None,
        socket_path: Optional[str] = None,
        name: Optional[str] = None,
        weavelet: Optional[Weavelet] = None,
        first_wait: float = 0.0,
    ) -> None:
        super().__init__()
        self.handlers: Dict[str, Handler] = dict(handlers or {})
        self.every_n_steps = max(1, int(every_n_steps))
        self.status_every_n_steps = max(1, int(status_every_n_steps))
        self.strict = strict
        self.first_wait = first_wait
        self._target = target
        self._runtime_dir = runtime_dir
        self._socket_path = socket_path
        self._name = name
        self.weavelet: Optional[Weavelet] = weavelet
        self._checked_step = -1

    # -- hooks --------------------------------------------------------------

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.global_rank == 0 and self.weavelet is None:
            self.weavelet = Weavelet(
                self._target,
                runtime_dir=self._runtime_dir,
                socket_path=self._socket_path,
                name=self._name or "rank0",
            )
        self._exchange(trainer, pl_module, wait=self.first_wait)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if step == self._checked_step:
            return  # gradient accumulation: one check per optimizer step
        self._checked_step = step
        if trainer.world_size > 1 and step % self.every_n_steps != 0:
            return
        self._exchange(trainer, pl_module)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        wl = self.weavelet
        step = int(trainer.global_step)
        if wl is None or trainer.global_rank != 0 or step % self.status_every_n_steps != 0:
            return
        metrics: Dict[str, float] = {}
        for key, value in trainer.callback_metrics.items():
            try:
                if getattr(value, "numel", lambda: 1)() != 1:
                    continue
                metrics[key] = float(value)
            except (TypeError, ValueError):
                continue
            if len(metrics) == 16:
                break
        wl.status(step, **metrics)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.weavelet is not None:
            self.weavelet.close()

    # -- work ---------------------------------------------------------------

    def _exchange(self, trainer: Any, pl_module: Any, wait: float = 0.0) -> None:
        cfg: Optional[Config] = None
        wl = self.weavelet
        if trainer.global_rank == 0 and wl is not None:
            cfg = wl.wait(wait) if wait > 0 else wl.poll()
        if trainer.world_size > 1:
            plain = None if cfg is None else (cfg.revision, cfg.as_dict(), sorted(cfg.changed), cfg.target)
            plain = trainer.strategy.broadcast(plain, src=0)
            cfg = None if plain is None else Config(plain[0], plain[1], frozenset(plain[2]), plain[3])
        if cfg is None:
            return
        step = int(trainer.global_step)
        try:
            apply_document(cfg, trainer, pl_module, self.handlers, self.strict)
        except Exception as exc:  # the reason goes to weaver; training goes on
            if wl is not None:
                wl.rejected(cfg, step, str(exc) or type(exc).__name__)
            return
        if wl is not None:
            wl.applied(cfg, step)

"""weavelet.lightning: the document-applying rules with stand-ins (always),
and a real Lightning ``fit`` against the fake weaver (where ``torch`` and
``lightning`` or ``pytorch_lightning`` import)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
import unittest
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fakeweaver import FakeWeaver  # noqa: E402

from weavelet import Config  # noqa: E402
from weavelet._apply import apply_document  # noqa: E402


class StubOptimizer:
    def __init__(self, kind: str, lr: float) -> None:
        self.kind = kind
        self.param_groups: List[Dict[str, Any]] = [{"lr": lr}, {"lr": lr}]


class StubStrategy:
    def __init__(self, trainer: "StubTrainer") -> None:
        self.trainer = trainer
        self.setups = 0

    def setup_optimizers(self, trainer: "StubTrainer") -> None:
        self.setups += 1
        hp = trainer.module.hparams
        trainer.optimizers = [StubOptimizer(hp["optimizer"], hp["lr"])]


class StubModule:
    def __init__(self) -> None:
        self.hparams: Dict[str, Any] = {"lr": 0.1, "optimizer": "sgd", "momentum": 0.9}


class StubTrainer:
    def __init__(self) -> None:
        self.module = StubModule()
        self.strategy = StubStrategy(self)
        self.optimizers = [StubOptimizer("sgd", 0.1)]


def doc(values: Dict[str, Any], changed: Any) -> Config:
    return Config(2, values, frozenset(changed))


class TestApplyDocument(unittest.TestCase):
    def test_lr_goes_to_every_param_group_without_rebuilding(self) -> None:
        t = StubTrainer()
        apply_document(doc({"lr": 0.01}, ["lr"]), t, t.module, {})
        self.assertEqual([g["lr"] for g in t.optimizers[0].param_groups], [0.01, 0.01])
        self.assertEqual(t.module.hparams["lr"], 0.01)
        self.assertEqual(t.strategy.setups, 0)

    def test_optimizer_and_hparams_rebuild_through_the_strategy(self) -> None:
        t = StubTrainer()
        apply_document(doc({"lr": 0.02, "optimizer": "adam"}, ["lr", "optimizer"]), t, t.module, {})
        self.assertEqual(t.strategy.setups, 1)
        self.assertEqual(t.optimizers[0].kind, "adam")
        self.assertEqual(t.optimizers[0].param_groups[0]["lr"], 0.02)
        apply_document(doc({"momentum": 0.5}, ["momentum"]), t, t.module, {})
        self.assertEqual(t.strategy.setups, 2)
        self.assertEqual(t.module.hparams["momentum"], 0.5)

    def test_handlers_and_unknown_keys(self) -> None:
        t = StubTrainer()
        seen: List[Any] = []
        apply_document(doc({"dropout": 0.2}, ["dropout"]), t, t.module, {"dropout": lambda v, tr, m: seen.append(v)})
        self.assertEqual(seen, [0.2])
        with self.assertRaisesRegex(Exception, "no handler for 'dropout'"):
            apply_document(doc({"dropout": 0.2}, ["dropout"]), t, t.module, {})
        apply_document(doc({"dropout": 0.2}, ["dropout"]), t, t.module, {}, strict=False)

    def test_bad_lr_is_rejected_before_anything_changes(self) -> None:
        t = StubTrainer()
        for bad in (-1, 0, "fast", True):
            with self.assertRaisesRegex(Exception, "lr must be a positive number"):
                apply_document(doc({"lr": bad, "optimizer": "adam"}, ["lr", "optimizer"]), t, t.module, {})
        self.assertEqual(t.strategy.setups, 0)
        self.assertEqual(t.module.hparams["optimizer"], "sgd")

    def test_removed_keys_are_left_alone(self) -> None:
        t = StubTrainer()
        apply_document(doc({}, ["lr"]), t, t.module, {})
        self.assertEqual(t.optimizers[0].param_groups[0]["lr"], 0.1)


class StubCallback:
    """Stands in for Lightning's Callback base class."""


class FakeBroadcast:
    """What rank 0 broadcast last; the other ranks' broadcast returns it
    (the ranks run one after the other in the test)."""

    def __init__(self) -> None:
        self.value: Any = None


class HookTrainer(StubTrainer):
    def __init__(self, rank: int = 0, world: int = 1, shared: "Any" = None) -> None:
        super().__init__()
        self.global_rank = rank
        self.world_size = world
        self.global_step = 0
        self.callback_metrics: Dict[str, Any] = {"loss": 0.5, "name": "x"}
        self.shared = shared
        strategy = self.strategy

        def broadcast(obj: Any, src: int = 0) -> Any:
            if rank == 0:
                shared.value = obj
                return obj
            return shared.value

        strategy.broadcast = broadcast  # type: ignore[attr-defined]


class TestCallbackWithStandIns(unittest.TestCase):
    """WeaveletCallback's hooks, with a stand-in Lightning module."""

    def setUp(self) -> None:
        import types

        self.saved = {k: sys.modules.get(k) for k in ("pytorch_lightning", "lightning", "weavelet.lightning")}
        fake = types.ModuleType("pytorch_lightning")
        fake.Callback = StubCallback  # type: ignore[attr-defined]
        sys.modules["pytorch_lightning"] = fake
        sys.modules.pop("lightning", None)
        sys.modules.pop("weavelet.lightning", None)
        import weavelet.lightning as wll

        self.wll = wll
        self.dir = tempfile.mkdtemp(prefix="wl-cb-")
        self.path = os.path.join(self.dir, "weavelet.sock")
        self.server = FakeWeaver(self.path, values={"lr": 0.5}).start()

    def tearDown(self) -> None:
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        for k, v in self.saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v

    def test_uses_the_lightning_already_imported(self) -> None:
        self.assertIs(self.wll.pl, sys.modules["pytorch_lightning"])
        self.assertTrue(issubclass(self.wll.WeaveletCallback, StubCallback))

    def test_single_process(self) -> None:
        cb = self.wll.WeaveletCallback("trainer", socket_path=self.path, first_wait=5.0, status_every_n_steps=1)
        t = HookTrainer()
        cb.on_fit_start(t, t.module)
        self.assertEqual(t.optimizers[0].param_groups[0]["lr"], 0.5)
        self.assertEqual(self.server.next_of("applied"), {"type": "applied", "revision": 1, "step": 0})
        rev = self.server.set(lr=0.25)
        deadline = time.monotonic() + 5
        while t.optimizers[0].param_groups[0]["lr"] != 0.25 and time.monotonic() < deadline:
            t.global_step += 1
            cb.on_train_batch_start(t, t.module, None, 0)
            time.sleep(0.005)
        self.assertEqual(t.optimizers[0].param_groups[0]["lr"], 0.25)
        self.assertEqual(self.server.next_of("applied")["revision"], rev)
        self.server.set(lr=-1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            t.global_step += 1
            cb.on_train_batch_start(t, t.module, None, 0)
            if cb.weavelet is not None and cb.weavelet.revision == rev + 1:
                break
            time.sleep(0.005)
        self.assertIn("lr must be a positive number", self.server.next_of("rejected")["reason"])
        self.assertEqual(t.optimizers[0].param_groups[0]["lr"], 0.25)
        cb.on_train_batch_end(t, t.module, None, None, 0)
        self.assertEqual(self.server.next_of("status")["metrics"], {"loss": 0.5})
        cb.on_fit_end(t, t.module)

    def test_ddp_rank0_polls_and_every_rank_applies_at_the_same_step(self) -> None:
        shared = FakeBroadcast()
        ranks = [HookTrainer(r, 2, shared) for r in (0, 1)]
        cbs = [self.wll.WeaveletCallback("trainer", socket_path=self.path, every_n_steps=4, first_wait=5.0) for _ in ranks]
        for cb, t in zip(cbs, ranks):
            cb.on_fit_start(t, t.module)
        self.assertIsNone(cbs[1].weavelet)
        self.assertEqual([t.optimizers[0].param_groups[0]["lr"] for t in ranks], [0.5, 0.5])
        self.server.set(lr=0.125)
        time.sleep(0.1)  # the document is in rank 0's socket
        applied_at = {}
        for step in range(1, 9):
            for cb, t in zip(cbs, ranks):
                t.global_step = step
                cb.on_train_batch_start(t, t.module, None, 0)
                if t.optimizers[0].param_groups[0]["lr"] == 0.125 and t.global_rank not in applied_at:
                    applied_at[t.global_rank] = step
        self.assertEqual(applied_at, {0: 4, 1: 4})
        self.assertEqual(self.server.next_of("applied"), {"type": "applied", "revision": 1, "step": 0})
        self.assertEqual(self.server.next_of("applied"), {"type": "applied", "revision": 2, "step": 4})


def _missing() -> str:
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install torch lightning)"
    if importlib.util.find_spec("lightning") is None and importlib.util.find_spec("pytorch_lightning") is None:
        return "neither lightning nor pytorch_lightning is installed (pip install lightning)"
    return ""


MISSING = _missing()
if MISSING:
    print("SKIP test_lightning.TestLightningFit: %s" % MISSING, file=sys.stderr)


@unittest.skipIf(bool(MISSING), MISSING)
class TestLightningFit(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="wl-pl-")
        self.path = os.path.join(self.dir, "weavelet.sock")

    def tearDown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _fit(self, values: Dict[str, Any], steps: int = 8) -> Any:
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        from weavelet.lightning import WeaveletCallback, pl

        class Tiny(pl.LightningModule):  # type: ignore[misc,name-defined]
            def __init__(self, lr: float = 0.1, optimizer: str = "sgd") -> None:
                super().__init__()
                self.save_hyperparameters()
                self.layer = torch.nn.Linear(4, 1)

            def training_step(self, batch: Any, batch_idx: int) -> Any:
                x, y = batch
                loss = torch.nn.functional.mse_loss(self.layer(x), y)
                self.log("loss", loss)
                return loss

            def configure_optimizers(self) -> Any:
                opt = torch.optim.Adam if self.hparams.optimizer == "adam" else torch.optim.SGD
                return opt(self.parameters(), lr=self.hparams.lr)

        server = FakeWeaver(self.path, values=values).start()
        try:
            data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
            callback = WeaveletCallback("trainer", socket_path=self.path, first_wait=5.0, status_every_n_steps=1)
            trainer = pl.Trainer(
                max_steps=steps,
                accelerator="cpu",
                devices=1,
                callbacks=[callback],
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            trainer.fit(Tiny(), DataLoader(data, batch_size=8))
            ack = server.next_of("applied")
            self.assertEqual(ack["revision"], 1)
            self.assertEqual(server.next_of("status")["type"], "status")
            return trainer
        finally:
            server.stop()

    def test_lr_from_weaver_reaches_the_optimizer(self) -> None:
        trainer = self._fit({"lr": 0.5})
        self.assertEqual(trainer.optimizers[0].param_groups[0]["lr"], 0.5)

    def test_optimizer_from_weaver_rebuilds_it(self) -> None:
        import torch

        trainer = self._fit({"lr": 0.01, "optimizer": "adam"})
        self.assertIsInstance(trainer.optimizers[0], torch.optim.Adam)
        self.assertEqual(trainer.optimizers[0].param_groups[0]["lr"], 0.01)


if __name__ == "__main__":
    unittest.main()

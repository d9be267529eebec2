#!/usr/bin/env python3
"""A tiny Lightning training run whose learning rate and optimizer weaver can
change while it runs (needs torch and lightning; CPU is enough).

    weaver config set trainer lr=0.01 --wait
    weaver config set trainer optimizer=adam --wait
"""

from __future__ import annotations

import os
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

try:
    from weavelet.lightning import WeaveletCallback, pl
except ImportError:  # running from the source tree without pip install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
    from weavelet.lightning import WeaveletCallback, pl


class Regression(pl.LightningModule):
    def __init__(self, lr: float = 0.1, optimizer: str = "sgd") -> None:
        super().__init__()
        self.save_hyperparameters()  # configure_optimizers reads lr and optimizer from hparams
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        if self.hparams.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def main() -> None:
    x = torch.randn(4096, 8)
    y = x @ torch.arange(1.0, 9.0).unsqueeze(1) + 0.1 * torch.randn(4096, 1)
    data = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    target = None if os.environ.get("WEAVER_WEAVELET_SOCKET") else "trainer"

    def clip(value, trainer, module):  # a handler for a key of our own
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError("gradient_clip_val must be a number >= 0")
        trainer.gradient_clip_val = value or None

    trainer = pl.Trainer(
        max_epochs=int(os.environ.get("EPOCHS", "1000")),
        accelerator="auto",
        devices=1,
        callbacks=[WeaveletCallback(target, handlers={"gradient_clip_val": clip})],
        logger=False,
        enable_checkpointing=False,
    )
    trainer.fit(Regression(), data)


if __name__ == "__main__":
    main()

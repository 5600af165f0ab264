"""A Lightning module on the repository's digits data, pruned by prune's LightningCallback
(2:4 masks on the first layer, PolynomialDecay on the second).

    python examples/python/lightning_digits.py --out /tmp/pl
"""

import argparse
import json
import os
import sys

import torch

try:
    import lightning.pytorch as pl
except ImportError:
    import pytorch_lightning as pl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prune  # noqa: E402
from common import digest, digits, mlp  # noqa: E402

PRUNING = {
    "schedule": {"kind": "polynomial_decay", "initial_sparsity": 0.3, "final_sparsity": 0.75, "begin_step": 10, "end_step": 60, "frequency": 10},
    "overrides": [{"match": r"^net\.0\.weight$", "m_by_n": [2, 4]}],
}


class Digits(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = mlp(hidden=64)

    def training_step(self, batch, _):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)  # the epoch's mean, for a tracked run
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--track", metavar="ADDR", help="a prune server that tracks the run")
    args = ap.parse_args()
    (x, y), (vx, vy) = digits()
    module = Digits()
    pruner = prune.Pruner(module, PRUNING)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    run = prune.Client(args.track).track(pruner, name="lightning-digits") if args.track else None
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator="cpu", logger=False, enable_progress_bar=False, log_every_n_steps=10,
        enable_model_summary=False, default_root_dir=args.out, callbacks=[prune.integrations.LightningCallback(pruner, run=run)],
    )
    trainer.fit(module, loader)
    job = run.finish() if run else None
    pruner.strip()
    with torch.no_grad():
        accuracy = (module.net(vx).argmax(1) == vy).float().mean().item()
    result = {"step": pruner.step_count, "global_step": trainer.global_step, "digest": digest(pruner.masks),
              "sparsity": pruner.sparsity(), "val_accuracy": accuracy, "run": job and job["id"]}
    print(json.dumps(result))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()

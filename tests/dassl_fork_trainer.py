"""A trainer module written the way upstream forks write them (CoOp's ``trainers/coop.py``): it
binds Dassl's functions by name at import, and ``train.py`` imports it before anything imports
``prompt_diffusion``. The bridge's fixes must reach these early bindings.

Also a script (needs real Dassl): ``python tests/dassl_fork_trainer.py RESULT.json DATA_ROOT
OUTPUT_DIR`` imports this module first, then the package, trains ``ForkProbe`` (the toy probe of
``test_engine.py``, with a warmup scheduler) for 2 epochs, reloads the last checkpoint through the
fork's own ``load_model`` and writes what ``test_engine_parity.py`` checks.
"""
import json
import os.path as osp
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import load_checkpoint


@TRAINER_REGISTRY.register()
class ForkProbe(TrainerX):
    """``test_engine.ToyLinearProbe`` written against Dassl's names only."""

    def build_model(self):
        self.model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, self.num_classes))
        self.model.to(self.device)
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("probe", self.model, self.optim, self.sched)
        self.history = []  # (epoch, batch, loss, lr)

    def forward_backward(self, batch):
        image, label = batch["img"].to(self.device), batch["label"].to(self.device)
        output = self.model(image)
        loss = F.cross_entropy(output, label)
        self.model_backward_and_update(loss)
        self.history.append((self.epoch, self.batch_idx, loss.item(), self.get_current_lr()))
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item(), "acc": compute_accuracy(output, label, topk=(1, 2))[0].item()}

    def load_model(self, directory, epoch=None):
        """CoOp's ``load_model``: the bound ``load_checkpoint``, then ``load_state_dict``."""
        for name in self.get_model_names():
            checkpoint = load_checkpoint(osp.join(directory, name, f"model.pth.tar-{epoch}"))
            self._models[name].load_state_dict(checkpoint["state_dict"])


def main(result_path: str, data_root: str, output_dir: str) -> None:
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
    from test_engine import build_toy  # imports prompt_diffusion.engine: after the bindings above

    from prompt_diffusion import engine

    trainer = build_toy(data_root, output_dir, **{"TRAINER.NAME": "ForkProbe"})
    trainer.train()
    trained = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with torch.no_grad():
        trainer.model[-1].weight.zero_()
    trainer.load_model(output_dir, epoch=2)
    result = {
        "engine": engine.ENGINE,
        "description": engine.engine_description(),
        "history": trainer.history,
        "accuracy": trainer.test(),
        "reloaded": all(torch.equal(trained[k], v) for k, v in trainer.model.state_dict().items()),
    }
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:4])

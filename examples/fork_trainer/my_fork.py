"""A trainer of your own fork, outside this package, with prompt diffusion added.

Your fork changes CoCoOp: its Meta-Net is wider (hidden width vis_dim // 4 instead of // 16). The
module registers the trainer as ``WideCoCoOp`` and its prompt-diffusion variant as ``WideCoCoOpPD``;
``prompt-diffusion train --import examples/fork_trainer/my_fork.py --trainer WideCoCoOpPD ...``
imports it and trains either (see train.sh next to this file).

The wrapper finds the prompts by the upstream attribute names (``prompt_learner.ctx``,
``prompt_learner.meta_net`` ...): a fork that keeps them needs no adapter of its own. The adapter
is chosen by the first class of the MRO it knows (``CoCoOp`` here); a layout it does not know
needs a ``PromptAdapter`` (examples/new_prompt_learner).
"""
from collections import OrderedDict

from torch import nn

from prompt_diffusion import DiffusionPromptWrapper
from prompt_diffusion.engine import TRAINER_REGISTRY
from prompt_diffusion.trainers.cocoop import CoCoOp


@TRAINER_REGISTRY.register()
class WideCoCoOp(CoCoOp):
    """CoCoOp whose Meta-Net has a hidden layer of vis_dim // 4 units (upstream: vis_dim // 16)."""

    def build_custom_clip(self, cfg, classnames, clip_model):
        model = super().build_custom_clip(cfg, classnames, clip_model)
        vis_dim, ctx_dim = clip_model.visual.output_dim, clip_model.ln_final.weight.shape[0]
        model.prompt_learner.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, vis_dim // 4)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(vis_dim // 4, ctx_dim)),
        ])).to(dtype=model.prompt_learner.ctx.dtype)
        return model  # the trainer builds the optimizer over the returned model's prompt learner


WideCoCoOpPD = DiffusionPromptWrapper.register(WideCoCoOp)  # registers "WideCoCoOpPD"

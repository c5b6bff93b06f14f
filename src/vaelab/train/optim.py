"""The optimizer: Adam or AdamW, with weight decay on the weights that have two or more dimensions.

Decaying a bias or a norm layer's scale and shift only pulls them towards 0 (a norm layer's
scale of 0 switches its channel off); they hold no capacity that decay would regularise. So
train.weight_decay applies to conv kernels and dense matrices (ndim >= 2) and not to biases,
norm parameters or the learned log-sigma (ndim < 2), as in most VAE and diffusion codebases.

Checkpoints from before this split hold one parameter group over all parameters; `load_optimizer`
maps their per-parameter state (Adam's moments) onto the two groups, so those runs resume.
"""

from __future__ import annotations

import torch
from torch import nn

from vaelab.config import Config


def decay_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict]:
    """The optimizer's parameter groups, in this order: one group without decay; else the decayed
    weights (ndim >= 2), then the rest with weight_decay 0. Empty groups are left out."""
    if not weight_decay:
        return [{"params": params, "weight_decay": 0.0}]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def make_optimizer(params: list[nn.Parameter], config: Config) -> torch.optim.Optimizer:
    t = config.train
    optimizer = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    # weight_decay=0.0 as the default: AdamW's own default (0.01) must never reach a group
    return optimizer(decay_groups(params, t.weight_decay), lr=t.lr, weight_decay=0.0)


def load_optimizer(optimizer: torch.optim.Optimizer, saved: dict, params: list[nn.Parameter]) -> None:
    """Load `saved` (an optimizer state_dict); a state saved with one group over `params` in their
    order (before the split by dimension) is mapped onto this optimizer's groups."""
    groups = optimizer.param_groups
    if len(saved["param_groups"]) == len(groups) or len(saved["param_groups"]) != 1:
        optimizer.load_state_dict(saved)  # the same layout (or an unknown one: torch's own error)
        return
    # state_dict numbers the parameters in group order; the old state numbered them in `params` order
    old_index = {id(p): i for i, p in enumerate(params)}
    new_order = [p for group in groups for p in group["params"]]
    state = {new: saved["state"][old_index[id(p)]] for new, p in enumerate(new_order)
             if old_index[id(p)] in saved["state"]}
    ours = optimizer.state_dict()["param_groups"]  # this config's hyperparameters and numbering
    optimizer.load_state_dict({"state": state, "param_groups": ours})

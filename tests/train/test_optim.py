"""The optimizer's parameter groups: weight decay on weights of two or more dimensions only."""

from __future__ import annotations

import torch
from test_trainer import tiny_trainer


def test_weight_decay_spares_biases_norms_and_log_sigma():
    trainer, _ = tiny_trainer("train.weight_decay=0.1", "model.norm=batch", "loss.reconstruction=gaussian",
                              "loss.sigma=learned")
    decayed = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    spared = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    named = dict(trainer.model.named_parameters())
    assert decayed == {id(p) for p in named.values() if p.ndim >= 2}
    assert spared == {id(p) for p in named.values() if p.ndim < 2} | {id(trainer.log_sigma)}
    assert any(".bias" in name for name, p in named.items() if id(p) in spared)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trainer.model.modules())  # norms exist to spare

    # With a zero gradient only the decay moves a parameter: the weights shrink, biases stay.
    before = {name: p.detach().clone() for name, p in named.items()}
    for p in trainer.params:
        p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    for name, p in named.items():
        assert torch.equal(p, before[name]) == (p.ndim < 2), name


def test_a_one_group_optimizer_state_from_before_the_split_resumes():
    """Checkpoints written before the split hold one group over all parameters in order."""
    trainer, batch = tiny_trainer("train.weight_decay=0.1", "train.optimizer=adamw")
    old = torch.optim.AdamW(trainer.params, lr=1e-3, weight_decay=0.1)
    for p in trainer.params:
        p.grad = torch.full_like(p, 0.5) * (1 + torch.arange(p.numel()).reshape(p.shape) % 3)
    old.step()
    state = trainer.state_dict()
    state["optimizer"] = old.state_dict()
    trainer.load_state_dict(state)
    assert len(trainer.optimizer.param_groups) == 2
    for p in trainer.params:  # each parameter got its own moments back
        assert torch.equal(trainer.optimizer.state[p]["exp_avg"], old.state[p]["exp_avg"])
    assert trainer.train_step(batch) is None

"""The roles a config key can play, named once. Each field of `vaelab.config.sections` declares its
role with `role(...)` (a section may set the default for all its fields); `vaelab.config.keys`
derives from them the key sets that compare, sweep, resume and evaluate use.

A key has one role:
    identity     what the run computes: two runs that differ here are different experiments (default)
    execution    how or where it runs (device, precision, memory format, compile, decoding workers,
                 caches): the same experiment, computed on other hardware or faster
    bookkeeping  what the run records and where (the whole `run` section)
    replicate    the seed: runs that differ only here are replicates of one experiment
    length       how long it trains (train.epochs): a resume may extend a run

and any number of marks:
    loss_unit    it changes what the loss sums, over which pixels or in which scale, so val_loss of
                 two runs that differ here is not in the same unit (compare val_psnr instead)
    model_input  it defines the images the model takes (size, fit, scale...): data given to a
                 trained model must follow the run's value
"""

from __future__ import annotations

from typing import Any

IDENTITY = "identity"
EXECUTION = "execution"
BOOKKEEPING = "bookkeeping"
REPLICATE = "replicate"
LENGTH = "length"
ROLES = (IDENTITY, EXECUTION, BOOKKEEPING, REPLICATE, LENGTH)

LOSS_UNIT = "loss_unit"
MODEL_INPUT = "model_input"
MARKS = (LOSS_UNIT, MODEL_INPUT)


def role(*names: str) -> dict[str, Any]:
    """`Field(..., json_schema_extra=role(EXECUTION))`: at most one role, any marks."""
    unknown = [n for n in names if n not in ROLES + MARKS]
    roles = [n for n in names if n in ROLES]
    if unknown or len(roles) > 1:
        raise ValueError(f"role({', '.join(names)}): one of {ROLES} and any of {MARKS}")
    declared: dict[str, Any] = {"marks": [n for n in names if n in MARKS]}
    if roles:
        declared["role"] = roles[0]
    return {"vaelab": declared}

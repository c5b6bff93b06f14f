"""`vaelab.config.keys`: each key's role is declared once, on the config fields, and compare, sweep,
resume and evaluate agree on the sets derived from it."""

from __future__ import annotations

import pytest

from vaelab.config import Config
from vaelab.config import keys as K
from vaelab.config.roles import role


def test_roles_as_declared_on_the_fields():
    assert K.keys_with("execution") == {"data.workers", "data.prefetch", "data.cache", "data.cache_dir",
                                        "train.device", "train.amp", "train.channels_last", "train.compile"}
    assert K.keys_with("replicate") == {"train.seed"} and K.keys_with("length") == {"train.epochs"}
    # the run section declares its role once; every key in it, present and future, has it
    assert {k for k in K.KEY_ROLES if k.startswith("run.")} == K.keys_with("bookkeeping")
    assert K.role_of("train.lr") == "identity" and K.role_of("model.kind") == "identity"


def test_every_key_of_every_model_family_has_a_role():
    flat = K.flatten(Config().to_dict())
    for kind in ("spatial", "vq"):
        flat.update(K.flatten(Config.model_validate({"model": {"kind": kind}}).to_dict()))
    assert all(K.known_key(key) for key in flat), [key for key in flat if not K.known_key(key)]
    assert K.role_of("model.z_channels") == K.role_of("model.codebook_size") == "identity"


def test_list_items_mappings_and_unknown_keys():
    assert K.role_of("model.conv.2.kernel") == "identity"
    assert K.role_of("run.remote_options.endpoint_url") == "bookkeeping"
    assert K.role_of("model.from_a_newer_vaelab") == "identity"  # unknown: counts, never silently ignored
    # a key is not mistaken for a longer one that starts with it
    assert K.role_of("train.lr_schedule") == "identity" and K.role_of("data.cache_dir") == "execution"


def test_loss_unit_and_model_input_marks():
    assert K.LOSS_UNIT_KEYS >= {"loss.reconstruction", "loss.sigma", "loss.beta", "data.size", "data.fit",
                                "data.bbox_crop", "data.pad_value", "data.scale"}
    assert not any(K.changes_loss_unit(k) for k in ("train.lr", "model.latent", "data.val_fraction"))
    assert K.MODEL_INPUT_KEYS == ("size", "fit", "bbox_crop", "pad_value", "scale")


def test_the_derived_sets():
    assert K.resume_may_change("train.epochs") and K.resume_may_change("train.amp")
    assert not K.resume_may_change("train.seed") and not K.resume_may_change("train.lr")
    assert K.not_an_experiment("train.seed") and K.not_an_experiment("train.device")
    assert not K.not_an_experiment("train.epochs")  # a variant may train longer: that is an experiment
    assert not K.identifying("train.epochs") and not K.identifying("train.compile") and K.identifying("loss.beta")
    assert K.described(K.RESUME_MAY_CHANGE).startswith("run.*, data.cache, ")


def test_a_field_takes_one_role():
    assert role("execution", "loss_unit") == {"vaelab": {"role": "execution", "marks": ["loss_unit"]}}
    with pytest.raises(ValueError):
        role("execution", "length")
    with pytest.raises(ValueError):
        role("experimental")

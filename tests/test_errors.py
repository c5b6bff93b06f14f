"""`vaelab.errors.did_you_mean`: the one hint for a mistyped name."""

from vaelab.errors import did_you_mean


def test_the_nearest_name_quoted_or_nothing():
    assert did_you_mean("lrr", ["lr", "epochs"], prefix="train.") == "did you mean 'train.lr'?"
    assert did_you_mean("zzz", ["lr", "epochs"]) == ""
    assert did_you_mean("rde", ["red", "reds", "blue"], n=2) == "did you mean 'red' or 'reds'?"
    assert did_you_mean("standng", ["standing", "sitting", "stand"], n=3) == \
        "did you mean 'standing', 'stand' or 'sitting'?"

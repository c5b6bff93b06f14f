import numpy as np
import pytest

from vaelab.config import FilterConfig
from vaelab.data.metadata import from_records
from vaelab.data.select import counts, select, split
from vaelab.errors import VaelabError


@pytest.fixture
def metadata(tmp_path):
    records = [
        {"file": "p1.jpg", "width": 480, "height": 640, "tags": ["standing", "red"], "source": "a"},
        {"file": "l1.jpg", "width": 640, "height": 480, "tags": ["sitting", "duo"], "source": "a"},
        {"file": "s1.jpg", "width": 500, "height": 500, "tags": ["standing", "duo"], "source": "b"},
        {"file": "p2.jpg", "width": 427, "height": 640, "tags": ["kneeling"], "source": "wm"},
        {"file": "u1.jpg", "tags": ["standing"]},  # size unknown
    ]
    return from_records(records, tmp_path)


def chosen(metadata, **rules):
    return [metadata.path(i) for i in select(metadata, FilterConfig(**rules))]


def test_orientation(metadata):
    assert chosen(metadata, orientation="portrait") == ["p1.jpg", "p2.jpg"]
    assert chosen(metadata, orientation="landscape") == ["l1.jpg"]
    assert chosen(metadata, orientation="square") == ["s1.jpg"]
    assert len(chosen(metadata, orientation="any")) == 5


def test_include_require_exclude_sources(metadata):
    assert chosen(metadata, include=["duo", "kneeling"]) == ["l1.jpg", "s1.jpg", "p2.jpg"]
    assert chosen(metadata, require=["standing", "duo"]) == ["s1.jpg"]
    assert chosen(metadata, exclude=["duo"]) == ["p1.jpg", "p2.jpg", "u1.jpg"]
    assert chosen(metadata, include=["standing"], exclude=["red"]) == ["s1.jpg", "u1.jpg"]
    assert chosen(metadata, exclude_sources=["wm", "b"]) == ["p1.jpg", "l1.jpg", "u1.jpg"]
    # excluding a tag nobody has is harmless
    assert len(chosen(metadata, exclude=["hat"])) == 5


def test_unknown_included_tag_suggests(metadata):
    with pytest.raises(VaelabError, match=r"data.filter.require: tag 'standng' does not occur.*did you mean 'standing'"):
        chosen(metadata, require=["standng"])


def test_contradiction_rejected():
    with pytest.raises(ValueError, match="both data.filter.include and data.filter.exclude"):
        FilterConfig(include=["duo"], exclude=["duo"])


def test_split_is_stable_when_images_are_added(tmp_path):
    def split_of(n):
        meta = from_records([{"file": f"set-{i % 7}/img-{i}.jpg"} for i in range(n)], tmp_path)
        train, val = split(meta, np.arange(n), 0.2)
        return {meta.path(i) for i in train}, {meta.path(i) for i in val}

    train_small, val_small = split_of(500)
    train_big, val_big = split_of(2000)
    assert train_small <= train_big and val_small <= val_big  # nobody moved
    assert 0.15 < len(val_big) / 2000 < 0.25
    assert split_of(500) == (train_small, val_small)  # deterministic


def test_counts(metadata):
    everything = counts(metadata, np.arange(5))
    assert everything["orientation"] == {"portrait": 2, "landscape": 1, "square": 1, "unknown": 1}
    assert everything["tags"]["standing"] == 3 and everything["tags"]["duo"] == 2
    assert everything["sources"] == {"a": 2, "b": 1, "wm": 1, "(none)": 1}
    some = counts(metadata, select(metadata, FilterConfig(include=["duo"])))
    assert some["images"] == 2 and some["tags"] == {"duo": 2, "sitting": 1, "standing": 1}

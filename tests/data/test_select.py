import numpy as np
import pytest

from vaelab.config import FilterConfig
from vaelab.data.metadata import from_records
from vaelab.data.select import counts, select, split, top_counts
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


def test_top_counts_show_the_top_ones_and_sum_the_rest():
    # 3,000 distinct sources printed 3,000 rows' worth of names; the table keeps 20 and one row for the rest.
    before = {f"source-{i}": 3000 - i for i in range(3000)}
    after = {"source-2999": 5, "source-0": 2}  # the filter keeps images of two sources: those lead
    rows = top_counts(before, after, 20, "sources")
    assert len(rows) == 21
    assert rows[:3] == [("source-2999", 1, 5), ("source-0", 3000, 2), ("source-1", 2999, 0)]
    assert rows[-1] == ("(2,980 more sources)", sum(before.values()) - sum(r[1] for r in rows[:20]), 0)
    assert sum(r[1] for r in rows) == sum(before.values()) and sum(r[2] for r in rows) == 7
    assert top_counts({"a": 2, "b": 1}, {"a": 2, "b": 1}, 20, "tags") == [("a", 2, 2), ("b", 1, 1)]
    assert len(top_counts({f"t{i}": 1 for i in range(21)}, {}, 20, "tags")) == 21  # no "1 more" row
    assert len(top_counts({f"t{i}": 1 for i in range(5)}, {}, None, "orientation")) == 5

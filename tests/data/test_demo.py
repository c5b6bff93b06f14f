"""The built-in figure set: complete, consistent with its metadata, deterministic, cached."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaelab.data.demo import POSES, TOPS, plan_sets, render_demo_set, render_image
from vaelab.errors import VaelabError

COUNT = 40


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = render_demo_set(out, count=COUNT, seed=0, workers=1)
    records = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    return out, summary, records


def jpegs(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.jpg")}


def test_metadata_lists_every_written_file(demo):
    out, summary, records = demo
    assert summary["images"] == COUNT and summary["cached"] is False
    assert len(records) == COUNT
    assert {r["file"] for r in records} == jpegs(out)
    for r in records:
        source, set_name, _ = r["file"].split("/")
        assert source == r["source"] and set_name == r["set"] and set_name.startswith("set-")
    assert summary["sets"] == len({r["set"] for r in records})
    assert summary["sources"] == len({r["source"] for r in records}) == 5


def test_sizes_match_the_jpegs(demo):
    out, _, records = demo
    for r in records:
        with Image.open(out / r["file"]) as im:
            assert im.format == "JPEG"
            assert im.size == (r["width"], r["height"])


def test_every_orientation_pose_and_duo_appears(demo):
    _, _, records = demo
    shapes = {(r["width"] > r["height"]) - (r["width"] < r["height"]) for r in records}
    assert shapes == {-1, 0, 1}  # portrait, square, landscape
    tags = [t for r in records for t in r["tags"]]
    assert set(POSES) <= set(tags)
    assert "duo" in tags
    # a set is one session: one canvas, one source, one model throughout
    for set_name in {r["set"] for r in records}:
        members = [r for r in records if r["set"] == set_name]
        model = lambda r: next(t for t in r["tags"] if t.startswith("model_"))  # noqa: E731
        assert len({(r["width"], r["height"], r["source"], model(r)) for r in members}) == 1


def test_file_names_carry_the_tags(demo):
    _, _, records = demo
    for r in records:
        stem = r["file"].rsplit("/", 1)[1][: -len(".jpg")]
        words, suffix = stem.split("_", 1)
        name_tags = [w for w in words.split("-") if not w.isdigit()]
        assert suffix == f"{r['width']}v{r['height']}"
        pose, view, colour, *extra = name_tags
        assert pose in POSES and view in ("front", "side") and colour in TOPS
        assert set(extra) <= {"duo", "holding"}
        n = len(name_tags)
        assert r["tags"][:n] == name_tags
        rest = r["tags"][n:]
        assert rest[0] == r["set"].replace("-", "_")
        models = [t for t in rest[1:] if t.startswith("model_")]
        assert models == rest[1:] and len(models) == (2 if "duo" in name_tags else 1)


def test_bbox_lies_inside_the_image_and_holds_a_large_figure(demo):
    _, _, records = demo
    for r in records:
        x0, y0, x1, y1 = r["bbox"]
        assert all(isinstance(v, int) for v in r["bbox"])
        assert 0 <= x0 < x1 <= r["width"] and 0 <= y0 < y1 <= r["height"]
        assert y1 - y0 >= 0.4 * r["height"]  # figures fill most of the frame
        if "duo" not in r["tags"]:
            assert y1 - y0 >= 0.7 * r["height"]


def test_bbox_is_tight_around_the_drawn_figure():
    # everything outside the box (but above the floor shadow and away from the watermark)
    # is plain studio, so a row above the box varies only with the gentle side light
    spec = next(s for s in plan_sets(COUNT, 0) if not s["watermark"])
    for index in range(spec["start"], spec["start"] + spec["count"]):
        img, r = render_image(0, index, spec)
        x0, y0, x1, y1 = r["bbox"]
        pixels = np.asarray(img).astype(int)
        if y0 >= 2:  # the row just above the head is wall only
            row = pixels[y0 - 2]
            assert np.abs(np.diff(row, axis=0)).max() <= 3
        inside = pixels[y0:y1, x0:x1]
        assert np.abs(np.diff(inside[: max(1, (y1 - y0) // 8)], axis=1)).max() > 30  # the head is there


def test_render_is_byte_identical_whatever_the_workers(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    render_demo_set(a, count=24, seed=3, workers=1)
    render_demo_set(b, count=24, seed=3, workers=2)
    files = jpegs(a) | {"metadata.json"}
    assert files - {"metadata.json"} == jpegs(b)
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    c = tmp_path / "c"
    render_demo_set(c, count=24, seed=4, workers=1)
    assert (c / "metadata.json").read_bytes() != (a / "metadata.json").read_bytes()


def test_watermark_sources_stamp_their_images(demo):
    _, _, records = demo
    marked = {s["source"] for s in plan_sets(COUNT, 0) if s["watermark"]}
    assert len(marked) == 2 and marked <= {r["source"] for r in records}
    spec = next(s for s in plan_sets(COUNT, 0) if s["watermark"])
    stamped, _ = render_image(0, spec["start"], spec)
    clean, _ = render_image(0, spec["start"], {**spec, "watermark": None})
    diff = np.abs(np.asarray(stamped).astype(int) - np.asarray(clean).astype(int)).max(axis=2)
    ys, xs = np.nonzero(diff)
    w, h = stamped.size
    assert len(ys) > 100  # visible text, ...
    assert ys.min() > h * 0.8 and xs.min() > w * 0.4  # ... only in the lower right corner
    assert diff.max() < 128  # ... and semi-transparent


def test_complete_folder_is_reused_and_partial_one_rerendered(tmp_path):
    out = tmp_path / "demo"
    first = render_demo_set(out, count=24, seed=0, workers=1)
    meta = (out / "metadata.json").read_bytes()
    stamp = (out / "metadata.json").stat().st_mtime_ns
    again = render_demo_set(out, count=24, seed=0, workers=1)
    assert again["cached"] is True and (again["sets"], again["sources"]) == (first["sets"], first["sources"])
    assert (out / "metadata.json").stat().st_mtime_ns == stamp

    (out / ".demo.json").unlink()  # as if killed before the end
    victim = out / json.loads(meta)[0]["file"]
    victim.write_bytes(b"half a jpeg")
    redo = render_demo_set(out, count=24, seed=0, workers=1)
    assert redo["cached"] is False
    assert (out / "metadata.json").read_bytes() == meta
    with Image.open(victim) as im:
        im.load()

    render_demo_set(out, count=12, seed=0, workers=1)  # a smaller set leaves no stray images
    records = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    assert len(records) == 12 and {r["file"] for r in records} == jpegs(out)
    assert {p.name for p in out.glob("*/set-*/")} == {r["set"] for r in records}  # no empty sets left


@pytest.mark.parametrize("count", [0, -5])
def test_count_below_one_is_refused(tmp_path, count):
    with pytest.raises(VaelabError, match="count"):
        render_demo_set(tmp_path / "demo", count=count)
    assert not (tmp_path / "demo").exists()


def test_output_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "taken.txt"
    target.write_text("not a folder")
    with pytest.raises(VaelabError, match="taken.txt"):
        render_demo_set(target, count=4)
    assert target.read_text() == "not a folder"

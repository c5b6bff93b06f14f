import json

import pytest
from cli_run import run
from PIL import Image

from vaelab.cli import cli


def all_commands(group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from all_commands(command, (*prefix, name))


def test_every_command_has_help(capsys):
    for path in [(), *all_commands(cli)]:
        status, out, _ = run(capsys, *path, "--help")
        assert status == 0 and "Usage: vaelab" in out


def test_demo_stats_and_preview(tmp_path, capsys):
    demo = tmp_path / "demo"
    status, out, _ = run(capsys, "data", "demo", str(demo), "--count", "30")
    assert status == 0 and "wrote 30 images" in out
    source = [f"--set=data.images={demo}", f"--set=data.metadata={demo / 'metadata.json'}"]
    status, out, _ = run(capsys, "data", "stats", *source, "--json")
    stats = json.loads(out)
    assert stats["total"] == 30 and stats["selected"] == 30 and stats["train"] + stats["val"] == 30
    status, out, _ = run(capsys, "data", "stats", *source, "--set", "data.filter.orientation=landscape", "--json")
    landscape = json.loads(out)
    assert landscape["selected"] == landscape["before"]["orientation"]["landscape"] < 30
    assert landscape["after"]["orientation"] == {"landscape": landscape["selected"]}
    png = tmp_path / "preview.png"
    status, out, _ = run(capsys, "data", "preview", *source, "--set", "data.size=[40, 24]", "--out", str(png), "-n", "6")
    assert status == 0
    width, height = Image.open(png).size
    assert (width - 2) % (24 + 2) == 0 and (height - 2) % (40 + 2) == 0  # whole 40x24 tiles


def test_stats_show_the_top_sources_and_sum_the_rest(tmp_path, capsys, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(45):  # one image per source: 45 sources, 20 of them shown
        Image.new("RGB", (8, 6)).save(images / f"{i}.png")
        rows.append({"file": f"{i}.png", "width": 8, "height": 6, "tags": ["x"], "source": f"source-{i:02d}"})
    (tmp_path / "meta.json").write_text(json.dumps(rows))
    source = [f"--set=data.images={images}", f"--set=data.metadata={tmp_path / 'meta.json'}"]
    monkeypatch.setenv("COLUMNS", "120")  # rich draws the tables to the terminal's width
    status, out, _ = run(capsys, "data", "stats", *source, "--set", "data.filter.exclude_sources=[source-00]")
    assert status == 0
    shown = [line for line in out.splitlines() if "source-" in line]
    assert len(shown) == 20 and "source-00" not in " ".join(shown)  # the top ones by selected images
    cells = [[cell.strip() for cell in line.split("│")[1:4]] for line in out.splitlines()]
    assert ["(25 more sources)", "25", "24"] in cells  # 25 sources, 24 of them kept by the filter
    status, out, _ = run(capsys, "data", "stats", *source, "--json")
    assert len(json.loads(out)["before"]["sources"]) == 45  # the JSON keeps them all


def test_index_reports_bad_files_and_writes_report(photo_folder, tmp_path, capsys, monkeypatch):
    (photo_folder / "studio-a" / "set-0" / "zero.jpg").write_bytes(b"")
    (photo_folder / "studio-a" / "set-0" / "letter.jpg").write_text("Dear user, this is not a photo.")
    Image.new("RGB", (300, 300)).save(photo_folder / "studio-b" / "set-2" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # makes huge.png a decompression bomb
    out_file = tmp_path / "meta.json"
    status, out, err = run(capsys, "data", "index", str(photo_folder), "--out", str(out_file), "--workers", "1")
    assert status == 0 and "indexed 12 images" in out
    assert "skipped 3 file(s)" in err
    report = json.loads((tmp_path / "meta.report.json").read_text())
    reasons = {entry["file"].rsplit("/", 1)[-1]: entry["reason"] for entry in report["files"]}
    assert set(reasons) == {"zero.jpg", "letter.jpg", "huge.png"}
    assert "decompression-bomb" in reasons["huge.png"]
    assert len(json.loads(out_file.read_text())) == 12


def test_bad_metadata_rows_are_skipped_with_a_report(photo_folder, tmp_path, capsys):
    good = sorted(p.relative_to(photo_folder).as_posix() for p in photo_folder.rglob("*.jpg"))
    rows = [{"file": f, "width": 48, "height": 64, "tags": ["x"]} for f in good[:4]]
    rows += [
        {"file": "studio-a/set-0/not-there.jpg", "width": 10, "height": 10},
        {"file": "../../etc/passwd", "width": 10, "height": 10},
        {"file": good[0], "width": 48, "height": 64},
        {"file": good[5], "width": "tall", "height": 64},
    ]
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(rows))
    source = [f"--set=data.images={photo_folder}", f"--set=data.metadata={meta}"]
    status, out, _ = run(capsys, "data", "stats", *source, "--json")
    stats = json.loads(out)
    assert status == 0 and stats["selected"] == 4 and stats["skipped"] == 4
    status, _, err = run(capsys, "data", "preview", *source, "--out", str(tmp_path / "p.png"))
    assert status == 0
    assert "skipped 4 item(s)" in err
    assert "not-there.jpg: missing" in err and "escapes the image folder" in err
    assert "duplicate of row 1" in err and "'width' is 'tall'" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "stats", "--set", "data.fitt=pad"], "error: --set data.fitt=pad: unknown key 'data.fitt'; did you mean 'data.fit'?"),
        (["data", "stats", "-c", "missing.yaml"], "error: missing.yaml: config file not found"),
        (["data", "stats", "--set", "data.images=/nonexistent/folder"], "error: /nonexistent/folder: image folder not found"),
        (["data", "index", "/nonexistent/folder"], "error: /nonexistent/folder: image folder not found"),
        (["data", "stats", "--set", "data.filter.include=[a]", "--set", "data.filter.exclude=[a]"],
         "tag 'a' is in both data.filter.include and data.filter.exclude"),
    ],
)
def test_bad_input_is_one_line_with_status_2(capsys, args, message):
    status, out, err = run(capsys, *args)
    assert status == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_metadata_that_is_not_metadata(tmp_path, capsys):
    meta = tmp_path / "meta.json"
    meta.write_text("{this is not json")
    (tmp_path / "images").mkdir()
    status, _, err = run(capsys, "data", "stats", f"--set=data.images={tmp_path / 'images'}", f"--set=data.metadata={meta}")
    assert status == 2 and "meta.json: expected a JSON list" in err


def test_index_never_overwrites_metadata_without_force(photo_folder, capsys):
    existing = photo_folder / "metadata.json"
    existing.write_text('[{"file": "precious.jpg", "bbox": [1, 2, 3, 4]}]')
    status, _, err = run(capsys, "data", "index", str(photo_folder), "--workers", "1")
    assert status == 2 and "already exists; pass --force" in err
    assert "precious" in existing.read_text()
    status, out, _ = run(capsys, "data", "index", str(photo_folder), "--workers", "1", "--force")
    assert status == 0 and len(json.loads(existing.read_text())) == 12

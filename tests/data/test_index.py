import json

from vaelab.data.index import index_folder, parse_tags, write_records, write_report


def test_tags_from_file_and_set_folder():
    assert parse_tags("set-530/standing-front-blue_640v640.jpg") == ["standing", "front", "blue", "set_530"]
    assert parse_tags("studio/set-1/sitting-duo-0012_480v640.jpg") == ["sitting", "duo", "set_1"]
    assert parse_tags("Kneeling-RED.png") == ["kneeling", "red"]
    assert parse_tags("0001.jpg") == []


def test_underscores_belong_to_tags_and_only_a_trailing_size_is_a_suffix():
    assert parse_tags("set-530/t_shirt-hoodie-pants-7_640v640.jpg") == ["t_shirt", "hoodie", "pants", "set_530"]
    assert parse_tags("long_hair-red_dress_1024x768.JPG") == ["long_hair", "red_dress"]
    assert parse_tags("standing-front_view.jpg") == ["standing", "front_view"]
    assert parse_tags("sitting-0012_2_640V480.png") == ["sitting"]  # digits and underscores: a counter


def test_reused_records_get_the_tags_parsed_again(photo_folder):
    # An index cached by a parser that cut tags at the first `_` must not keep those tags.
    first = index_folder(photo_folder, workers=1)
    stale = {r["file"]: {**r, "tags": ["t"]} for r in first.records}
    again = index_folder(photo_folder, workers=1, reuse=stale)
    assert again.reused == 12 and again.records == first.records


def test_index_folder_reads_sizes_tags_and_sources(photo_folder):
    result = index_folder(photo_folder, workers=1)
    assert len(result.records) == 12 and not result.skipped
    first = result.records[0]
    assert first["file"].startswith("studio-a/set-0/")
    assert first["source"] == "studio-a"
    assert "set_0" in first["tags"] and "blue" in first["tags"]
    sizes = {(r["width"], r["height"]) for r in result.records}
    assert sizes == {(48, 64), (64, 48), (56, 56)}


def test_index_skips_and_reports_bad_files(photo_folder, tmp_path):
    (photo_folder / "studio-a" / "set-0" / "empty.jpg").write_bytes(b"")
    (photo_folder / "studio-a" / "set-0" / "notes.jpg").write_text("this is text, not a photo")
    good = next((photo_folder / "studio-b").rglob("*.jpg")).read_bytes()
    (photo_folder / "studio-b" / "set-2" / "cut.jpg").write_bytes(good[: len(good) // 2])
    (photo_folder / "readme.txt").write_text("not an image suffix: ignored")
    result = index_folder(photo_folder, workers=2)
    assert len(result.records) == 12
    reasons = {s.item.rsplit("/", 1)[-1]: s.reason for s in result.skipped}
    assert set(reasons) == {"empty.jpg", "notes.jpg", "cut.jpg"}
    report = tmp_path / "report.json"
    write_report(result.skipped, report)
    assert json.loads(report.read_text())["skipped"] == 3


def test_index_reuses_unchanged_files(photo_folder, monkeypatch):
    import vaelab.data.index as module

    first = index_folder(photo_folder, workers=1)
    previous = {r["file"]: r for r in first.records}
    calls = []
    original = module._verify
    monkeypatch.setattr(module, "_verify", lambda task: calls.append(task) or original(task))
    again = index_folder(photo_folder, workers=1, reuse=previous)
    assert again.reused == 12 and calls == []
    assert again.records == first.records


def test_write_records_json_and_jsonl(tmp_path):
    records = [{"file": "a.jpg", "tags": ["x"]}, {"file": "b.jpg", "tags": []}]
    write_records(records, tmp_path / "m.json")
    write_records(records, tmp_path / "m.jsonl")
    assert json.loads((tmp_path / "m.json").read_text()) == records
    assert [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()] == records

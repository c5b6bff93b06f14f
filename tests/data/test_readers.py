import csv
import json
import os

import numpy as np
import pytest

from vaelab.config import FieldNames
from vaelab.data.readers import load_metadata, read_metadata_file
from vaelab.errors import VaelabError

RECORDS = [
    {"filename": "set-1/a.jpg", "width": 640, "height": 480, "tags": ["standing", "duo"], "source": "s1", "bbox": [1, 2, 30, 40]},
    {"filename": "set-1/b.jpg", "width": 480, "height": 640, "tags": ["sitting"], "source": "s2"},
    {"filename": "set-2/c.jpg", "width": 500, "height": 500, "tags": [], "source": None},
]


def check_columns(metadata):
    assert len(metadata) == 3
    assert metadata.path(0) == "set-1/a.jpg"
    assert metadata.tags(0) == ["standing", "duo"]
    assert metadata.tags(2) == []
    assert metadata.width.tolist() == [640, 480, 500]
    assert metadata.height.tolist() == [480, 640, 500]
    assert metadata.source(0) == "s1" and metadata.source(2) is None
    assert metadata.bbox[0].tolist() == [1, 2, 30, 40]
    assert np.isnan(metadata.bbox[1]).all()


def test_json_list_with_filename_fallback(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(RECORDS, indent=2))
    check_columns(read_metadata_file(path, tmp_path, FieldNames()))


def test_jsonl(tmp_path):
    path = tmp_path / "meta.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    check_columns(read_metadata_file(path, tmp_path, FieldNames()))


def test_csv_with_delimited_tags_and_bbox_string(tmp_path):
    path = tmp_path / "meta.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "w", "h", "labels", "src", "box"])
        writer.writerow(["set-1/a.jpg", 640, 480, "standing|duo", "s1", "[1, 2, 30, 40]"])
        writer.writerow(["set-1/b.jpg", 480, 640, "sitting", "s2", ""])
        writer.writerow(["set-2/c.jpg", 500, 500, "", "", ""])
    fields = FieldNames(file="file", tags="labels", width="w", height="h", source="src", bbox="box", tag_separator="|")
    check_columns(read_metadata_file(path, tmp_path, fields))


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    records = [dict(r, bbox=r.get("bbox")) for r in RECORDS]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "meta.parquet")
    check_columns(read_metadata_file(tmp_path / "meta.parquet", tmp_path, FieldNames()))


def test_malformed_rows_are_skipped_and_reported(tmp_path):
    rows = [
        {"file": "ok.jpg", "width": 10, "height": 10},
        {"file": "bad-width.jpg", "width": "wide", "height": 10},
        {"file": "", "width": 10, "height": 10},
        {"width": 10, "height": 10},
        "not an object",
        {"file": "neg.jpg", "width": -5, "height": 10},
        {"file": "box.jpg", "width": 10, "height": 10, "bbox": [5, 5, 2, 2]},
        {"file": "tags.jpg", "width": 10, "height": 10, "tags": 7},
        {"file": "ok.jpg", "width": 10, "height": 10},
    ]
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(rows))
    metadata = read_metadata_file(path, tmp_path, FieldNames())
    assert [metadata.path(i) for i in range(len(metadata))] == ["ok.jpg"]
    reasons = {s.item: s.reason for s in metadata.skipped}
    assert len(reasons) == 8
    assert "'width' is 'wide', not a number" in reasons["meta.json row 2"]
    assert "missing or empty 'file'" in reasons["meta.json row 3"]
    assert "missing or empty 'file'" in reasons["meta.json row 4"]
    assert "expected an object" in reasons["meta.json row 5"]
    assert "positive whole number" in reasons["meta.json row 6"]
    assert "empty" in reasons["meta.json row 7"]
    assert "list or a delimited string" in reasons["meta.json row 8"]
    assert reasons["meta.json row 9"] == "duplicate of row 1 (ok.jpg)"


def test_jsonl_bad_line_is_skipped(tmp_path):
    path = tmp_path / "meta.jsonl"
    path.write_text('{"file": "a.jpg"}\n{"file": "b.jpg"\n{"file": "c.jpg"}\n')
    metadata = read_metadata_file(path, tmp_path, FieldNames())
    assert len(metadata) == 2
    assert metadata.skipped[0].item.endswith("line 2") and "invalid JSON" in metadata.skipped[0].reason


def test_broken_files_give_one_line_errors(tmp_path):
    truncated = tmp_path / "t.json"
    truncated.write_text(json.dumps(RECORDS)[:-30])
    with pytest.raises(VaelabError, match=r"t.json: invalid JSON near character \d+"):
        read_metadata_file(truncated, tmp_path, FieldNames())
    not_list = tmp_path / "o.json"
    not_list.write_text('{"file": "a.jpg"}')
    with pytest.raises(VaelabError, match=r"expected a JSON list"):
        read_metadata_file(not_list, tmp_path, FieldNames())
    with pytest.raises(VaelabError, match=r"unknown metadata format '.xml'"):
        read_metadata_file(tmp_path / "m.xml", tmp_path, FieldNames())
    with pytest.raises(VaelabError, match=r"metadata file not found"):
        read_metadata_file(tmp_path / "missing.json", tmp_path, FieldNames())
    empty = tmp_path / "e.json"
    empty.write_text("[]")
    with pytest.raises(VaelabError, match=r"no usable records"):
        read_metadata_file(empty, tmp_path, FieldNames())
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(VaelabError, match=r"not UTF-8"):
        read_metadata_file(binary, tmp_path, FieldNames())


def test_json_list_streams_across_chunk_boundaries(tmp_path, monkeypatch):
    import vaelab.data.readers as module

    monkeypatch.setattr(module, "_CHUNK", 37)  # forces objects to straddle reads
    records = [{"file": f"img-{i}.jpg", "width": 10 + i, "height": 20, "tags": ["x", f"t{i % 3}"]} for i in range(50)]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(records, indent=1))
    metadata = read_metadata_file(path, tmp_path, FieldNames())
    assert len(metadata) == 50
    assert metadata.width.tolist() == [10 + i for i in range(50)]
    assert metadata.tags(49) == ["x", "t1"]


def test_columnar_cache_is_used_and_invalidated(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(RECORDS))
    cache = tmp_path / "cache"
    first = load_metadata(path, tmp_path, FieldNames(), cache)
    stored = list(cache.glob("metadata-*.npz"))
    assert len(stored) == 1
    check_columns(load_metadata(path, tmp_path, FieldNames(), cache))
    # the cache is what a second load reads: corrupt the source's content but keep size and mtime
    stat = path.stat()
    path.write_text(json.dumps(RECORDS).replace("standing", "stand_ng"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load_metadata(path, tmp_path, FieldNames(), cache).tags(0) == ["standing", "duo"]
    # a changed file (new mtime) is read again
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_metadata(path, tmp_path, FieldNames(), cache).tags(0) == ["stand_ng", "duo"]
    assert first.tag_names.dtype.kind == "U" and first.paths.dtype.kind == "S"

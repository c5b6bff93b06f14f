
from vaelab.data.metadata import from_records, safe_relative_path


def test_paths_escaping_the_folder_are_skipped(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    rows = [
        {"file": "../../etc/passwd"},
        {"file": "/etc/passwd"},
        {"file": str(root / "inside.jpg")},
        {"file": "a/../b.jpg"},
        {"file": "a/../../b.jpg"},
    ]
    metadata = from_records(rows, root)
    assert [metadata.path(i) for i in range(len(metadata))] == ["inside.jpg", "b.jpg"]
    assert sum("escapes the image folder" in s.reason for s in metadata.skipped) == 3


def test_record_accessors_and_tag_normalisation(tmp_path):
    metadata = from_records(
        [{"file": "a.jpg", "width": 4.0, "height": "3", "tags": " duo , standing,duo", "source": "s", "bbox": "1 2 3 4"}],
        tmp_path,
    )
    assert metadata.record(0) == {"file": "a.jpg", "width": 4, "height": 3, "tags": ["duo", "standing"],
                                  "source": "s", "bbox": [1.0, 2.0, 3.0, 4.0]}
    assert metadata.file(0) == tmp_path / "a.jpg"
    assert metadata.has_bbox().tolist() == [True]


def test_unknown_sizes_are_minus_one_not_an_error(tmp_path):
    metadata = from_records([{"file": "a.jpg"}, {"file": "b.jpg", "width": "", "height": None}], tmp_path)
    assert metadata.width.tolist() == [-1, -1] and not metadata.skipped


def test_safe_relative_path_normalises_harmless_forms():
    assert safe_relative_path("/r", "./a//b.jpg") == "a/b.jpg"
    assert safe_relative_path("/r", "a\\b.jpg") == "a/b.jpg"
    assert safe_relative_path("/r", "/r/x/y.jpg") == "x/y.jpg"
    assert safe_relative_path("/r", "..a/b.jpg") == "..a/b.jpg"  # a name, not a parent folder

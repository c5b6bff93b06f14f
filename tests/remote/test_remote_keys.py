"""vaelab.remote.keys: a store's keys never become local paths outside the local folder. (Not test_keys.py:
pytest would take it for tests/config/test_keys.py, as the test folders are not packages.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from vaelab.errors import VaelabError
from vaelab.remote.keys import cache_relative, escapes, local_path, plain_name


@pytest.mark.parametrize("key", ["../x", "sub/../../x", "a/..", "/etc/passwd", "..\\..\\x", "\\x", "C:/x", "C:x", ""])
def test_keys_that_leave_the_folder_are_refused(key, tmp_path):
    assert escapes(key)
    with pytest.raises(VaelabError) as error:
        local_path(tmp_path, key, "s3://bucket/runs/A")
    message = str(error.value)
    assert message.startswith(f"s3://bucket/runs/A: the object key {key!r} leads outside the local folder {tmp_path}")
    assert "\n" not in message


@pytest.mark.parametrize("key", ["run.json", "checkpoints/best.pt", "a/./b", "a..b/c", "reconstructions/epoch-0001.png"])
def test_keys_inside_the_folder_are_kept(key, tmp_path):
    assert not escapes(key) and local_path(tmp_path, key, "s3://bucket/runs/A") == tmp_path / key


def test_run_names_and_cache_folders():
    assert plain_name("2026-01-01_00h00m00s", "s3://b/runs/x") == "2026-01-01_00h00m00s"
    for name in ("..", ".", "", "a/b", "a\\b"):
        with pytest.raises(VaelabError, match="is not a run folder's name"):
            plain_name(name, "s3://b/runs/x")
    assert cache_relative("s3://bucket/runs/A/") == "s3/bucket/runs/A"
    # a file:// URL's path is absolute: joined as it was, the "copy" was the run folder itself
    assert Path("/cache") / cache_relative("file:///mnt/runs/A") == Path("/cache/file/mnt/runs/A")
    with pytest.raises(VaelabError, match="outside the cache"):
        cache_relative("s3://bucket/runs/../../A")

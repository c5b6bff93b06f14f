import json
import logging
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Tiny convolutions are slower with two threads than one on a shared 2-core machine.
torch.set_num_threads(1)


def pytest_terminal_summary(terminalreporter):
    """Every skip reason with its count, at the end of every run (also under -q): a missing browser
    or data set must not pass unnoticed. The reasons of `optional.needs` say how to get it."""
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        if isinstance(report.longrepr, tuple):  # (file, line, "Skipped: reason")
            reason = report.longrepr[2].removeprefix("Skipped: ")
            reasons[reason] = reasons.get(reason, 0) + 1
    if not reasons:
        return
    terminalreporter.section("skipped: what is missing and how to get it", yellow=True)
    for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
        terminalreporter.line(f"{count} test(s): {reason}")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache folder, so none sees another's (or the user's) caches."""
    folder = tmp_path_factory.mktemp("vaelab-cache")
    monkeypatch.setenv("VAELAB_CACHE_DIR", str(folder))
    return folder


def write_image(path: Path, width: int, height: int, color=(200, 30, 30), fmt="JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), color).save(path, format=fmt)
    return path


@pytest.fixture
def photo_folder(tmp_path) -> Path:
    """A small collection laid out like the user's: source/set/tag-tag_WvH.jpg, mixed shapes."""
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    shapes = [(48, 64), (64, 48), (56, 56)]
    poses = ["standing", "sitting", "kneeling"]
    for i in range(12):
        width, height = shapes[i % 3]
        source = "studio-a" if i < 6 else "studio-b"
        name = f"{poses[i % 3]}-{'duo-' if i % 4 == 0 else ''}blue-{i:04d}_{width}v{height}.jpg"
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        write_image(root / source / f"set-{i // 4}" / name, width, height, color)
    return root


def write_metadata(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records))
    return path


# --------------------------------------------------------------------------------------------
# object storage: a real S3 API (moto's server on loopback) for run.remote and vaelab.remote.fetch
# --------------------------------------------------------------------------------------------

# Fail fast against a store that is down: botocore would otherwise retry for about 30 s.
FAST_FAIL = {"config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}


@pytest.fixture(scope="session")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1"}.items():
            patch.setenv(key, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
        server.stop()


@pytest.fixture
def bucket(s3_endpoint):
    """A fresh bucket per test: (s3 URL of its runs/ prefix, run.remote_options)."""
    from vaelab.remote.mirror import open_remote

    options = {"endpoint_url": s3_endpoint, **FAST_FAIL}
    fs, _ = open_remote("s3://x", options)
    name = f"test-{uuid.uuid4().hex[:16]}"
    fs.mkdir(name)
    return f"s3://{name}/runs", options

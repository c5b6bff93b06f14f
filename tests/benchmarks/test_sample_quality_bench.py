"""benchmarks/sample_quality.py in --quick mode on a tiny generated collection: the whole script runs
(two trainings, both priors, four judged samplers) and its JSON line has the documented structure.
(Not test_sample_quality.py: pytest would mistake it for tests/experiments/test_sample_quality.py,
as neither folder is a package.)"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sample_quality.py"


def test_quick_run_judges_every_sampler(tmp_path):
    root = tmp_path / "photos" / "set-a"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(120):  # val_fraction 0.1: 12 validation images, enough for a 5-fold C2ST
        image = np.full((32, 24, 3), rng.integers(40, 200, 3), dtype=np.uint8)
        image[8:24, 8:16] = rng.integers(0, 255, 3)
        Image.fromarray(image).save(root / f"standing-{i:04d}.png")
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--images", str(tmp_path / "photos"),
                           "--out", str(tmp_path / "out"), "--threads", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "sample_quality" and result["size"] == 16 and result["samples"] == 24
    assert set(result["rows"]) == {"a", "b", "c", "r"}
    assert [result["rows"][k]["prior"] for k in "abcr"] == ["normal", "mixture", "pixelcnn", "reconstructions"]
    for row in result["rows"].values():
        for test in ("c2st", "c2st_decoded"):
            c2st = row[test]
            assert c2st["tested"] == 2 * c2st["per_image"] >= 20 and c2st["ci95"][0] <= c2st["accuracy"] <= c2st["ci95"][1]
        assert row["nn_ratio"] > 0
    assert result["priors"]["vq"]["kind"] == "pixelcnn" and result["priors"]["vector"]["kind"] == "mixture"
    a, c = result["rows"]["a"]["c2st"]["ci95"], result["rows"]["c"]["c2st"]["ci95"]
    assert result["target"]["c_below_a"] == (c[1] < a[0])
    assert "| (c) vq, PixelCNN prior |" in done.stdout

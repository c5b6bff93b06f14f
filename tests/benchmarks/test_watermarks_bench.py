"""benchmarks/watermarks.py in --quick mode on a small generated collection: the whole script runs
(re-encoding, stamping, vaelab's audit and the raw-median baseline) and prints its table and one JSON
line of the documented shape. (Not test_watermarks.py: pytest would mistake it for
tests/data/test_watermarks.py, as neither folder is a package.)"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "watermarks.py"


def test_quick_run_prints_the_table_and_one_json_line(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for i in range(48):  # --quick: 3 sources of 16
        width, height = (120, 160) if i % 2 else (130, 170)
        img = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(30, 220, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            draw.rectangle([x, y, x + 30, y + 50], fill=tuple(int(c) for c in rng.integers(0, 120, 3)))
        noisy = np.asarray(img, np.float32) + rng.normal(0, 5, (height, width, 3))
        name = f"images/{i:04d}.jpg"
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(tmp_path / name, quality=95)
        records.append({"file": name, "width": width, "height": height, "tags": []})
    (tmp_path / "metadata.json").write_text(json.dumps(records))
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--images", str(tmp_path), "--workers", "1",
                           "--work", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert any(line.startswith("| opacity |") for line in lines)
    result = json.loads(lines[-1])
    assert result["benchmark"] == "watermarks" and result["quick"] is True
    assert result["groups"] == 3 and result["per_source"] == 16 and [r["opacity"] for r in result["rows"]] == [0.3]
    for method in ("ours", "baseline"):
        row = result["rows"][0][method]
        assert {"recall", "precision", "false_positives", "ranked_first", "stamped_min", "stamped_median",
                "clean_max"} <= set(row)
    assert result["rows"][0]["ours"]["recall"] == 1.0  # a 30% logo on 16 photos is found
    # the scale part ran the real command twice on 40 linked photos in 2 sources: 16 decoded each, then cached
    (scale,) = result["scale"]
    assert scale["images"] == 40 and scale["first"]["decoded"] == 32 and scale["first"]["cached_groups"] == 0
    assert scale["cached"]["cached_groups"] == 2 and scale["first"]["peak_rss_mb"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "metadata.json"]  # its copies are gone


def test_without_photos_it_says_so(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--images", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "metadata.json: not found" in done.stderr and "Traceback" not in done.stderr

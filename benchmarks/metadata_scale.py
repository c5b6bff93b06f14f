"""Load and filter a 500,000-record metadata file (about 120 MB of JSON): time and peak memory.

Three measurements, each in a fresh process (imports included) so that peak RSS is its own.
The images themselves do not exist: this measures metadata, filters and the train/val split.
  baseline: json.load into a list of dicts, then a Python loop that filters it (the usual script)
  first:    vaelab's streaming reader into columns, then the filters (no columnar cache yet)
  cached:   the same call again, now served by vaelab's columnar cache of that file

    python benchmarks/metadata_scale.py [--records 500000] [--keep-file]

Targets: first load <= 15 s with peak RSS <= 1.5 GB; cached load <= 2 s.
Ends with one JSON line: {"benchmark": "metadata_scale", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

POSES = ["standing", "sitting", "kneeling", "walking", "reaching"]
EXTRA = ["duo", "holding", "front", "side", "blue", "red", "black", "white", "outdoor", "studio"]


def generate(path: Path, count: int) -> None:
    """Records shaped like a real collection's: set folders, tag words, a bbox and a caption."""
    rng = random.Random(0)
    models = [f"model_{i:03d}" for i in range(400)]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("[\n")
        for i in range(count):
            width, height = rng.choice([(640, 427), (427, 640), (480, 640), (640, 480), (640, 640)])
            pose = rng.choice(POSES)
            tags = [pose, *rng.sample(EXTRA, 3), rng.choice(models), f"set_{i // 150}"]
            record = {
                "filename": f"source-{i % 23}/set-{i // 150}/{pose}-{tags[1]}-{i:07d}_{width}v{height}.jpg",
                "width": width,
                "height": height,
                "tags": tags,
                "source": f"source-{i % 23}",
                "bbox": [rng.randrange(0, 100), rng.randrange(0, 100), rng.randrange(300, 427), rng.randrange(400, 640)],
                "caption": "a person photographed in a studio session",
            }
            handle.write(("" if i == 0 else ",\n") + json.dumps(record))
        handle.write("\n]\n")


BASELINE = """
import json, sys, time
start = time.perf_counter()
with open(sys.argv[1]) as handle:
    records = json.load(handle)
kept = [r for r in records if r["height"] > r["width"] and "standing" in r["tags"] and "duo" not in r["tags"]]
import resource
print(len(kept), time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

VAELAB = """
import sys, time
start = time.perf_counter()
from pathlib import Path
from vaelab.config import load_config
from vaelab.data.readers import load_metadata
from vaelab.data.select import select, split
data = load_config(None, ["data.images=" + sys.argv[2], "data.metadata=" + sys.argv[1],
                          "data.cache_dir=" + sys.argv[3], "data.fields.file=filename",
                          "data.filter.orientation=portrait", "data.filter.include=[standing]",
                          "data.filter.exclude=[duo]"]).data
metadata = load_metadata(data.metadata, data.images, data.fields, data.cache_dir)
selected = select(metadata, data.filter)
train, val = split(metadata, selected, data.val_fraction)
import resource
print(len(selected), time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run_measured(code: str, *args: str) -> dict:
    """Run `code` in a fresh interpreter; it reports its count, seconds and own peak RSS (KiB)."""
    completed = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if completed.returncode != 0:
        sys.exit(f"error: measurement failed:\n{completed.stderr.strip()}")
    kept, seconds, peak_kb = completed.stdout.split()
    return {"kept": int(kept), "seconds": round(float(seconds), 2), "peak_rss_mb": round(int(peak_kb) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--keep-file", action="store_true", help="leave the generated JSON in the temp folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vaelab-metadata-"))
    metadata = work / "metadata.json"
    generate(metadata, args.records)
    size_mb = metadata.stat().st_size / 2**20
    cache = work / "cache"
    first = run_measured(VAELAB, str(metadata), str(work), str(cache))
    cached = run_measured(VAELAB, str(metadata), str(work), str(cache))
    baseline = run_measured(BASELINE, str(metadata))
    assert first["kept"] == cached["kept"] == baseline["kept"], (first, cached, baseline)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.records} records, {size_mb:.0f} MB of JSON; "
          f"{first['kept']} kept by the filter")
    print(f"{'loader':<34} {'seconds':>8} {'peak RSS MB':>12}")
    rows = [("baseline json.load + dict filter", baseline), ("vaelab first load (streaming)", first),
            ("vaelab cached load (columnar)", cached)]
    for name, r in rows:
        print(f"{name:<34} {r['seconds']:>8.2f} {r['peak_rss_mb']:>12.0f}")
    print(json.dumps({
        "benchmark": "metadata_scale", "records": args.records, "json_mb": round(size_mb, 1),
        "first_load_s": first["seconds"], "first_peak_rss_mb": first["peak_rss_mb"],
        "cached_load_s": cached["seconds"], "cached_peak_rss_mb": cached["peak_rss_mb"],
        "baseline_load_s": baseline["seconds"], "baseline_peak_rss_mb": baseline["peak_rss_mb"],
    }))
    if not args.keep_file:
        for path in sorted(work.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        work.rmdir()


if __name__ == "__main__":
    main()

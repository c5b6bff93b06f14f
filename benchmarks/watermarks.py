"""The watermark audit on real photos: precision and recall over the mark's opacity, against a baseline.

ccp-figures' 600 photos are dealt at random into --groups synthetic sources (75 photos each by
default). In each condition one source has a semi-transparent logo (a ring and the text
"© NORDLICHT STUDIO", white) stamped on every photo at one opacity and one anchor in the frame
(bottom-right corner, centre or top-left corner, sized and placed with the photo's width), so it
sits at a different place relative to each person but at the same place in every frame. Every
photo, stamped or not, is re-encoded once as JPEG quality 90, so re-encoding gives nothing away.
Each source is then judged on its own by vaelab's audit (data/watermarks.py, the same sample of
--per-source photos and the same threshold as `vaelab data watermarks`).

Baseline, named "raw median": the plain per-pixel median of the raw luminance (no high-pass) of
the same anchored views, minus the median of those medians over all sources, in units of its
standard error; scored and thresholded the same way (strongest 9x9 window of z^2 >= 6).

Precision and recall per opacity pool the anchors and --repeats deals: recall = stamped sources
flagged / stamped sources, precision = stamped sources flagged / all sources flagged. "Ranked
first" needs no threshold: how often the stamped source outscores every clean one of its deal
(so a baseline whose scores merely sit on another scale is not judged by our threshold alone).

    python benchmarks/watermarks.py [--groups 8] [--repeats 3] [--opacities 0.05 0.1 0.15 0.2 0.3]
    python benchmarks/watermarks.py --quick        # a smoke test of the script (seconds)

Ends with one JSON line: {"benchmark": "watermarks", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import uniform_filter

from vaelab.data import watermarks as wm

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ccp-figures"
ANCHORS = {"bottom-right": (1.0, 1.0), "centre": (0.5, 0.5), "top-left": (0.0, 0.0)}
TEXT = "© NORDLICHT STUDIO"
QUALITY = 90


# --------------------------------------------------------------------------------------------
# The stamp and the files
# --------------------------------------------------------------------------------------------


def logo(width: int, opacity: float) -> Image.Image:
    """An RGBA logo about 55% of the photo's width: a ring and a line of text, white at `opacity`."""
    font = ImageFont.load_default(size=max(8, int(width * 0.045)))
    left, top, right, bottom = font.getbbox(TEXT)
    text_w, text_h = right - left, bottom - top
    ring = int(text_h * 1.8)
    layer = Image.new("RGBA", (ring + text_h + text_w + 4, ring + 4), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    alpha = int(round(255 * opacity))
    draw.ellipse([2, 2, 2 + ring, 2 + ring], outline=(255, 255, 255, alpha), width=max(2, ring // 8))
    draw.text((ring + text_h - left, 2 + (ring - text_h) // 2 - top), TEXT, font=font, fill=(255, 255, 255, alpha))
    return layer


def stamp(photo: Image.Image, opacity: float, anchor: str) -> Image.Image:
    """The logo at `anchor` of the frame, with a margin of 4% of the width."""
    photo = photo.convert("RGB")
    mark = logo(photo.width, opacity)
    x, y = ANCHORS[anchor]
    margin = int(photo.width * 0.04)
    left = int(margin + x * (photo.width - mark.width - 2 * margin))
    top = int(margin + y * (photo.height - mark.height - 2 * margin))
    photo.paste(mark, (left, top), mark)
    return photo


def reencode(task: tuple[str, str, float, str]) -> str:
    """Write the photo (stamped when opacity > 0) as JPEG quality 90; returns the new path."""
    source, target, opacity, anchor = task
    with Image.open(source) as photo:
        out = stamp(photo, opacity, anchor) if opacity > 0 else photo.convert("RGB")
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        out.save(target, "JPEG", quality=QUALITY)
    return target


# --------------------------------------------------------------------------------------------
# Scoring one source: vaelab's audit and the baseline
# --------------------------------------------------------------------------------------------


def score_source(paths: list[str]) -> dict:
    """vaelab's score, and the baseline's per-anchor-view raw medians and standard errors."""
    ours = wm.score_group((paths, wm.Method()))
    raw_method = wm.Method(high_pass_sigma=0.0)
    views, orientations = [], []
    for path in paths:
        decoded = wm.image_views(Path(path), raw_method)
        views.append(decoded.views)
        orientations.append(decoded.orientation)
    views = np.stack(views)
    table = wm.anchor_squares(np.array(orientations))
    medians, errors, done = [], [], {}
    for a in range(len(wm.ANCHORS)):
        key = table[a].tobytes()  # anchors that pick the same squares (all of a portrait's top row) share one
        if key not in done:
            stack = views[np.arange(len(views)), table[a]].astype(np.float32)
            median = np.median(stack, axis=0)
            spread = 1.4826 * np.median(np.abs(stack - median), axis=0)
            done[key] = (median, 1.2533 * np.maximum(spread, wm.SPREAD_FLOOR) / np.sqrt(len(stack)))
        medians.append(done[key][0])
        errors.append(done[key][1])
    return {"ours": float(ours["scores"].max()), "median": np.stack(medians), "error": np.stack(errors)}


def stamped_source(task: tuple[list[str], Path, float, str]) -> dict:
    """One condition: stamp one source's photos, score them, delete the copies."""
    sources, folder, opacity, anchor = task
    paths = [reencode((source, str(folder / Path(source).name), opacity, anchor)) for source in sources]
    try:
        return score_source(paths)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def baseline_scores(results: list[dict]) -> list[float]:
    """Raw median: each source's median against the median of all sources' medians, as z^2 windows."""
    reference = np.median(np.stack([r["median"] for r in results]), axis=0)
    scores = []
    for r in results:
        z = (r["median"] - reference) / r["error"]
        best = 0.0
        for view in z:
            view = view / max(1.0, 1.4826 * float(np.median(np.abs(view))))
            best = max(best, float(uniform_filter(view * view, size=wm.WINDOW, mode="constant").max()))
        scores.append(best)
    return scores


# --------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------


def deal(files: list[str], groups: int, per_source: int, seed: int) -> list[list[str]]:
    """`groups` synthetic sources of the shuffled files; each source's first `per_source` are judged,
    as the audit samples at most that many."""
    order = np.random.default_rng(seed).permutation(len(files))
    return [[files[i] for i in order[g::groups]][:per_source] for g in range(groups)]


def run(args) -> dict:
    records = json.loads((args.images / "metadata.json").read_text(encoding="utf-8"))
    files = sorted(r["file"] for r in records)[: args.limit]
    work = Path(tempfile.mkdtemp(prefix="vaelab-watermarks-", dir=args.work))
    started = time.perf_counter()
    try:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            clean = {f: str(work / "clean" / f) for f in files}
            list(pool.map(reencode, [(str(args.images / f), clean[f], 0.0, "") for f in files], chunksize=8))
            conditions, null_ours, null_base = [], [], []
            deals = [deal(files, args.groups, args.per_source, seed=repeat) for repeat in range(args.repeats)]
            clean_results = [list(pool.map(score_source, [[clean[f] for f in s] for s in sources])) for sources in deals]
            # every condition (deal x opacity x anchor) at once: a different source of each deal is stamped
            plan = [(repeat, opacity, anchor) for repeat in range(args.repeats)
                    for opacity in args.opacities for anchor in args.anchors]
            tasks = [([str(args.images / f) for f in deals[repeat][repeat % args.groups]],
                      work / f"stamped-{repeat}-{opacity}-{anchor}", opacity, anchor) for repeat, opacity, anchor in plan]
            for repeat, results in enumerate(clean_results):
                base = baseline_scores(results)
                null_ours += [r["ours"] for r in results]
                null_base += base
            for (repeat, opacity, anchor), stamped in zip(plan, pool.map(stamped_source, tasks)):
                chosen = repeat % args.groups
                results = list(clean_results[repeat])
                results[chosen] = stamped
                base = baseline_scores(results)
                clean_ours = [r["ours"] for k, r in enumerate(results) if k != chosen]
                clean_base = [b for k, b in enumerate(base) if k != chosen]
                conditions.append({"repeat": repeat, "opacity": opacity, "anchor": anchor,
                                   "stamped": {"ours": stamped["ours"], "baseline": base[chosen]},
                                   "clean": {"ours": clean_ours, "baseline": clean_base}})
                print(f"  deal {repeat} opacity {opacity:.2f} {anchor:12s} ours {stamped['ours']:8.1f} "
                      f"(clean max {max(clean_ours):.2f})  baseline {base[chosen]:8.1f} "
                      f"(clean max {max(clean_base):.2f})", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"conditions": conditions, "null": {"ours": null_ours, "baseline": null_base},
            "seconds": round(time.perf_counter() - started, 1)}


# --------------------------------------------------------------------------------------------
# Scale: the real command on N images, of which it decodes only the sample
# --------------------------------------------------------------------------------------------

MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - start
sys.stderr.write(done.stderr[-2000:])
print(done.returncode, round(seconds, 2), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "{}")
"""


def scale_run(args, count: int, work: Path, sources: int = 20) -> dict:
    """`vaelab data watermarks` on `count` images in `sources` sources of 100-image set folders: first run
    and cached rerun, each in a fresh process; the time and the largest process's peak RSS (the command's
    or a worker's). The images are links to the photos: each source goes through all of them from its
    own offset, so a source of more than 600 images holds copies, which the audit leaves out."""
    records = json.loads((args.images / "metadata.json").read_text(encoding="utf-8"))
    root = work / f"scale-{count}"
    rows = []
    for i in range(count):
        record = records[((i % sources) * 30 + i // sources) % len(records)]
        source = f"source-{i % sources:02d}"
        name = f"{source}/set-{i // (sources * 100):04d}/{i:06d}.jpg"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink((args.images / record["file"]).resolve(), root / name)
        rows.append({"file": name, "width": record["width"], "height": record["height"], "tags": [], "source": source})
    (root / "metadata.json").write_text(json.dumps(rows))
    command = [sys.executable, "-m", "vaelab", "data", "watermarks", "--set", f"data.images={root}",
               "--set", f"data.metadata={root / 'metadata.json'}", "--set", f"data.cache_dir={work / 'cache'}",
               "--set", f"data.workers={args.workers}", "--per-source", str(args.per_source),
               "--out", str(work / "marks"), "--json"]
    row = {"images": count, "sources": sources}
    for run_name in ("first", "cached"):
        done = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True)
        status, seconds, rss = done.stdout.splitlines()[0].split()
        if status != "0":
            raise SystemExit(f"vaelab data watermarks failed on {count} images: {done.stderr[-1000:]}")
        result = json.loads(done.stdout.splitlines()[1])
        row[run_name] = {"seconds": float(seconds), "peak_rss_mb": int(rss),
                         "decoded": sum(g["sampled"] + g["duplicates"] for g in result["groups"]) if run_name == "first" else 0,
                         "duplicates": sum(g["duplicates"] for g in result["groups"]),
                         "cached_groups": result["cached_groups"], "flagged": len(result["flagged"])}
    shutil.rmtree(root)
    print(f"  scale {count:7d} images: first {row['first']['seconds']:.1f} s, {row['first']['peak_rss_mb']} MB peak, "
          f"{row['first']['decoded']} decoded, {row['first']['flagged']} flagged; cached rerun {row['cached']['seconds']:.1f} s, "
          f"{row['cached']['peak_rss_mb']} MB", file=sys.stderr, flush=True)
    return row


def summarise(conditions: list[dict], opacities: list[float]) -> list[dict]:
    rows = []
    for opacity in opacities:
        these = [c for c in conditions if c["opacity"] == opacity]
        row = {"opacity": opacity, "conditions": len(these),
               "clean_sources": sum(len(c["clean"]["ours"]) for c in these)}
        for method in ("ours", "baseline"):
            hits = sum(c["stamped"][method] >= wm.WATERMARK_SCORE for c in these)
            false = sum(s >= wm.WATERMARK_SCORE for c in these for s in c["clean"][method])
            first = sum(c["stamped"][method] > max(c["clean"][method]) for c in these)
            row[method] = {"recall": hits / len(these), "precision": hits / (hits + false) if hits + false else None,
                           "false_positives": false, "ranked_first": first / len(these),
                           "stamped_min": round(min(c["stamped"][method] for c in these), 2),
                           "stamped_median": round(float(np.median([c["stamped"][method] for c in these])), 2),
                           "clean_max": round(max(s for c in these for s in c["clean"][method]), 2)}
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED, help="photos with a metadata.json (a JSON list with 'file')")
    parser.add_argument("--groups", type=int, default=8, help="synthetic sources per deal")
    parser.add_argument("--repeats", type=int, default=3, help="deals of the photos into sources")
    parser.add_argument("--opacities", type=float, nargs="+", default=[0.05, 0.10, 0.15, 0.20, 0.30])
    parser.add_argument("--anchors", nargs="+", default=list(ANCHORS), choices=list(ANCHORS))
    parser.add_argument("--per-source", type=int, default=wm.PER_GROUP)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N photos")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--work", type=Path, default=None, help="folder for the re-encoded photos [default: the temp folder]")
    parser.add_argument("--scale", type=int, nargs="*", default=[1000, 100_000],
                        help="also run the command on collections of these many images (links to the photos); "
                             "--scale alone skips it")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 48 photos, 3 sources of 16, opacity 0.3")
    args = parser.parse_args()
    if args.quick:
        args.limit, args.groups, args.repeats, args.per_source = 48, 3, 1, 16
        args.opacities, args.anchors, args.scale = [0.3], ["bottom-right"], [40]
    if not (args.images / "metadata.json").is_file():
        print(f"error: {args.images / 'metadata.json'}: not found; pass --images with a folder of photos and "
              "its metadata.json", file=sys.stderr)
        return 2
    print(f"watermark audit on {args.images}: {args.groups} sources x {args.repeats} deals, up to {args.per_source} "
          f"photos judged per source, opacities {args.opacities}, anchors {args.anchors}", file=sys.stderr)
    result = run(args)
    rows = summarise(result["conditions"], args.opacities)
    work = Path(tempfile.mkdtemp(prefix="vaelab-watermarks-scale-", dir=args.work))
    try:
        scale = [scale_run(args, count, work, sources=2 if args.quick else 20) for count in args.scale]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nthreshold: score >= {wm.WATERMARK_SCORE:g}; {len(result['null']['ours'])} clean sources with no stamp in any "
          f"source: vaelab max {max(result['null']['ours']):.2f}, raw median max {max(result['null']['baseline']):.2f}")
    header = ("| opacity | stamped sources | clean sources | method | precision | recall | FP | ranked first "
              "| stamped score min / median | clean max |")
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for row in rows:
        for method, label in (("ours", "vaelab"), ("baseline", "raw median")):
            m = row[method]
            precision = "-" if m["precision"] is None else f"{m['precision']:.2f}"
            print(f"| {row['opacity']:.2f} | {row['conditions']} | {row['clean_sources']} | {label} | {precision} | "
                  f"{m['recall']:.2f} | {m['false_positives']} | {m['ranked_first']:.2f} | "
                  f"{m['stamped_min']:.1f} / {m['stamped_median']:.1f} | "
                  f"{m['clean_max']:.2f} |")
    if scale:
        print("\n| images | sources | first run s | peak RSS MB | decoded | copies left out | flagged "
              "| cached rerun s | peak RSS MB |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for row in scale:
            first, cached = row["first"], row["cached"]
            print(f"| {row['images']:,} | {row['sources']} | {first['seconds']:.1f} | {first['peak_rss_mb']} | "
                  f"{first['decoded']} | {first['duplicates']} | {first['flagged']} | {cached['seconds']:.1f} | "
                  f"{cached['peak_rss_mb']} |")
    print(json.dumps({"benchmark": "watermarks", "images": str(args.images), "groups": args.groups,
                      "repeats": args.repeats, "per_source": args.per_source, "threshold": wm.WATERMARK_SCORE,
                      "rows": rows, "null_max": {k: round(max(v), 2) for k, v in result["null"].items()},
                      "scale": scale, "seconds": result["seconds"], "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                      "quick": args.quick}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

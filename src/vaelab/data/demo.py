"""The built-in figure set: deterministic synthetic studio photos of people.

`vaelab train` with no config must work with no download, so we draw our own collection.
It mimics the user's: JPEGs grouped in sets (one photo session each) under a few sources,
tags in dash-separated file names, a metadata.json with sizes and person boxes, portrait
and landscape canvases, and two sources that stamp a watermark. The figures are large,
flat-coloured and contrast with the wall, so that a small 64x64 VAE learns recognisable
people within minutes on a CPU.

Every image depends only on (seed, image index) and the set plan, which depends only on
(count, seed), so the output is byte-identical whatever the number of worker processes.

This module plans the sets and draws the scene around the people; a person (pose, clothes,
shading) is drawn by `demo_figure.py`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from vaelab.data.demo_figure import build_figure, paint, person_bounds, scaled, shift_geom
from vaelab.errors import VaelabError
from vaelab.files import write_text

VERSION = 1  # bump whenever the drawing changes (here or in demo_figure.py), so that cached renders are redone
MARKER = ".demo.json"  # written last: its presence means the folder is complete

# (source folder, watermark text or None)
SOURCES = [("studio-a", None), ("studio-b", None), ("lumen-photo", "© LUMEN PHOTO"),
           ("north-light", None), ("pixelhaus", "© PIXELHAUS")]
CANVASES = [(480, 640), (427, 640), (640, 427), (640, 480), (640, 640), (512, 512)]  # (w, h)
# Pose names are single words: file-name tags split on "-" and stop at the first "_".
POSES = ["standing", "walking", "sitting", "reaching", "kneeling"]  # reaching = arms raised
TOPS = {"red": (200, 30, 40), "blue": (30, 70, 200), "green": (40, 150, 60),
        "yellow": (235, 200, 40), "orange": (235, 120, 30), "purple": (120, 50, 160),
        "pink": (235, 120, 170), "white": (240, 240, 235), "black": (25, 25, 30),
        "teal": (20, 140, 140)}
BOTTOMS = [(50, 70, 120), (30, 30, 35), (190, 170, 120), (120, 120, 125), (240, 240, 235),
           (110, 60, 40), (150, 30, 50)]
SHOES = [(35, 30, 30), (90, 60, 35), (235, 235, 230)]
SKINS = [(255, 219, 190), (234, 190, 150), (198, 145, 105), (150, 100, 70), (100, 65, 45)]
HAIRS = [(30, 25, 20), (85, 55, 30), (170, 120, 60), (225, 195, 130), (120, 40, 25),
         (150, 150, 150)]
WALLS = [(200, 200, 205), (214, 200, 178), (170, 190, 215), (160, 180, 160), (60, 62, 70),
         (80, 95, 120), (200, 165, 165), (40, 80, 85)]
FLOORS = [(120, 120, 120), (150, 110, 75), (70, 70, 75), (225, 220, 205), (95, 80, 70)]
STOOLS = [(150, 110, 70), (110, 110, 115), (225, 225, 220)]
NAMES = ["ana", "bela", "chen", "dara", "emil", "farah", "goran", "hana", "ivo", "jun",
         "kofi", "lena"]

SIDE_VIEW = {"standing": 0.3, "walking": 0.7, "sitting": 0.6, "reaching": 0.3, "kneeling": 0.75}


def luma(c):
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def far_from(colours, ref, min_dist, rng):
    """Pick a colour at least min_dist from ref (strong contrast helps the VAE), else any."""
    ok = [c for c in colours if math.dist(c, ref) >= min_dist] or list(colours)
    return ok[int(rng.integers(len(ok)))]


# -----------------------------------------------------------------------------
# The plan: models, sets and sources, fixed by (count, seed) alone

def plan_sets(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng([seed, 1])
    models = [{"name": name, "skin": SKINS[int(rng.integers(len(SKINS)))],
               "hair": HAIRS[int(rng.integers(len(HAIRS)))],
               "long_hair": bool(rng.random() < 0.4), "build": float(rng.uniform(0.85, 1.2))}
              for name in NAMES]
    # ~30 images a set, but at least 6 sets so that even a tiny render shows every canvas
    n_sets = min(count, max(6, round(count / 30)))
    weights = rng.uniform(0.67, 1.33, n_sets)
    sizes = np.maximum(1, np.floor(weights / weights.sum() * count)).astype(int)
    while (gap := count - int(sizes.sum())) != 0:  # floor() leaves a remainder; max() may overshoot
        sizes[int(np.argmin(sizes) if gap > 0 else np.argmax(sizes))] += 1 if gap > 0 else -1
    canvas_order = rng.permutation(len(CANVASES))
    sets, start = [], 0
    for k, size in enumerate(sizes):
        model_index = int(rng.integers(len(models)))
        model = models[model_index]
        walls = [WALLS[i] for i in rng.permutation(len(WALLS))]
        wall = next(c for c in walls if abs(luma(c) - luma(model["skin"])) >= 45)
        floors = [FLOORS[i] for i in rng.permutation(len(FLOORS))]
        floor = next((c for c in floors if abs(luma(c) - luma(wall)) >= 30), floors[0])
        source, watermark = SOURCES[k % len(SOURCES)]
        sets.append({"number": k + 1, "source": source, "watermark": watermark,
                     "size": CANVASES[canvas_order[k % len(CANVASES)]],
                     "wall": wall, "floor": floor, "light": int(rng.choice([-1, 1])),
                     "stool": STOOLS[int(rng.integers(len(STOOLS)))], "model": model,
                     "models": models, "model_index": model_index,
                     "start": start, "count": int(size)})
        start += int(size)
    return sets


# -----------------------------------------------------------------------------
# One image: scene, figures, shadow, watermark

def studio(w, h, wall, floor, light, floor_y):
    """Wall with a vertical gradient, brighter on the lit side; floor plane of another tone."""
    # one colour per row times one brightness per band of columns, stretched with NEAREST:
    # 32 bands step under one grey level, and it is 10x faster than computing every pixel
    y = np.arange(h, dtype=np.float32)[:, None]
    wall_rows = (1.1 - 0.18 * y / max(floor_y, 1)) * np.array(wall, np.float32)
    floor_rows = (0.92 + 0.15 * (y - floor_y) / max(h - floor_y, 1)) * np.array(floor, np.float32)
    rows = np.where(y < floor_y, wall_rows, floor_rows)
    side = 1 + 0.08 * light * ((np.arange(32, dtype=np.float32) + 0.5) / 16 - 1)
    bands = np.minimum(rows[:, None, :] * side[None, :, None], 255).astype(np.uint8)
    return Image.fromarray(bands, "RGB").resize((w, h), Image.NEAREST)


def soft_shadow(img, box, floor, light):
    """Blur only a small patch around the feet: blurring the whole image would cost 10x more."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, max(4, (y1 - y0) * 0.06)
    cx, cy = (x0 + x1) / 2 - light * 0.25 * w, y1 - h * 0.3
    pad = int(h * 0.6) + 2
    pw, ph = int(w * 1.2) + 2 * pad, int(h) + 2 * pad
    patch = Image.new("L", (pw, ph), 0)
    ImageDraw.Draw(patch).ellipse([pad, pad, pw - pad, ph - pad], fill=130)
    patch = patch.filter(ImageFilter.GaussianBlur(pad / 2))
    img.paste(scaled(floor, 0.35), (int(cx - pw / 2), int(cy - ph / 2)), patch)


@functools.lru_cache(maxsize=8)
def watermark_font(size):
    return ImageFont.load_default(size=size)  # built into Pillow: no font file to ship


def stamp(img, text):
    """Semi-transparent text in the lower right, as some agencies mark their photos."""
    w, h = img.size
    font = watermark_font(max(12, int(min(w, h) * 0.06)))
    left, top, right, bottom = font.getbbox(text)
    layer = Image.new("RGBA", (right - left + 2, bottom - top + 2), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text((-left + 1, -top + 1), text, font=font, fill=(255, 255, 255, 90))
    margin = int(min(w, h) * 0.03)
    img.paste(layer, (w - layer.width - margin, h - layer.height - margin), layer)



def render_image(seed: int, index: int, spec: dict) -> tuple[Image.Image, dict]:
    """Draw image `index` of set `spec`; return it with its metadata record (file relative)."""
    rng = np.random.default_rng([seed, index])
    # poses are dealt in shuffled blocks of five, so that any 5 consecutive images hold all
    pose = POSES[np.random.default_rng([seed, 2, index // 5]).permutation(5)[index % 5]]
    w, h = spec["size"]
    # bent legs read best from the side, so those poses are mostly shot from the side
    view = "side" if rng.random() < SIDE_VIEW[pose] else "front"
    facing = int(rng.choice([-1, 1]))
    duo = bool(rng.random() < 0.15)
    holding = str(rng.choice(["ball", "bag"])) if rng.random() < 0.2 else None
    people = [spec["model"]]
    if duo:  # a partner: another model from the same roster
        others = [m for i, m in enumerate(spec["models"]) if i != spec["model_index"]]
        people.append(others[int(rng.integers(len(others)))])
    figures, names, x = [], [], 0.0
    for k, model in enumerate(people):
        names_ok = [n for n in TOPS if math.dist(TOPS[n], spec["wall"]) >= 110]
        top_name = names_ok[int(rng.integers(len(names_ok)))]
        skirt_ok = pose in ("standing", "walking", "reaching")
        style = str(rng.choice(["trousers", "shorts", "skirt"], p=[0.55, 0.15, 0.3]))
        clothes = {"top": TOPS[top_name], "bottom": far_from(BOTTOMS, spec["wall"], 80, rng),
                   "shoes": SHOES[int(rng.integers(len(SHOES)))],
                   "style": style if skirt_ok or style == "shorts" else "trousers",
                   "long_sleeves": bool(rng.random() < 0.4),
                   "object": far_from(list(TOPS.values()), TOPS[top_name], 150, rng)}
        if clothes["style"] == "skirt" and rng.random() < 0.5:
            clothes["bottom"] = clothes["top"]  # a dress
        face = facing if k == 0 or view == "front" else -facing  # a side-view duo face each other
        shapes = build_figure(rng, model, pose, view, face, clothes,
                              holding if k == 0 else None, spec["stool"] if pose == "sitting" else None)
        bx0, _, bx1, _ = person_bounds(shapes)
        dx = x - bx0  # place each figure right of the previous one
        shapes = [(kd, shift_geom(kd, g, dx), c, p, s) for kd, g, c, p, s in shapes]
        figures.append(shapes)
        names.append(top_name)
        x = bx1 + dx + 0.06
    # fit: the people fill 78-88% of the height, within 92% of the width
    bounds = [person_bounds(f) for f in figures]
    x0, y0 = min(b[0] for b in bounds), min(b[1] for b in bounds)
    x1, y1 = max(b[2] for b in bounds), max(b[3] for b in bounds)
    frac = rng.uniform(0.78, 0.88)
    scale = min(frac * h / (y1 - y0), 0.92 * w / (x1 - x0))
    fw, fh = (x1 - x0) * scale, (y1 - y0) * scale
    bottom = h - (h - fh) * rng.uniform(0.3, 0.6)
    left = (w - fw) / 2 + rng.uniform(-0.4, 0.4) * (w - fw) / 2
    offset = (left - x0 * scale, bottom - y1 * scale)
    floor_y = int(bottom - fh * rng.uniform(0.12, 0.25))

    img = studio(w, h, spec["wall"], spec["floor"], spec["light"], floor_y)
    to_px = lambda b: (b[0] * scale + offset[0], b[1] * scale + offset[1],  # noqa: E731
                       b[2] * scale + offset[0], b[3] * scale + offset[1])
    for b in bounds:
        soft_shadow(img, to_px(b), spec["floor"], spec["light"])
    draw = ImageDraw.Draw(img)
    for shapes in figures:
        paint(draw, shapes, scale, offset, spec["light"])
    if spec["watermark"]:
        stamp(img, spec["watermark"])

    px0, py0, px1, py1 = to_px((x0, y0, x1, y1))
    bbox = [max(0, math.floor(px0)), max(0, math.floor(py0)),
            min(w, math.ceil(px1) + 1), min(h, math.ceil(py1) + 1)]
    name_tags = [pose, view, names[0]] + (["duo"] if duo else []) + (["holding"] if holding else [])
    set_name = f"set-{spec['number']:03d}"
    name = f"{'-'.join(name_tags)}-{index:04d}_{w}v{h}.jpg"
    tags = name_tags + [f"set_{spec['number']:03d}"] + [f"model_{m['name']}" for m in people]
    record = {"file": f"{spec['source']}/{set_name}/{name}", "width": w, "height": h,
              "tags": tags, "source": spec["source"], "set": set_name, "bbox": bbox}
    return img, record


# -----------------------------------------------------------------------------
# The whole set: plan, render in parallel, write metadata and the completion marker

def _render_job(job):
    out_dir, seed, index, spec = job
    img, record = render_image(seed, index, spec)
    img.save(Path(out_dir) / record["file"], "JPEG", quality=90)
    return record


def render_demo_set(out_dir: Path, count: int = 2000, seed: int = 0, workers: int | None = None) -> dict:
    """Write `count` JPEGs under out_dir/<source>/<set-NNN>/<name>.jpg plus out_dir/metadata.json; return a
    summary dict {"images": count, "sets": ..., "sources": ..., "seconds": ...}."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise VaelabError(f"demo set: count must be a whole number of at least 1, got {count!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise VaelabError(f"demo set: seed must be a whole number of at least 0, got {seed!r}")
    count, seed = int(count), int(seed)
    if workers is not None and workers < 1:
        raise VaelabError(f"demo set: workers must be at least 1, got {workers!r}")
    if out_dir.exists() and not out_dir.is_dir():
        raise VaelabError(f"demo set: {out_dir} is a file, not a folder; choose another output folder")
    wanted = {"version": VERSION, "count": count, "seed": seed}
    marker = out_dir / MARKER
    try:
        done = json.loads(marker.read_text(encoding="utf-8"))
        if {k: done.get(k) for k in wanted} == wanted and (out_dir / "metadata.json").is_file():
            return {"images": count, "sets": done["sets"], "sources": done["sources"],
                    "seconds": round(time.perf_counter() - started, 3), "cached": True}
    except (OSError, ValueError, KeyError):
        pass  # no marker, or an unreadable one: render from scratch
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)  # until the new marker lands, the folder counts as partial

    sets = plan_sets(count, seed)
    jobs = []
    for spec in sets:
        (out_dir / spec["source"] / f"set-{spec['number']:03d}").mkdir(parents=True, exist_ok=True)
        jobs += [(str(out_dir), seed, i, spec) for i in range(spec["start"], spec["start"] + spec["count"])]
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    if workers == 1:
        records = [_render_job(job) for job in jobs]
    else:
        with Pool(workers) as pool:
            records = pool.map(_render_job, jobs, chunksize=max(1, len(jobs) // (workers * 8)))

    # a re-render with another count or seed must not leave stray images of the old one
    keep = {r["file"] for r in records}
    for source, _ in SOURCES:
        for old in sorted((out_dir / source).glob("set-*/*.jpg")):
            if old.relative_to(out_dir).as_posix() not in keep:
                old.unlink()
        for folder in sorted((out_dir / source).glob("set-*")):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    body = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n"
    write_text(out_dir / "metadata.json", body)
    summary = {"images": count, "sets": len(sets), "sources": len({s["source"] for s in sets})}
    write_text(marker, json.dumps({**wanted, **summary}) + "\n")
    return {**summary, "seconds": round(time.perf_counter() - started, 3), "cached": False}

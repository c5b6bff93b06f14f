"""Watermark audit: find the sources (or, without sources, the sets) that stamp a fixed mark on
every image, show the mark, and say which filter line excludes them.

The method, per group of images (a source; a set folder where images have no source):

1. Views. Each image's luminance is cut into squares of side min(width, height) anchored at
   the 3 x 3 grid of frame positions (corners, edge centres, centre) and resized to
   CANVAS x CANVAS. A mark anchored to a corner, an edge or the centre of the frame, sized
   with the short side, lands on the same canvas pixels in every image of the group, whatever
   the image's size or orientation (a portrait image has 3 distinct squares, top to bottom; a
   landscape one, left to right; a square image one).
2. High-pass. Each view minus its Gaussian blur (HIGH_PASS_SIGMA canvas pixels) keeps edges and
   strokes and drops lighting, colour and composition.
3. Consistency. Per pixel and anchor, the median residual over the group's images, divided by
   its standard error (1.2533 x the spread, a MAD, over sqrt(n); the spread floored at
   SPREAD_FLOOR grey levels for flat studio walls). A fixed overlay pushes the same pixels the
   same way in every image, so its z-values grow with sqrt(n); anything that moves between
   images (people, floors, JPEG blocks) has a median near 0. Where images of a group are alike
   (one session), the z-map's own spread is divided out when it exceeds 1.
4. Score. The largest mean of z^2 over a WINDOW x WINDOW window, over the anchors: at most 2.9
   for the 24 clean sources of benchmarks/watermarks.py, 10 or more for a 10%-opacity logo on 64
   photos. WATERMARK_SCORE (6) flags, UNCLEAR_SCORE (3) says "unclear". Groups with fewer than
   MIN_IMAGES distinct images are "too few to tell".

Copies of one photo in a sample (re-posted, re-encoded, resized) agree on every pixel and would
make the median look surer than it is, so images whose 32x32 thumbnails correlate above 0.99 with
an earlier one are left out and counted as duplicates.

Nothing is compared across groups, so every group is judged on its own images: a mark shared
by several sources flags each of them, and adding images to one group never changes another's
verdict. Known limit: a session shot from a tripod has a background fixed to the frame too; a
source's sample is spread over its set folders so that no one session makes the median, but a
set judged on its own can be flagged for its backdrop (the PNG shows which).

Memory is bounded by sampling: at most PER_GROUP images per group (spread over its folders,
picked by a hash of the path, so the same images each run), held as 3 float16 canvases each
(about 25 MB for 64 images at 256 px), one group per worker. Each group's result is cached in
`<cache_dir>/watermarks/` under a key of its sampled files (path, size, mtime) and the method's
settings, so a rerun decodes only the groups that changed.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter

from vaelab.data.collection import Collection
from vaelab.data.images import ImageError, load_luminance
from vaelab.data.index import folder_tag
from vaelab.data.metadata import Metadata, Skip
from vaelab.data.select import split_fraction
from vaelab.files import atomic_path

VERSION = 2  # bump when the method changes, so that cached group results are recomputed
CANVAS = 256  # side of every view; 128 blurs text strokes into JPEG noise (measured on the demo set)
HIGH_PASS_SIGMA = 1.5
SPREAD_FLOOR = 2.0  # grey levels: JPEG noise on a flat wall would otherwise divide by ~0
WINDOW = 9
THUMBNAIL = 32  # side of the thumbnail that finds copies of one photo in a sample
DUPLICATE_CORRELATION = 0.99  # copies measure 0.9999; different photos of one demo session at most 0.95
PER_GROUP = 64
MIN_IMAGES = 16
WATERMARK_SCORE = 6.0
UNCLEAR_SCORE = 3.0
VERDICTS = ("watermark", "unclear", "clean", "too few to tell")

# (name, x, y): where the square view sits in the frame, as fractions of the free space
ANCHORS = (("top-left", 0.0, 0.0), ("top", 0.5, 0.0), ("top-right", 1.0, 0.0),
           ("left", 0.0, 0.5), ("centre", 0.5, 0.5), ("right", 1.0, 0.5),
           ("bottom-left", 0.0, 1.0), ("bottom", 0.5, 1.0), ("bottom-right", 1.0, 1.0))
PORTRAIT, LANDSCAPE, SQUARE = 0, 1, 2


@dataclass
class Method:
    """The audit's settings; all of them are part of each group's cache key."""

    canvas: int = CANVAS
    high_pass_sigma: float = HIGH_PASS_SIGMA  # 0: raw luminance (the benchmark's baseline)
    spread_floor: float = SPREAD_FLOOR
    window: int = WINDOW
    per_group: int = PER_GROUP
    min_images: int = MIN_IMAGES


@dataclass
class Group:
    name: str
    kind: str  # "source" or "set"
    indices: np.ndarray  # metadata indices, sorted
    exclude_tag: Optional[str] = None  # a set's folder tag, when every image carries it


@dataclass
class GroupResult:
    name: str
    kind: str
    images: int
    sampled: int = 0  # distinct images the estimate used (failures and copies not counted)
    duplicates: int = 0  # copies of another sampled photo, left out
    score: Optional[float] = None
    verdict: str = "too few to tell"
    where: Optional[str] = None  # the third of the frame where the mark is strongest
    mark: Optional[np.ndarray] = field(default=None, repr=False)  # float16 (S, S) median residual
    peak: Optional[tuple[int, int]] = None  # (row, column) of the mark in `mark`
    exclude_tag: Optional[str] = None
    png: Optional[str] = None
    failed: list[Skip] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "images": self.images, "sampled": self.sampled,
                "duplicates": self.duplicates,
                "score": None if self.score is None else round(self.score, 2), "verdict": self.verdict,
                "where": self.where, "png": self.png}


@dataclass
class Audit:
    groups: list[GroupResult]  # most suspicious first
    method: Method
    skipped: list[Skip] = field(default_factory=list)
    cached: int = 0  # groups read from the cache

    def flagged(self) -> list[GroupResult]:
        return [g for g in self.groups if g.verdict == "watermark"]


# --------------------------------------------------------------------------------------------
# Groups and samples
# --------------------------------------------------------------------------------------------


def parent_folder(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else "."


def groups_of(metadata: Metadata, indices: np.ndarray) -> list[Group]:
    """One group per source; images without a source are grouped by their set folder."""
    indices = np.sort(np.asarray(indices))
    groups = []
    source_ids = metadata.source_ids[indices]
    for source_id in np.unique(source_ids[source_ids >= 0]):
        groups.append(Group(str(metadata.source_names[source_id]), "source", indices[source_ids == source_id]))
    loose = indices[source_ids < 0]
    folders = np.array([parent_folder(metadata.path(i)) for i in loose], dtype=str)
    for folder in np.unique(folders):
        members = loose[folders == folder]
        tag = folder_tag(folder.rsplit("/", 1)[-1])
        carried = all(tag in metadata.tags(i) for i in members) if tag else False
        groups.append(Group(folder, "set", members, tag if carried else None))
    return groups


def sample_group(metadata: Metadata, indices: np.ndarray, size: int) -> np.ndarray:
    """Up to `size` of `indices`, taken round-robin over their set folders in a fixed, path-hashed
    order: the same images every run, and no one session dominates a source's median."""
    indices = np.asarray(indices)
    if len(indices) <= size:
        return np.sort(indices)
    order_key = split_fraction(metadata.paths[indices])
    _, folder = np.unique([parent_folder(metadata.path(i)) for i in indices], return_inverse=True)
    by_folder = np.lexsort((order_key, folder))
    starts = np.flatnonzero(np.r_[True, folder[by_folder][1:] != folder[by_folder][:-1]])
    rank = np.empty(len(indices), dtype=np.int64)
    rank[by_folder] = np.arange(len(indices)) - np.repeat(starts, np.diff(np.r_[starts, len(indices)]))
    return np.sort(indices[np.lexsort((order_key, rank))[:size]])


# --------------------------------------------------------------------------------------------
# One image: its anchored views
# --------------------------------------------------------------------------------------------


@dataclass
class ImageViews:
    views: np.ndarray  # float16 (3, S, S): high-passed squares from the start, middle and end of the long side
    orientation: int  # PORTRAIT, LANDSCAPE or SQUARE
    size: tuple[int, int]  # (width, height) as decoded (a draft scale of the displayed image)
    thumbnail: np.ndarray  # float32 (THUMBNAIL^2,): the whole image, zero mean, unit norm (finds duplicates)


def image_views(path: Path, method: Method) -> ImageViews:
    """One image's anchored views. Raises ImageError."""
    from PIL import Image

    gray = Image.fromarray(load_luminance(path, method.canvas))
    width, height = gray.size
    side = min(width, height)
    views = np.empty((3, method.canvas, method.canvas), dtype=np.float16)
    for k, along in enumerate((0.0, 0.5, 1.0)):
        left, top = along * (width - side), along * (height - side)
        square = gray.resize((method.canvas, method.canvas), Image.Resampling.BILINEAR,
                             box=(left, top, left + side, top + side), reducing_gap=3.0)
        view = np.asarray(square, dtype=np.float32)
        if method.high_pass_sigma > 0:
            view = view - gaussian_filter(view, method.high_pass_sigma)
        views[k] = view
    orientation = PORTRAIT if height > width else LANDSCAPE if width > height else SQUARE
    thumbnail = np.asarray(gray.resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX), dtype=np.float32).ravel()
    thumbnail -= thumbnail.mean()
    return ImageViews(views, orientation, (width, height), thumbnail / max(float(np.linalg.norm(thumbnail)), 1e-6))


def distinct(thumbnails: np.ndarray, threshold: float = DUPLICATE_CORRELATION) -> np.ndarray:
    """Indices of the images to keep: each one whose thumbnail correlates above `threshold` with an
    earlier kept one is a copy (re-encoded, resized, re-posted) and is dropped, because copies agree
    on every pixel and their median would show the photo itself as a fixed overlay."""
    correlation = thumbnails @ thumbnails.T
    kept: list[int] = []
    for i in range(len(thumbnails)):
        if not kept or correlation[i, kept].max() < threshold:
            kept.append(i)
    return np.array(kept, dtype=np.int64)


def anchor_squares(orientations: np.ndarray) -> np.ndarray:
    """int (9, n): which of each image's 3 squares every anchor uses."""
    table = np.empty((len(ANCHORS), len(orientations)), dtype=np.int64)
    for a, (_, x, y) in enumerate(ANCHORS):
        table[a] = np.where(orientations == PORTRAIT, round(2 * y), np.where(orientations == LANDSCAPE, round(2 * x), 1))
    return table


# --------------------------------------------------------------------------------------------
# One group: the statistic
# --------------------------------------------------------------------------------------------


def consistency(stack: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """(z, median) per pixel of a (n, S, S) stack of residuals: the median over the images in
    units of its standard error, with the map's own spread divided out when it exceeds 1."""
    median = np.median(stack, axis=0)
    spread = 1.4826 * np.median(np.abs(stack - median), axis=0)
    z = median / (1.2533 * np.maximum(spread, floor) / np.sqrt(len(stack)))
    z /= max(1.0, 1.4826 * float(np.median(np.abs(z))))
    return z, median


def score_views(views: np.ndarray, orientations: np.ndarray, sizes: np.ndarray, method: Method) -> dict:
    """Scores of one group's (n, 3, S, S) views, images of `sizes` (n, 2) (width, height):
    {"scores": (9,), "peaks": (9, 2) row and column in the view, "spots": (9, 2) x and y of the
    peak in the frame as fractions, "mark": (S, S) the best view's median residual}."""
    table = anchor_squares(orientations)
    canvas = views.shape[-1]
    scores, peaks, spots = np.zeros(len(ANCHORS)), np.zeros((len(ANCHORS), 2), np.int64), np.zeros((len(ANCHORS), 2))
    best, mark = -1.0, None
    done: dict[bytes, tuple[float, tuple[int, int]]] = {}
    width, height = sizes[:, 0].astype(np.float64), sizes[:, 1].astype(np.float64)
    side = np.minimum(width, height)
    for a, (_, x, y) in enumerate(ANCHORS):
        key = table[a].tobytes()  # anchors that pick the same squares share one computation
        if key not in done:
            stack = views[np.arange(len(views)), table[a]].astype(np.float32)
            z, median = consistency(stack, method.spread_floor)
            energy = uniform_filter(z * z, size=method.window, mode="constant")
            peak = np.unravel_index(int(np.argmax(energy)), energy.shape)
            done[key] = (float(energy[peak]), (int(peak[0]), int(peak[1])))
            if done[key][0] > best:
                best, mark = done[key][0], median.astype(np.float16)
        scores[a], peaks[a] = done[key]
        # the peak in each image's frame, averaged: the view sits at x * (width - side), y * (height - side)
        row, column = (peaks[a] + 0.5) / canvas
        spots[a] = (np.mean((x * (width - side) + column * side) / width),
                    np.mean((y * (height - side) + row * side) / height))
    return {"scores": scores, "peaks": peaks, "spots": spots, "mark": mark}


def place_name(x: float, y: float) -> str:
    """'bottom-right', 'top', 'left', 'centre', ...: the third of the frame that (x, y) is in."""
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else ""
    column = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
    return "-".join(part for part in (row, column) if part) or "centre"


def verdict(score: Optional[float]) -> str:
    if score is None:
        return "too few to tell"
    return "watermark" if score >= WATERMARK_SCORE else "unclear" if score >= UNCLEAR_SCORE else "clean"


def score_group(task: tuple[list[str], Method]) -> dict:
    """Worker: decode a group's sample and score it. Returns small arrays only."""
    paths, method = task
    decoded, failed = [], []
    for path in paths:
        try:
            decoded.append(image_views(Path(path), method))
        except ImageError as error:
            failed.append((path, str(error).split(": ", 1)[-1]))
    keep = distinct(np.stack([d.thumbnail for d in decoded])) if decoded else np.zeros(0, np.int64)
    decoded = [decoded[i] for i in keep]
    result = {"used": len(decoded), "duplicates": len(paths) - len(failed) - len(decoded), "failed": failed,
              "scores": np.zeros(0), "peaks": np.zeros((0, 2), np.int64), "spots": np.zeros((0, 2)), "mark": None}
    if len(decoded) >= method.min_images:
        result.update(score_views(np.stack([d.views for d in decoded]), np.array([d.orientation for d in decoded]),
                                  np.array([d.size for d in decoded]), method))
        if result["scores"].max() < UNCLEAR_SCORE:
            result["mark"] = None  # a clean group's map is noise: neither kept nor cached (128 KB a group)
    return result


# --------------------------------------------------------------------------------------------
# The audit: every group, cached, in parallel
# --------------------------------------------------------------------------------------------


def group_key(metadata: Metadata, sample: np.ndarray, stats: np.ndarray, method: Method) -> str:
    digest = hashlib.sha256(json.dumps([VERSION, vars(method), str(metadata.root)], sort_keys=True).encode())
    digest.update(b"\0".join(metadata.paths[sample].tolist()))
    digest.update(np.ascontiguousarray(stats, dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


def _read_cached(path: Path) -> Optional[dict]:
    try:
        with np.load(path, allow_pickle=False) as saved:
            mark = saved["mark"]
            return {"used": int(saved["used"]), "duplicates": int(saved["duplicates"]),
                    "scores": saved["scores"], "peaks": saved["peaks"],
                    "spots": saved["spots"], "mark": mark if mark.size else None,
                    "failed": list(zip(saved["failed_files"].tolist(), saved["failed_reasons"].tolist()))}
    except (OSError, ValueError, KeyError):
        return None  # missing or unreadable: compute it again


def _write_cached(path: Path, result: dict) -> None:
    files, reasons = zip(*result["failed"]) if result["failed"] else ((), ())
    try:
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            np.savez(handle, used=result["used"], duplicates=result["duplicates"], scores=result["scores"],
                     peaks=result["peaks"], spots=result["spots"],
                     mark=result["mark"] if result["mark"] is not None else np.zeros((0, 0), np.float16),
                     failed_files=np.array(files, dtype=str), failed_reasons=np.array(reasons, dtype=str))
    except OSError:
        pass  # a cache that cannot be written only costs a recomputation


def audit(collection: Collection, cache_dir: Path, method: Optional[Method] = None, workers: int = 1,
          progress: bool = False, use_cache: bool = True) -> Audit:
    """Score every group of the selected images; returns the groups, most suspicious first."""
    method = method or Method()
    metadata, selected = collection.metadata, collection.selected
    folder = Path(cache_dir) / "watermarks"
    results, jobs = [], []
    cached = 0
    for group in groups_of(metadata, selected):
        result = GroupResult(group.name, group.kind, len(group.indices), exclude_tag=group.exclude_tag)
        results.append(result)
        if len(group.indices) < method.min_images:
            continue
        sample = sample_group(metadata, group.indices, method.per_group)
        stats = collection.file_stats[np.searchsorted(selected, sample)]
        cache_file = folder / f"{group_key(metadata, sample, stats, method)}.npz"
        found = _read_cached(cache_file) if use_cache else None
        if found is not None:
            cached += 1
            _fill(result, found)
        else:
            jobs.append((result, [str(metadata.file(i)) for i in sample], cache_file))
    for (result, _, cache_file), found in zip(jobs, _run(jobs, method, workers, progress)):
        if use_cache:
            folder.mkdir(parents=True, exist_ok=True)
            _write_cached(cache_file, found)
        _fill(result, found)
    order = sorted(results, key=lambda r: (r.score is None, -(r.score or 0.0), r.name))
    return Audit(order, method, [skip for r in results for skip in r.failed], cached)


def _fill(result: GroupResult, found: dict) -> None:
    result.sampled = found["used"]
    result.duplicates = found["duplicates"]
    result.failed = [Skip(path, f"not used by the watermark audit: {reason}") for path, reason in found["failed"]]
    if len(found["scores"]):
        result.score = float(found["scores"].max())
        best = int(np.argmax(found["scores"]))
        result.peak = tuple(int(v) for v in found["peaks"][best])
        result.mark = found["mark"]
    result.verdict = verdict(result.score)
    if result.verdict in ("watermark", "unclear"):  # a clean group's strongest spot is noise
        result.where = place_name(*found["spots"][best])


def _run(jobs: list, method: Method, workers: int, progress: bool) -> Iterator[dict]:
    """Each job's result in order; groups run in `workers` processes, one group per task, so that
    a worker holds one sample at a time and the main process only small results."""
    tasks = [(paths, method) for _, paths, _ in jobs]
    total = sum(len(paths) for paths in tasks)
    if workers > 1 and len(tasks) > 1:
        pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)))
        outcomes = pool.map(score_group, tasks)
    else:
        pool, outcomes = None, map(score_group, tasks)
    try:
        if not progress or total == 0:
            yield from outcomes
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("watermarks"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
                      TimeRemainingColumn(), transient=True) as bar:
            task = bar.add_task("", total=total)
            for (paths, _), outcome in zip(tasks, outcomes):
                bar.advance(task, len(paths))
                yield outcome
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)

"""What the watermark audit hands the user: a picture of each flagged group's mark and the
data.filter lines that exclude the flagged groups (the audit itself is in `watermarks`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vaelab.config import FilterConfig
from vaelab.data.grid import save_png
from vaelab.data.watermarks import Audit


def mark_picture(mark: np.ndarray, peak: tuple[int, int], zoom: int = 4) -> np.ndarray:
    """uint8 (S, 2S + gap, 3): the median residual of the view (mid-grey = 0, contrast stretched)
    beside a `zoom`x close-up of the S/zoom square around the mark."""
    values = mark.astype(np.float32)
    gain = 110.0 / max(float(np.percentile(np.abs(values), 99.9)), 1e-3)
    grey = np.clip(128.0 + gain * values, 0, 255).astype(np.uint8)
    side, half = len(grey), len(grey) // (2 * zoom)
    top = int(np.clip(peak[0] - half, 0, side - 2 * half))
    left = int(np.clip(peak[1] - half, 0, side - 2 * half))
    close = grey[top : top + 2 * half, left : left + 2 * half].repeat(zoom, 0).repeat(zoom, 1)
    picture = np.full((side, 2 * side + 4, 3), 24, dtype=np.uint8)
    picture[:, :side] = grey[..., None]
    picture[: len(close), side + 4 : side + 4 + close.shape[1]] = close[..., None]
    return picture


def safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return cleaned or "group"


def write_marks(result: Audit, out: Path) -> list[Path]:
    """A PNG per flagged group, `out/watermark-<name>.png`; sets each group's `png`."""
    written = []
    for group in result.flagged():
        if group.mark is None:
            continue
        path = Path(out) / f"watermark-{safe_name(group.name)}.png"
        save_png(mark_picture(group.mark, group.peak or (0, 0)), path)
        group.png = str(path)
        written.append(path)
    return written


def exclusion_lines(result: Audit, rules: FilterConfig) -> list[str]:
    """The config lines to paste: data.filter.exclude_sources and, for flagged sets,
    data.filter.exclude with their folder tags; each keeps what `rules` already excludes."""
    import yaml

    flow = lambda names: yaml.safe_dump(list(names), default_flow_style=True, width=10**6).strip()  # noqa: E731
    flagged = result.flagged()
    sources = [g.name for g in flagged if g.kind == "source"]
    tags = [g.exclude_tag for g in flagged if g.kind == "set" and g.exclude_tag]
    lines = []
    if sources:
        lines.append(f"data.filter.exclude_sources: {flow(dict.fromkeys([*rules.exclude_sources, *sources]))}")
    if tags:
        lines.append(f"data.filter.exclude: {flow(dict.fromkeys([*rules.exclude, *tags]))}")
    return lines


def untaggable(result: Audit) -> list[str]:
    """Flagged set folders whose images carry no folder tag, so no filter line can drop them."""
    return [g.name for g in result.flagged() if g.kind == "set" and not g.exclude_tag]

"""Open, check and fit one image file: the only place vaelab decodes an image.

The loader calls `load_fitted` once per image per cold epoch, so it does as little work as
it can: for a JPEG it asks libjpeg to decode at 1/2, 1/4 or 1/8 scale (`draft`) whenever
that still leaves enough pixels, crops and resizes in one resample call, and applies the
EXIF orientation only to the small result. Every failure is an `ImageError` whose message
is one line naming the file, what is wrong and what to do.
"""

from __future__ import annotations

import math
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vaelab.errors import VaelabError

FITS = ("stretch", "pad", "crop")

# Antialiased resampling; the reducing gap lets Pillow box-reduce first when the draft
# could not shrink enough (e.g. a big photo to 64 px), at no visible cost (>= 3.0).
_RESAMPLE = Image.Resampling.BILINEAR
_REDUCING_GAP = 3.0

_T = Image.Transpose
# EXIF orientation -> the transpose that turns the stored pixels into the displayed image.
_TRANSPOSE = {2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM,
              5: _T.TRANSPOSE, 6: _T.ROTATE_270, 7: _T.TRANSVERSE, 8: _T.ROTATE_90}
_SWAPS_AXES = {5, 6, 7, 8}

# Modes that `_to_8bit` turns into correct 8-bit L/LA/RGB/RGBA; anything else is refused
# rather than guessed at.
_SUPPORTED_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK",
                    "YCbCr", "HSV", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


class ImageError(VaelabError):
    """An image that cannot be used. str(error) is one line naming the file and the reason;
    `.reason` is a short slug: 'missing', 'empty', 'not_a_file', 'unreadable', 'not_an_image',
    'truncated', 'corrupt', 'too_large', 'unsupported' or 'bad_bbox'."""

    def __init__(self, message: str, reason: str = "corrupt", path: Path | None = None):
        # A single-message constructor keeps the error picklable and re-raisable by
        # DataLoader workers, which rebuild exceptions from their message alone.
        super().__init__(message)
        self.reason = reason
        self.path = path

    def __reduce__(self):
        return type(self), (str(self), self.reason, self.path)


def _fail(path: Path, reason: str, problem: str, advice: str) -> ImageError:
    one_line = " ".join(f"{problem}; {advice}".split())  # Pillow messages may hold newlines
    return ImageError(f"{path}: {one_line}", reason, path)


@dataclass(frozen=True)
class Fitted:
    pixels: np.ndarray  # uint8, (H, W, 3), C-contiguous, RGB
    box: tuple[int, int, int, int]  # (top, left, height, width) of the real pixels


def box_mask(box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W) mask: 1 on the real pixels inside `box`, 0 on the padding."""
    top, left, height, width = box
    mask = np.zeros(size, dtype=np.uint8)
    mask[top:top + height, left:left + width] = 1
    return mask


@contextmanager
def _decoding(path: Path):
    """Turn whatever Pillow or the OS raises while opening/decoding into one ImageError."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x MAX_IMAGE_PIXELS; we refuse both. The
            # filter is scoped to this block, so global warning settings are untouched.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (ImageError, MemoryError):
        raise
    except FileNotFoundError:
        raise _fail(path, "missing", "file not found", "check the path and the images folder") from None
    except IsADirectoryError:
        raise _fail(path, "not_a_file", "is a directory, not an image file",
                    "point to the image itself") from None
    except PermissionError:
        raise _fail(path, "unreadable", "permission denied",
                    "make the file readable or remove it") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        pixels = f"{found[1]} pixels" if found else "the pixel count"
        raise _fail(path, "too_large",
                    f"{pixels} exceeds the decompression-bomb limit ({Image.MAX_IMAGE_PIXELS})",
                    "if the image is genuine, raise PIL.Image.MAX_IMAGE_PIXELS") from None
    except UnidentifiedImageError:
        if path.stat().st_size == 0:
            raise _fail(path, "empty", "the file is empty (0 bytes)",
                        "copy it again or remove it") from None
        raise _fail(path, "not_an_image", "not an image file that Pillow can read",
                    "remove it or re-save it as JPEG or PNG") from None
    except Exception as e:  # noqa: BLE001 - plugins raise OSError, SyntaxError, struct.error...
        text = str(e) or type(e).__name__
        if isinstance(e, EOFError) or "truncated" in text.lower():
            raise _fail(path, "truncated", f"the image data is truncated ({text})",
                        "copy the file again or remove it") from None
        if "not available" in text:  # e.g. "decoder jpeg2k not available"
            raise _fail(path, "unsupported", f"cannot decode this format ({text})",
                        "re-save it as JPEG or PNG") from None
        raise _fail(path, "corrupt", f"the image data is corrupt ({text})",
                    "re-save the file or remove it") from None


def _open(path: Path, *, may_decode: bool = True) -> tuple[Image.Image, int]:
    """Open lazily (header only) and read the EXIF orientation (1..8)."""
    with _decoding(path):
        img = Image.open(path)
        try:
            # PNG's getexif() decodes the whole image to find a late eXIf chunk; the base
            # method only reads what the header parse already found, which is what
            # read_size wants.
            exif = img.getexif() if may_decode else Image.Image.getexif(img)
            orientation = exif.get(0x0112, 1)
        except BaseException:
            img.close()
            raise
    return img, orientation if orientation in _TRANSPOSE else 1


def _displayed(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation in _SWAPS_AXES else size


def read_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed, i.e. after EXIF orientation, from the header only."""
    path = Path(path)
    img, orientation = _open(path, may_decode=False)
    with img:
        return _displayed(img.size, orientation)


def verify_image(path: Path) -> tuple[int, int]:
    """Fully decode the image to prove it is usable; return its displayed (width, height)."""
    path = Path(path)
    img, orientation = _open(path)
    with img:
        size = _displayed(img.size, orientation)
        with _decoding(path):
            img.draft("RGB", (1, 1))  # JPEG: 1/8 scale still reads every byte of the stream
            img.load()
        _check_mode(img, path)
    return size


def _check_mode(img: Image.Image, path: Path) -> None:
    if img.mode not in _SUPPORTED_MODES:
        raise _fail(path, "unsupported", f"image mode {img.mode} is not supported",
                    "re-save the image as 8-bit RGB")


def _region(bbox, width: int, height: int, path: Path) -> tuple[float, float, float, float]:
    """The bbox [x0, y0, x1, y1) clamped to the displayed image, or the whole image."""
    if bbox is None:
        return 0.0, 0.0, float(width), float(height)
    x0, y0, x1, y1 = (float(v) for v in bbox)
    cx0, cy0 = max(x0, 0.0), max(y0, 0.0)
    cx1, cy1 = min(x1, float(width)), min(y1, float(height))
    if not all(map(math.isfinite, (x0, y0, x1, y1))) or cx1 <= cx0 or cy1 <= cy0:
        raise _fail(path, "bad_bbox",
                    f"bbox {list(bbox)} is empty or outside the {width}x{height} image",
                    "fix the bbox in the metadata or turn bbox_crop off")
    return cx0, cy0, cx1, cy1


def _plan(region, size: tuple[int, int], fit: str):
    """Which displayed rectangle to sample and where it lands: (src, (top, left, h, w))."""
    x0, y0, x1, y1 = region
    rw, rh = x1 - x0, y1 - y0
    out_h, out_w = size
    if fit == "stretch":
        return region, (0, 0, out_h, out_w)
    if fit == "pad":
        scale = min(out_w / rw, out_h / rh)
        cw = min(out_w, max(1, round(rw * scale)))
        ch = min(out_h, max(1, round(rh * scale)))
        return region, ((out_h - ch) // 2, (out_w - cw) // 2, ch, cw)
    # crop: the centred part of the region with the output's aspect ratio
    scale = max(out_w / rw, out_h / rh)
    vw, vh = min(rw, out_w / scale), min(rh, out_h / scale)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - vw / 2, cy - vh / 2, cx + vw / 2, cy + vh / 2), (0, 0, out_h, out_w)


def _to_stored(rect, orientation: int, stored: tuple[int, int]):
    """Map a rectangle from displayed to stored (pre-EXIF) pixel coordinates."""
    x0, y0, x1, y1 = rect
    w, h = stored
    return {1: (x0, y0, x1, y1), 2: (w - x1, y0, w - x0, y1),
            3: (w - x1, h - y1, w - x0, h - y0), 4: (x0, h - y1, x1, h - y0),
            5: (y0, x0, y1, x1), 6: (y0, h - x1, y1, h - x0),
            7: (w - y1, h - x1, w - y0, h - x0), 8: (w - y1, x0, w - y0, x1)}[orientation]


def _draft(img: Image.Image, src, content: tuple[int, int]) -> float:
    """For a JPEG, decode at the smallest DCT scale that still gives `src` at least
    `content` (w, h) pixels. Returns the reduction factor (1 when nothing changed)."""
    x0, y0, x1, y1 = src
    w, h = img.size
    # 1e-6 absorbs float noise that would otherwise cost a whole scale step
    want = (math.ceil(w * content[0] / (x1 - x0) - 1e-6),
            math.ceil(h * content[1] / (y1 - y0) - 1e-6))
    drafted = img.draft("RGB", (max(1, want[0]), max(1, want[1])))
    return w / drafted[1][2] if drafted else 1.0  # drafted box is (0, 0, w/scale, h/scale)


def _to_8bit(img: Image.Image, path: Path) -> Image.Image:
    """L, LA, RGB or RGBA with 8-bit channels: the modes resize handles correctly. Alpha
    (including palette/tRNS transparency) is kept for compositing on the pad colour."""
    _check_mode(img, path)
    mode = img.mode
    transparent = img.info.get("transparency") is not None
    if mode in ("L", "RGB", "LA", "RGBA"):
        return img.convert(mode + "A") if transparent and mode in ("L", "RGB") else img
    if mode in ("P", "PA", "RGBa"):
        return img.convert("RGBA" if transparent or mode != "P" else "RGB")
    if mode == "1":
        return img.convert("L")
    if mode == "F":  # Pillow's convention: F holds L-scale values
        return Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8))
    if mode.startswith("I"):
        # 16-bit grayscale: Pillow's own convert("L") clips at 255 (65535 and 300 both
        # become white), so take the high byte instead. Mode I is treated as 16-bit too.
        return Image.fromarray((np.clip(np.asarray(img), 0, 65535) >> 8).astype(np.uint8))
    return img.convert("RGB")  # CMYK (Adobe-inverted too), YCbCr, HSV, RGBX


def load_fitted(path: Path, size: tuple[int, int], fit: str,
                pad_rgb: tuple[int, int, int] = (0, 0, 0),
                bbox: tuple[float, float, float, float] | None = None) -> Fitted:
    """Decode `path`, crop to `bbox` (displayed full-resolution [x0, y0, x1, y1)) if given,
    and fit it to size=(height, width) by 'stretch', 'pad' (letterbox in pad_rgb) or 'crop'.
    `box` is where the real (non-padding) pixels are. Raises ImageError."""
    path = Path(path)
    out_h, out_w = (int(v) for v in size)
    if fit not in FITS or out_h < 1 or out_w < 1:
        raise VaelabError(f"cannot fit {path} with fit={fit!r} size={size!r}; "
                          f"fit must be one of {', '.join(FITS)} and size [height, width] positive")
    pad_rgb = tuple(int(c) for c in pad_rgb)

    img, orientation = _open(path)
    with img:
        full = img.size
        region = _region(bbox, *_displayed(full, orientation), path)
        src, box = _plan(region, (out_h, out_w), fit)
        top, left, ch, cw = box
        src = _to_stored(src, orientation, full)  # resample in stored orientation...
        content = _displayed((cw, ch), orientation)  # (w, h) before the transpose
        with _decoding(path):
            factor = _draft(img, src, content)
            img.load()
        work = _to_8bit(img, path)
        # The draft image is ceil(full / factor) pixels, so clamp the scaled source box.
        dw, dh = work.size
        x0, y0, x1, y1 = (v / factor for v in src)
        sbox = (max(0.0, x0), max(0.0, y0), min(float(dw), x1), min(float(dh), y1))
        out = work.resize(content, _RESAMPLE, box=sbox, reducing_gap=_REDUCING_GAP)
    if orientation != 1:
        out = out.transpose(_TRANSPOSE[orientation])  # ...and orient only the small result

    if out.mode in ("LA", "RGBA") or (ch, cw) != (out_h, out_w):
        canvas = Image.new("RGB", (out_w, out_h), pad_rgb)
        if out.mode in ("LA", "RGBA"):
            out = out.convert("RGBA")
            canvas.paste(out, (left, top), out)  # alpha-composite onto the pad colour
        else:
            canvas.paste(out.convert("RGB"), (left, top))
        out = canvas
    elif out.mode != "RGB":
        out = out.convert("RGB")

    pixels = np.ascontiguousarray(np.asarray(out))
    if pixels.shape != (out_h, out_w, 3) or pixels.dtype != np.uint8:  # never a wrong image
        raise _fail(path, "corrupt", f"decoded to {pixels.dtype} {pixels.shape}, "
                    f"not uint8 {(out_h, out_w, 3)}", "re-save the image as 8-bit RGB")
    return Fitted(pixels, box)


def load_luminance(path: Path, min_side: int) -> np.ndarray:
    """The displayed image's luminance as uint8 (H, W), decoded at the smallest JPEG scale whose
    short side is still at least `min_side` pixels (or the full image when it is smaller). Used by
    the watermark audit, which needs no colour and no fitting. Raises ImageError."""
    path = Path(path)
    img, orientation = _open(path)
    with img:
        width, height = img.size
        short = min(width, height)
        want = (max(1, math.ceil(width * min_side / short)), max(1, math.ceil(height * min_side / short)))
        with _decoding(path):
            # a JPEG in YCbCr decodes its Y plane alone here: no colour conversion to pay for
            img.draft("L", want)
            img.load()
        work = _to_8bit(img, path)
        gray = work.convert("L") if work.mode != "L" else work
        if orientation != 1:
            gray = gray.transpose(_TRANSPOSE[orientation])
        return np.asarray(gray)

"""vaelab.data.images: geometry of the three fits, bbox, EXIF, modes, bad files, draft."""

import io
import pickle
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps, JpegImagePlugin

from vaelab.data.images import FITS, Fitted, ImageError, box_mask, load_fitted, read_size, verify_image
from vaelab.errors import VaelabError

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
PAD = (10, 20, 30)


def save(tmp_path, name, array_or_image, **kw):
    img = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    path = tmp_path / name
    img.save(path, **kw)
    return path


def solid(w, h, rgb):
    return np.full((h, w, 3), rgb, dtype=np.uint8)


def with_orientation(array, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return Image.fromarray(array), exif


def quadrants(w, h):
    """Four colours, one per quadrant, plus a white bar near the top left: asymmetric under
    every flip and rotation."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2], a[: h // 2, w // 2:] = RED, GREEN
    a[h // 2:, : w // 2], a[h // 2:, w // 2:] = BLUE, YELLOW
    a[2:6, 2: w // 3] = 255
    return a


def draft_spy(monkeypatch):
    """Record the reduction factor every JPEG draft() actually applied."""
    factors = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        before = self.size
        result = original(self, mode, size)
        factors.append(before[0] / result[1][2] if result else 1)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return factors


# --- geometry of the fits ------------------------------------------------------------

def test_pad_wide_image_letterboxes_with_exact_box(tmp_path):
    path = save(tmp_path, "wide.png", solid(100, 50, RED))
    out = load_fitted(path, (32, 32), "pad", pad_rgb=PAD)
    assert isinstance(out, Fitted)
    assert out.pixels.shape == (32, 32, 3) and out.pixels.dtype == np.uint8
    assert out.pixels.flags["C_CONTIGUOUS"]
    assert out.box == (8, 0, 16, 32)
    mask = box_mask(out.box, (32, 32))
    assert mask.dtype == np.uint8 and mask.sum() == 16 * 32
    assert (out.pixels[mask == 1] == RED).all()
    assert (out.pixels[mask == 0] == PAD).all()


def test_pad_tall_image_and_non_square_target(tmp_path):
    tall = save(tmp_path, "tall.png", solid(50, 100, BLUE))
    out = load_fitted(tall, (32, 32), "pad", pad_rgb=PAD)
    assert out.box == (0, 8, 32, 16)
    assert (out.pixels[:, :8] == PAD).all() and (out.pixels[:, 24:] == PAD).all()
    assert (out.pixels[:, 8:24] == BLUE).all()
    # 60x40 (w x h) into height 20, width 60: height limits, scale 0.5 -> 30x20 centred
    out = load_fitted(save(tmp_path, "r.png", solid(60, 40, GREEN)), (20, 60), "pad")
    assert out.pixels.shape == (20, 60, 3) and out.box == (0, 15, 20, 30)


def test_pad_same_aspect_has_no_padding(tmp_path):
    out = load_fitted(save(tmp_path, "sq.png", solid(40, 40, RED)), (20, 20), "pad", pad_rgb=PAD)
    assert out.box == (0, 0, 20, 20) and (out.pixels == RED).all()


def test_stretch_fills_the_target_ignoring_aspect(tmp_path):
    a = solid(100, 50, RED)
    a[:, 50:] = BLUE
    out = load_fitted(save(tmp_path, "s.png", a), (32, 48), "stretch", pad_rgb=PAD)
    assert out.pixels.shape == (32, 48, 3) and out.box == (0, 0, 32, 48)
    assert (out.pixels[:, :22] == RED).all() and (out.pixels[:, 26:] == BLUE).all()


def test_crop_keeps_the_centre(tmp_path):
    a = solid(100, 50, RED)
    a[:, 20:80] = GREEN  # the centre 50x50 (x 25..75) is green, with a margin
    out = load_fitted(save(tmp_path, "c.png", a), (32, 32), "crop", pad_rgb=PAD)
    assert out.box == (0, 0, 32, 32)
    assert (out.pixels == GREEN).all()
    # a tall image crops top and bottom
    b = solid(40, 120, RED)
    b[30:90] = BLUE
    out = load_fitted(save(tmp_path, "t.png", b), (16, 16), "crop")
    assert (out.pixels == BLUE).all()


def test_box_mask_marks_only_the_box():
    mask = box_mask((1, 2, 3, 4), (6, 8))
    expected = np.zeros((6, 8), np.uint8)
    expected[1:4, 2:6] = 1
    assert mask.shape == (6, 8) and (mask == expected).all()


def test_bad_fit_or_size_is_a_clear_error(tmp_path):
    path = save(tmp_path, "ok.png", solid(20, 20, RED))
    with pytest.raises(VaelabError, match="fit must be one of"):
        load_fitted(path, (16, 16), "squash")
    with pytest.raises(VaelabError, match="positive"):
        load_fitted(path, (0, 16), "pad")


# --- bbox ----------------------------------------------------------------------------

@pytest.mark.parametrize("fit", FITS)
def test_bbox_crop_then_fit_shows_only_the_bbox(tmp_path, fit):
    a = solid(200, 100, (128, 128, 128))
    a[16:84, 116:184] = (255, 0, 255)  # a margin of 4 px around the bbox below
    path = save(tmp_path, "b.png", a)
    out = load_fitted(path, (24, 40), fit, pad_rgb=PAD, bbox=(120, 20, 180, 80))
    top, left, h, w = out.box
    real = out.pixels[top:top + h, left:left + w]
    assert np.abs(real.astype(int) - (255, 0, 255)).max() <= 1
    if fit == "pad":  # a 60x60 square bbox into 24x40 -> 24x24 centred
        assert out.box == (0, 8, 24, 24)
        assert (out.pixels[box_mask(out.box, (24, 40)) == 0] == PAD).all()


def test_bbox_is_clamped_to_the_image(tmp_path):
    a = solid(60, 40, RED)
    a[:20, :30] = BLUE
    out = load_fitted(save(tmp_path, "k.png", a), (10, 10), "stretch", bbox=(-50, -50, 28, 18))
    assert (out.pixels == BLUE).all()


@pytest.mark.parametrize("bbox", [(300, 0, 400, 50), (10, 10, 10, 30), (50, 30, 20, 10),
                                  (0, 0, float("nan"), 10)])
def test_empty_bbox_is_an_image_error(tmp_path, bbox):
    path = save(tmp_path, "e.png", solid(100, 50, RED))
    with pytest.raises(ImageError) as info:
        load_fitted(path, (16, 16), "pad", bbox=bbox)
    assert info.value.reason == "bad_bbox"
    assert "e.png" in str(info.value) and "bbox" in str(info.value)
    assert "\n" not in str(info.value)


# --- EXIF orientation ----------------------------------------------------------------

@pytest.mark.parametrize("orientation, top, bottom", [(6, RED, BLUE), (8, BLUE, RED)])
def test_rotating_orientations_swap_size_and_turn_the_right_way(tmp_path, orientation, top, bottom):
    a = solid(40, 20, RED)
    a[:, 20:] = BLUE  # stored: red left, blue right
    img, exif = with_orientation(a, orientation)
    path = save(tmp_path, f"o{orientation}.png", img, exif=exif)
    assert read_size(path) == (20, 40)
    assert verify_image(path) == (20, 40)
    out = load_fitted(path, (40, 20), "stretch")
    # 6 turns clockwise (stored left comes on top), 8 counter-clockwise
    assert (out.pixels[:18] == top).all() and (out.pixels[22:] == bottom).all()


@pytest.mark.parametrize("ext", ["png", "jpg"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_orientations_match_exif_transpose(tmp_path, ext, orientation):
    img, exif = with_orientation(quadrants(60, 40), orientation)
    path = save(tmp_path, f"q{orientation}.{ext}", img, exif=exif, **({"quality": 95} if ext == "jpg" else {}))
    reference = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    assert read_size(path) == reference.size
    bbox = (5, 7, 35, 38)
    for box in (None, bbox):
        out = load_fitted(path, reference.size[::-1], "stretch", bbox=box)
        # resampling the displayed reference directly; box= keeps sub-pixel semantics equal
        expected = reference.resize(reference.size, Image.Resampling.BILINEAR, box=box)
        err = np.abs(out.pixels.astype(int) - np.asarray(expected).astype(int)).mean()
        assert err < (0.5 if ext == "png" else 4), (box, err)


def test_draft_size_accounts_for_exif_rotation(tmp_path, monkeypatch):
    # stored 800x400, displayed 400x800; 100x50 (h, w) displayed is exactly 1/8 scale
    img, exif = with_orientation(quadrants(800, 400), 6)
    path = save(tmp_path, "rot.jpg", img, exif=exif)
    factors = draft_spy(monkeypatch)
    out = load_fitted(path, (100, 50), "stretch")
    assert factors == [8]  # without the w/h swap libjpeg could only go to 1/4
    reference = ImageOps.exif_transpose(Image.open(path)).convert("RGB").resize((50, 100))
    assert np.abs(out.pixels.astype(int) - np.asarray(reference).astype(int)).mean() < 4


# --- modes ---------------------------------------------------------------------------

def fit_exact(path, pad_rgb=PAD):
    """Fit at the image's own size, so no resampling blurs the values under test."""
    w, h = read_size(path)
    return load_fitted(path, (h, w), "stretch", pad_rgb=pad_rgb).pixels


def test_grayscale_and_one_bit(tmp_path):
    assert (fit_exact(save(tmp_path, "l.png", Image.new("L", (20, 20), 77))) == 77).all()
    one = Image.new("1", (20, 20), 0)
    one.paste(1, (0, 0, 10, 20))
    px = fit_exact(save(tmp_path, "one.png", one))
    assert (px[:, :10] == 255).all() and (px[:, 10:] == 0).all()


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.new("P", (20, 20), 0)
    p.putpalette([200, 100, 50, 0, 255, 0] + [0] * 762)
    p.paste(1, (0, 0, 10, 20))
    px = fit_exact(save(tmp_path, "p.png", p))
    assert (px[:, :10] == (0, 255, 0)).all() and (px[:, 10:] == (200, 100, 50)).all()
    px = fit_exact(save(tmp_path, "pt.png", p, transparency=1))
    assert (px[:, :10] == PAD).all() and (px[:, 10:] == (200, 100, 50)).all()


def test_alpha_is_composited_on_the_pad_colour(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[:, :10] = (255, 0, 0, 0)      # fully transparent: looks like padding
    rgba[:, 10:20] = (255, 0, 0, 255)  # opaque red
    rgba[:, 20:] = (250, 0, 0, 128)    # half: a blend of red and pad
    px = fit_exact(save(tmp_path, "a.png", Image.fromarray(rgba, "RGBA")))
    assert (px[:, :10] == PAD).all() and (px[:, 10:20] == RED).all()
    assert np.abs(px[:, 20:].astype(int) - (130, 10, 15)).max() <= 2
    la = Image.new("LA", (20, 20), (200, 255))
    la.paste((200, 0), (0, 0, 10, 20))
    px = fit_exact(save(tmp_path, "la.png", la))
    assert (px[:, :10] == PAD).all() and (px[:, 10:] == 200).all()
    px = fit_exact(save(tmp_path, "lt.png", Image.new("L", (20, 20), 100), transparency=100))
    assert (px == PAD).all()  # tRNS in a grayscale PNG


def test_cmyk_jpeg_adobe_inverted(tmp_path):
    path = save(tmp_path, "cmyk.jpg", Image.new("CMYK", (40, 30), (0, 255, 255, 0)), quality=95)
    assert b"Adobe" in path.read_bytes()  # libjpeg stores CMYK inverted with an Adobe marker
    px = load_fitted(path, (15, 20), "stretch").pixels
    assert np.abs(px.astype(int) - RED).max() <= 3


def write_png16(path, rgb16):
    """16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def sixteen_bit_columns(dtype=np.uint16):
    a = np.zeros((20, 30), dtype)
    a[:, :10], a[:, 10:20], a[:, 20:] = 65535, 32768, 0
    return a


@pytest.mark.parametrize("mode, name", [("I;16", "g16.png"), ("I;16B", "g16b.tif"), ("I", "gi.tif")])
def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path, mode, name):
    dtype = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4"}[mode]
    img = Image.frombytes(mode, (30, 20), sixteen_bit_columns(dtype).tobytes())
    path = save(tmp_path, name, img)
    assert Image.open(path).mode == mode
    px = fit_exact(path)
    assert (px[:, :10] == 255).all() and (px[:, 10:20] == 128).all() and (px[:, 20:] == 0).all()


def test_16_bit_rgb_png(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint16)
    rgb[:] = (65535, 32768, 2570)
    px = fit_exact(write_png16(tmp_path / "rgb16.png", rgb))
    assert (px == (255, 128, 10)).all()


def test_float_image(tmp_path):
    a = np.zeros((20, 30), np.float32)
    a[:, :10], a[:, 10:20], a[:, 20:] = 127.6, 300.0, -5.0
    px = fit_exact(save(tmp_path, "f.tif", Image.fromarray(a, "F")))
    assert (px[:, :10] == 128).all() and (px[:, 10:20] == 255).all() and (px[:, 20:] == 0).all()


# --- bad files -----------------------------------------------------------------------

def jpeg_bytes(w=160, h=120):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def png_bytes(w=160, h=120):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def assert_image_error(call, path, reason):
    with pytest.raises(ImageError) as info:
        call(path)
    message = str(info.value)
    assert info.value.reason == reason, message
    assert path.name in message and "\n" not in message and "; " in message
    return message


ALL_READERS = [read_size, verify_image, lambda p: load_fitted(p, (16, 16), "pad")]


@pytest.mark.parametrize("call", ALL_READERS)
def test_missing_empty_text_and_directory(tmp_path, call):
    assert_image_error(call, tmp_path / "nope.jpg", "missing")
    (tmp_path / "zero.jpg").write_bytes(b"")
    assert_image_error(call, tmp_path / "zero.jpg", "empty")
    (tmp_path / "notes.jpg").write_text("this is not a photo\n")
    assert_image_error(call, tmp_path / "notes.jpg", "not_an_image")
    (tmp_path / "folder.jpg").mkdir()
    assert_image_error(call, tmp_path / "folder.jpg", "not_a_file")


@pytest.mark.parametrize("call", ALL_READERS[1:])
@pytest.mark.parametrize("name, data", [("half.jpg", jpeg_bytes()[:6000]), ("head.jpg", jpeg_bytes()[:100]),
                                        ("half.png", png_bytes()[:20000])])
def test_truncated_files(tmp_path, call, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    assert "truncated" in assert_image_error(call, path, "truncated")


def test_read_size_reads_only_the_header(tmp_path):
    path = tmp_path / "half.jpg"
    path.write_bytes(jpeg_bytes()[:6000])
    assert read_size(path) == (160, 120)  # the index finds truncation with verify_image


def test_permission_error_is_one_line(tmp_path, monkeypatch):
    path = save(tmp_path, "locked.png", solid(20, 20, RED))

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "open", deny)
    assert_image_error(verify_image, path, "unreadable")


def test_unsupported_mode_is_refused_not_guessed(tmp_path):
    path = save(tmp_path, "lab.tif", Image.new("LAB", (20, 20), (50, 0, 0)))
    for call in (verify_image, lambda p: load_fitted(p, (8, 8), "pad")):
        assert "LAB" in assert_image_error(call, path, "unsupported")


@pytest.mark.parametrize("limit", [3000, 1000])  # 1000: Pillow errors; 3000: it only warns
@pytest.mark.parametrize("call", ALL_READERS)
def test_decompression_bomb_is_too_large(tmp_path, monkeypatch, limit, call):
    path = save(tmp_path, "bomb.png", solid(100, 50, RED))  # 5000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    filters_before = list(warnings.filters)
    message = assert_image_error(call, path, "too_large")
    assert f"5000 pixels exceeds the decompression-bomb limit ({limit})" in message
    assert "PIL.Image.MAX_IMAGE_PIXELS" in message
    assert warnings.filters == filters_before
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    assert read_size(path) == (100, 50)


def test_image_error_survives_pickling_and_is_a_vaelab_error(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(ImageError) as info:
        verify_image(tmp_path / "zero.png")
    assert isinstance(info.value, VaelabError)
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value) and copy.reason == "empty"


# --- draft ---------------------------------------------------------------------------

def big_photo(tmp_path, w=2000, h=1500):
    """Smooth gradients and a few blocks: photo-like content for comparing decodes."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8)
    a[300:700, 400:900] = (250, 30, 60)
    a[900:1300, 1200:1800] = (20, 200, 240)
    return save(tmp_path, "big.jpg", a, quality=90)


def test_draft_decodes_a_big_jpeg_at_reduced_scale(tmp_path, monkeypatch):
    path = big_photo(tmp_path)
    factors = draft_spy(monkeypatch)
    out = load_fitted(path, (64, 64), "pad")
    assert factors == [8]
    assert out.box == (8, 0, 48, 64)
    full = Image.open(path).convert("RGB").resize((64, 48), Image.Resampling.BILINEAR)
    real = out.pixels[8:56]
    assert np.abs(real.astype(int) - np.asarray(full).astype(int)).mean() < 2.5


def test_draft_keeps_enough_resolution_for_a_small_bbox(tmp_path, monkeypatch):
    path = big_photo(tmp_path)
    factors = draft_spy(monkeypatch)
    bbox = (450, 350, 700, 600)  # 250x250 inside the red block: needs >= 64/250 of full size
    out = load_fitted(path, (64, 64), "stretch", bbox=bbox)
    assert factors == [2]  # 1/4 would leave only 62 px across the bbox
    assert np.abs(out.pixels.astype(int) - (250, 30, 60)).mean() < 4


def test_verify_image_decodes_at_smallest_scale_and_reports_full_size(tmp_path, monkeypatch):
    path = big_photo(tmp_path)
    factors = draft_spy(monkeypatch)
    assert verify_image(path) == (2000, 1500)
    assert factors == [8]

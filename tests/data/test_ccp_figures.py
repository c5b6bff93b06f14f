"""Integration: the real photos in ../shared/data/ccp-figures through selection, fit and cache."""

from pathlib import Path

import torch
from optional import CCP_FIGURES, needs

from vaelab.config import load_config
from vaelab.data.collection import load_collection
from vaelab.data.loader import FittedImages, ImageLoader
from vaelab.data.scaling import to_model_input

CCP = CCP_FIGURES
pytestmark = needs("ccp-figures")


def ccp_config(*overrides):
    return load_config(Path(__file__).resolve().parents[2] / "configs" / "ccp-figures.yaml",
                       [f"data.images={CCP}", f"data.metadata={CCP / 'metadata.json'}", *overrides])


def test_selection_and_split_on_real_metadata():
    collection = load_collection(ccp_config("data.filter.include=[dress]", "data.filter.exclude=[jeans]").data)
    metadata = collection.metadata
    assert len(metadata) == 600 and not metadata.skipped
    assert metadata.has_bbox().sum() == 599  # 0536.jpg has no person box
    chosen = {metadata.path(i) for i in collection.selected}
    assert all("dress" in metadata.tags(i) and "jeans" not in metadata.tags(i) for i in collection.selected)
    assert chosen == {metadata.path(i) for i in collection.train} | {metadata.path(i) for i in collection.val}


def test_person_crops_are_letterboxed_with_masks_and_cached():
    data = ccp_config("data.size=[48, 32]", "data.filter.require=[hat]").data
    collection = load_collection(data)
    images = FittedImages(collection, data)
    loader = ImageLoader(images, images.positions_of(collection.train), batch_size=16, shuffle=False, workers=2)
    cold = list(loader.batches(0))
    assert not loader.skipped
    warm = list(loader.batches(0))
    assert all(torch.equal(a.pixels, b.pixels) for a, b in zip(cold, warm))
    boxes = torch.cat([b.boxes for b in cold])
    # person boxes are much taller than wide: padded left and right, full height
    assert (boxes[:, 2] == 48).all() and (boxes[:, 3] < 32).all()
    model_input = to_model_input(cold[0], "unit")
    assert model_input.mask.sum(dim=(1, 2, 3)).tolist() == (boxes[:16, 2] * boxes[:16, 3]).float().tolist()
    pixels = cold[0].pixels.numpy()
    top, left, height, width = cold[0].boxes[0].tolist()
    assert pixels[0, :, :left].max() == 0  # the padding is the pad colour, black
    assert pixels[0, top:top + height, left:left + width].mean() > 20  # a real photo inside

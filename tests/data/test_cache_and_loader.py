import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from vaelab.config import load_config
from vaelab.data.cache import FILLED, ImageCache
from vaelab.data.collection import load_collection
from vaelab.data.loader import FittedImages, ImageLoader, epoch_order
from vaelab.data.scaling import box_masks, scale_pixels, to_model_input, to_pixels


def config_for(folder, *extra):
    return load_config(None, [f"data.images={folder}", "data.size=[32, 32]", "data.fit=pad", "data.val_fraction=0", *extra])


def all_batches(loader, epoch=0):
    return list(loader.batches(epoch))


def test_second_epoch_reads_the_cache_without_decoding(photo_folder, monkeypatch):
    import vaelab.data.cache as cache_module

    data = config_for(photo_folder).data
    collection = load_collection(data)
    images = FittedImages(collection, data)
    loader = ImageLoader(images, images.positions_of(collection.train), batch_size=5, workers=0)
    decodes = []
    original = cache_module.load_fitted
    monkeypatch.setattr(cache_module, "load_fitted", lambda *a, **k: decodes.append(a[0]) or original(*a, **k))
    cold = all_batches(loader, epoch=0)
    assert len(decodes) == 12
    images.cache.wait()
    assert images.cache.final_path.exists() and not images.cache.partial_path.exists()
    warm = all_batches(loader, epoch=0)
    assert len(decodes) == 12  # nothing decoded again
    for a, b in zip(cold, warm):
        assert torch.equal(a.pixels, b.pixels) and torch.equal(a.boxes, b.boxes)
    assert cold[0].pixels.dtype == torch.uint8 and cold[0].pixels.shape[1:] == (32, 32, 3)


def test_workers_fill_the_same_cache(photo_folder):
    data = config_for(photo_folder).data
    collection = load_collection(data)
    images = FittedImages(collection, data)
    loader = ImageLoader(images, images.positions_of(collection.train), batch_size=4, workers=2)
    cold = all_batches(loader, epoch=3)
    images.cache.wait()
    assert images.cache.final_path.exists()
    warm = all_batches(loader, epoch=3)
    assert [b.positions.tolist() for b in cold] == [b.positions.tolist() for b in warm]
    assert all(torch.equal(a.pixels, b.pixels) for a, b in zip(cold, warm))


def test_cache_rebuilt_when_a_source_file_changes(photo_folder):
    from PIL import Image

    data = config_for(photo_folder).data
    collection = load_collection(data)
    images = FittedImages(collection, data)
    loader = ImageLoader(images, images.positions_of(collection.train), batch_size=12, shuffle=False)
    before = all_batches(loader)[0].pixels
    images.cache.wait()
    old_file = images.cache.final_path
    target = collection.metadata.file(collection.selected[0])
    Image.new("RGB", Image.open(target).size, (0, 255, 0)).save(target, "JPEG")
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))

    collection = load_collection(data)
    images = FittedImages(collection, data)
    assert images.cache.final_path != old_file
    after = all_batches(ImageLoader(images, images.positions_of(collection.train), batch_size=12, shuffle=False))[0].pixels
    images.cache.wait()
    assert not old_file.exists()  # the stale cache of this collection is removed
    top, left, h, w = images.cache.read(0)[1]
    centre = after[0, top + h // 2, left + w // 2].tolist()
    assert centre[1] > 200 and centre[0] < 60  # now green
    assert torch.equal(after[1:], before[1:])


KILL_MIDWAY = textwrap.dedent(
    """
    import os, signal, sys
    from vaelab.config import load_config
    from vaelab.data.collection import load_collection
    from vaelab.data.cache import ImageCache
    data = load_config(None, ["data.images=" + sys.argv[1], "data.size=[32, 32]", "data.val_fraction=0"]).data
    collection = load_collection(data)
    cache = ImageCache(collection.metadata, collection.selected, collection.file_stats, data, data.resolved_cache_dir())
    cache.prepare()
    for slot in range(len(collection.selected) // 2):
        cache.fill(slot)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_build_killed_midway_resumes_and_drops_torn_slots(photo_folder, isolated_cache):
    run = subprocess.run([sys.executable, "-c", KILL_MIDWAY, str(photo_folder)], env=dict(os.environ))
    assert run.returncode == -9
    data = config_for(photo_folder).data
    collection = load_collection(data)
    cache = ImageCache(collection.metadata, collection.selected, collection.file_stats, data, data.resolved_cache_dir())
    assert cache.partial_path.exists() and not cache.final_path.exists()
    cache.prepare()
    assert (cache.filled() == FILLED).sum() == 6
    # a torn slot: pixels changed after the table said 'filled'
    cache.pixels[2, 5, 5] ^= 0xFF
    cache._pid = None  # as a fresh process would
    cache.prepare()
    assert (cache.filled() == FILLED).sum() == 5 and cache.filled()[2] == 0
    for slot in range(12):
        if cache.read(slot) is None:
            cache.fill(slot)
    assert cache.finalize()
    cache.wait()
    assert cache.final_path.exists()
    reference = FittedImages(collection, data, use_cache=False)
    for slot in range(12):
        assert np.array_equal(cache.read(slot)[0], reference[slot][0])


CONCURRENT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from vaelab.config import load_config
    from vaelab.data.collection import load_collection
    from vaelab.data.cache import ImageCache
    data = load_config(None, ["data.images=" + sys.argv[1], "data.size=[32, 32]", "data.val_fraction=0"]).data
    collection = load_collection(data)
    cache = ImageCache(collection.metadata, collection.selected, collection.file_stats, data, data.resolved_cache_dir())
    cache.prepare()
    order = np.random.default_rng(int(sys.argv[2])).permutation(len(collection.selected))
    for slot in order:
        if cache.read(int(slot)) is None:
            cache.fill(int(slot))
    print("final" if cache.finalize() else "partial")
    """
)


def test_two_processes_build_one_cache_at_once(photo_folder):
    load_collection(config_for(photo_folder).data)  # index once, so both start building together
    procs = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT, str(photo_folder), str(seed)], stdout=subprocess.PIPE, text=True)
        for seed in (1, 2)
    ]
    outputs = [p.communicate()[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert "final" in outputs
    data = config_for(photo_folder).data
    collection = load_collection(data)
    cache = ImageCache(collection.metadata, collection.selected, collection.file_stats, data, data.resolved_cache_dir())
    cache.prepare()
    assert cache.complete
    reference = FittedImages(collection, data, use_cache=False)
    for slot in range(12):
        assert np.array_equal(cache.read(slot)[0], reference[slot][0])


def test_a_broken_image_is_skipped_and_reported(photo_folder):
    data = config_for(photo_folder).data
    collection = load_collection(data)  # indexed while every file was fine
    broken = collection.metadata.file(collection.selected[3])
    broken.write_bytes(b"not a jpeg any more")
    collection = load_collection(data)  # the index notices the change and drops it
    assert len(collection.selected) == 11
    assert any("not_an_image" in s.reason or "not an image" in s.reason for s in collection.skipped)


def test_a_file_that_breaks_after_indexing_is_skipped_by_the_loader(photo_folder, tmp_path):

    from vaelab.data.index import index_folder, write_records

    records = index_folder(photo_folder, workers=1).records
    write_records(records, tmp_path / "meta.json")
    (photo_folder / records[3]["file"]).write_bytes(b"")
    data = config_for(photo_folder, f"data.metadata={tmp_path / 'meta.json'}").data
    collection = load_collection(data)
    images = FittedImages(collection, data)
    loader = ImageLoader(images, images.positions_of(collection.train), batch_size=4, shuffle=False)
    batches = all_batches(loader)
    assert sum(len(b) for b in batches) == 11
    assert [s.item for s in loader.skipped.values()] == [records[3]["file"]]
    assert "empty" in next(iter(loader.skipped.values())).reason
    warm = all_batches(loader)  # from the finished cache: still skipped, still reported
    assert sum(len(b) for b in warm) == 11


def test_epoch_order_is_a_pure_function_and_resumable():
    a = epoch_order(103, 10, seed=7, epoch=4, shuffle=True, drop_last=False)
    b = epoch_order(103, 10, seed=7, epoch=4, shuffle=True, drop_last=False)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert sorted(np.concatenate(a).tolist()) == list(range(103))
    assert not np.array_equal(np.concatenate(a), np.concatenate(epoch_order(103, 10, 7, 5, True, False)))
    assert len(epoch_order(103, 10, 7, 4, True, drop_last=True)) == 10


def test_resume_from_a_batch_gives_the_rest_of_the_epoch(photo_folder):
    data = config_for(photo_folder).data
    collection = load_collection(data)
    images = FittedImages(collection, data)
    loader = ImageLoader(images, images.positions_of(collection.train), batch_size=3, seed=5)
    whole = [b.positions.tolist() for b in loader.batches(2)]
    rest = [b.positions.tolist() for b in loader.batches(2, start=2)]
    assert rest == whole[2:]


def test_masks_and_scaling_round_trip():
    boxes = torch.tensor([[2, 0, 4, 8], [0, 0, 8, 8]])
    masks = box_masks(boxes, 8, 8)
    assert masks.shape == (2, 1, 8, 8)
    assert masks[0, 0, :, 0].tolist() == [0, 0, 1, 1, 1, 1, 0, 0]
    assert masks[1].sum() == 64
    pixels = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    from vaelab.data.loader import Batch

    batch = Batch(pixels, boxes, torch.arange(2))
    for scale, low, high in (("unit", 0, 1), ("symmetric", -1, 1)):
        model_input = to_model_input(batch, scale)
        assert model_input.x.shape == (2, 3, 8, 8)
        assert low <= model_input.x.min() and model_input.x.max() <= high
        assert torch.equal(to_pixels(model_input.x, scale), pixels)
    standard = to_model_input(batch, "standardize")
    real = standard.mask.expand_as(standard.x).bool()
    first = standard.x[0][real[0]]
    assert abs(first.mean().item()) < 1e-4 and abs(first.std(unbiased=False).item() - 1) < 1e-3
    assert torch.equal(to_pixels(standard.x, "standardize", standard.mean, standard.std), pixels)


def test_standardize_ignores_padding():
    x = torch.full((1, 3, 4, 4), 100.0)
    x[..., :2, :] = 0.0  # padding, black
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 2:, :] = 1
    out = scale_pixels(x, mask, "standardize")
    assert out.mean.item() == pytest.approx(100.0)


def test_reused_batch_buffers_never_overwrite_batches_still_held(photo_folder):
    data = config_for(photo_folder).data
    collection = load_collection(data)
    images = FittedImages(collection, data)
    loader = ImageLoader(images, images.positions_of(collection.train), batch_size=2, shuffle=False)
    list(loader.batches(0))  # builds the cache
    held = list(loader.batches(0))  # every batch kept: no buffer may be reused
    assert len({b.pixels.data_ptr() for b in held}) == len(held)
    expected = FittedImages(collection, data, use_cache=False)
    for batch in held:
        for row, position in enumerate(batch.positions.tolist()):
            assert np.array_equal(batch.pixels[row].numpy(), expected[position][0])
    del held, batch
    pointers = {b.pixels.data_ptr() for b in loader.batches(0)}  # each dropped at once: reused
    assert pointers <= {buffer.data_ptr() for buffer in loader._ring} and len(pointers) <= 2


def test_prefetched_batches_equal_direct_ones_and_the_thread_stops(photo_folder):
    import threading

    data = config_for(photo_folder).data
    collection = load_collection(data)
    images = FittedImages(collection, data)
    positions = images.positions_of(collection.train)
    direct = ImageLoader(images, positions, batch_size=3, workers=0)
    all_batches(direct)  # fill the cache: only cache reads are prefetched
    images.cache.wait()
    ahead = ImageLoader(images, positions, batch_size=3, workers=0, prefetch=2)
    for epoch in (1, 2):
        want = [(b.positions.clone(), b.pixels.clone()) for b in direct.batches(epoch)]
        got = [(b.positions.clone(), b.pixels.clone()) for b in ahead.batches(epoch)]
        assert len(got) == len(want) == 4
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, want))
    batches = ahead.batches(3)
    next(batches)
    batches.close()  # a consumer that stops early must not leave the producer running
    assert not any(t.name == "vaelab-prefetch" for t in threading.enumerate())


def test_prefetch_hands_a_producer_error_to_the_consumer():
    from vaelab.data.loader import prefetched

    def broken():
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetched(broken(), depth=2):
            got.append(item)
    assert got == [1]

"""The gated PixelCNN: causal in raster order (no position sees its own code or a later one, and no
blind spot), conditioned on tags, and its sampling follows temperature, top-k and the seed."""

from __future__ import annotations

import pytest
import torch

from vaelab.errors import VaelabError
from vaelab.model.pixelcnn import GatedPixelCNN


def logits_change(network: GatedPixelCNN, codes: torch.Tensor, row: int, column: int) -> torch.Tensor:
    """Which positions' logits move when the code at (row, column) changes: (h, w) bool."""
    changed = codes.clone()
    changed[:, row, column] = (changed[:, row, column] + 1) % network.codes
    return (network(changed) - network(codes)).abs().amax(dim=(0, 1)) > 0


@pytest.mark.parametrize("kernel", [3, 5])
def test_each_position_depends_on_every_earlier_position_and_on_no_other(kernel):
    torch.manual_seed(0)
    network = GatedPixelCNN(codes=7, channels=8, layers=6, kernel=kernel, dropout=0.0).eval()
    size = 6
    codes = torch.randint(0, 7, (1, size, size))
    order = torch.arange(size * size).view(size, size)
    for row, column in [(0, 0), (2, 3), (3, 0), (5, 5), (1, 5)]:
        moved = logits_change(network, codes, row, column)
        here = row * size + column
        assert not moved[order <= here].any(), "a position saw its own code or a later one"
        # The receptive field after 6 layers reaches every later position of these small maps:
        # the two stacks leave no blind spot (a masked PixelCNN misses the upper right).
        later = order > here
        assert moved[later].all(), f"positions after {(row, column)} that do not see it: {(~moved & later).nonzero().tolist()}"


def test_tags_shift_the_logits_and_no_tags_is_the_unconditioned_model():
    torch.manual_seed(0)
    network = GatedPixelCNN(codes=5, channels=8, layers=2, kernel=3, tags=3, dropout=0.0).eval()
    codes = torch.randint(0, 5, (2, 4, 4))
    none = network(codes)
    zero = network(codes, torch.zeros(2, 3))
    tagged = network(codes, torch.tensor([[1.0, 0, 0], [0, 1.0, 1.0]]))
    assert torch.equal(none, zero)
    assert not torch.allclose(none, tagged)


def test_sampling_is_seeded_and_top_k_1_is_the_greedy_map():
    torch.manual_seed(0)
    network = GatedPixelCNN(codes=6, channels=8, layers=2, kernel=3, dropout=0.0).eval()
    draw = lambda seed, **kw: network.sample(3, (3, 4), torch.Generator().manual_seed(seed), **kw)  # noqa: E731
    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))
    greedy = draw(1, top_k=1)
    assert torch.equal(greedy, draw(2, top_k=1))  # no randomness left
    # Each code of the greedy map is the argmax given the codes before it.
    assert torch.equal(network(greedy).argmax(1)[:, 0, 0], greedy[:, 0, 0])
    assert torch.equal(network(greedy).argmax(1), greedy)
    codes = draw(3)
    assert codes.shape == (3, 3, 4) and codes.dtype == torch.long and 0 <= codes.min() and codes.max() < 6
    with pytest.raises(VaelabError, match="--top-k 7: must lie in 1..6"):
        draw(1, top_k=7)
    with pytest.raises(VaelabError, match="--temperature 0"):
        draw(1, temperature=0)


def test_nll_is_the_cross_entropy_summed_over_positions():
    torch.manual_seed(0)
    network = GatedPixelCNN(codes=4, channels=8, layers=1, kernel=3, dropout=0.0).eval()
    codes = torch.randint(0, 4, (2, 3, 3))
    log_p = network(codes).log_softmax(1).gather(1, codes[:, None]).squeeze(1)
    assert torch.allclose(network.nll(codes), -log_p.flatten(1).sum(1))


def test_row_by_row_sampling_agrees_with_the_full_forward_pass_under_tags():
    # Sampling reuses each row's vertical stacks; the greedy map must still be the argmax of the
    # whole-map forward pass at every position, with the conditioning included.
    torch.manual_seed(1)
    network = GatedPixelCNN(codes=9, channels=8, layers=3, kernel=5, tags=2, dropout=0.0).eval()
    tags = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    greedy = network.sample(3, (5, 6), torch.Generator().manual_seed(0), top_k=1, tags=tags)
    assert torch.equal(network(greedy, tags).argmax(1), greedy)

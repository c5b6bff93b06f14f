"""A gated PixelCNN over a map of discrete codes: the learned prior of a vq run.

van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders". The map of
codes c (h x w, raster order) is modelled as p(c) = prod_i p(c_i | c_<i, tags):

- a vertical stack sees every row above the current one (a (k//2 + 1) x k convolution, its
  output moved one row down before it reaches the horizontal stack), and
- a horizontal stack sees the current row to the left (a 1 x (k//2 + 1) convolution; in the first
  layer shifted one more column, so no position sees its own code).

Two stacks instead of one masked convolution remove the blind spot of the original PixelCNN.
Each layer is gated, tanh(a) * sigmoid(b), with the conditioning (a linear map of the image's
multi-hot tags, i.e. a sum of one learned vector per tag) added to a and b. The horizontal stack
is residual after the first layer. The output is one logit per code at every position.

Causality is tested (tests/model/test_pixelcnn.py): changing a code changes no logit at or
before it in raster order.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.errors import VaelabError


def gate(features: Tensor) -> Tensor:
    a, b = features.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def shift_down(x: Tensor) -> Tensor:
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def shift_right(x: Tensor) -> Tensor:
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class GatedLayer(nn.Module):
    def __init__(self, channels: int, kernel: int, first: bool, tags: int, dropout: float):
        super().__init__()
        self.half, self.first = kernel // 2, first
        self.vertical = nn.Conv2d(channels, 2 * channels, (self.half + 1, kernel))
        self.horizontal = nn.Conv2d(channels, 2 * channels, (1, self.half + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal_out = nn.Conv2d(channels, channels, 1)
        self.condition = nn.Linear(tags, 2 * channels, bias=False) if tags else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, v: Tensor, h: Tensor, tags: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        v_out, to_horizontal = self.vertical_part(v, tags)
        return v_out, self.horizontal_part(h, to_horizontal, tags)

    def bias(self, tags: Optional[Tensor]) -> Optional[Tensor]:
        return None if self.condition is None or tags is None else self.condition(tags)[:, :, None, None]

    def vertical_part(self, v: Tensor, tags: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """The vertical stack's output, and what it passes to the horizontal stack: row i gets
        the features of the rows above it only."""
        half, bias = self.half, self.bias(tags)
        v_features = self.vertical(F.pad(v, (half, half, half, 0)))  # rows i - k//2 .. i
        to_horizontal = self.vertical_to_horizontal(shift_down(v_features))
        return gate(v_features if bias is None else v_features + bias), to_horizontal

    def horizontal_part(self, h: Tensor, to_horizontal: Tensor, tags: Optional[Tensor]) -> Tensor:
        bias = self.bias(tags)
        h_features = self.horizontal(F.pad(h, (self.half, 0, 0, 0)))  # columns j - k//2 .. j of row i
        if self.first:
            h_features = shift_right(h_features)  # the first layer's input is the codes themselves
        h_features = h_features + to_horizontal
        if bias is not None:
            h_features = h_features + bias
        h_out = self.horizontal_out(self.dropout(gate(h_features)))
        return h_out if self.first else h + h_out


class GatedPixelCNN(nn.Module):
    """Logits (N, codes, h, w) of every position's code given the codes before it (and the tags)."""

    def __init__(self, codes: int, channels: int = 64, layers: int = 8, kernel: int = 5, tags: int = 0,
                 dropout: float = 0.1):
        super().__init__()
        self.codes, self.tags = codes, tags
        self.embedding = nn.Embedding(codes, channels)
        self.layers = nn.ModuleList(GatedLayer(channels, kernel, i == 0, tags, dropout) for i in range(layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, 2 * channels, 1), nn.ReLU(),
                                  nn.Conv2d(2 * channels, codes, 1))

    def forward(self, codes: Tensor, tags: Optional[Tensor] = None) -> Tensor:
        x = self.embedding(codes).permute(0, 3, 1, 2)
        v, h = x, x
        for layer in self.layers:
            v, h = layer(v, h, tags)
        return self.head(h)

    def nll(self, codes: Tensor, tags: Optional[Tensor] = None) -> Tensor:
        """Negative log-likelihood of each map in nats, summed over its positions: (N,)."""
        logits = self.forward(codes, tags)
        return F.cross_entropy(logits.float(), codes, reduction="none").flatten(1).sum(1)

    @torch.no_grad()
    def sample(self, n: int, shape: tuple[int, int], generator: Optional[torch.Generator] = None,
               temperature: float = 1.0, top_k: Optional[int] = None, tags: Optional[Tensor] = None) -> Tensor:
        """n code maps (n, h, w), drawn position by position in raster order.

        temperature divides the logits (below 1: the likelier codes, less variety); top_k keeps
        only the k likeliest codes at each position. The draws come from `generator` on the CPU, so
        a seed gives the same maps on any device."""
        if not temperature > 0:
            raise VaelabError(f"--temperature {temperature}: must be above 0")
        if top_k is not None and not 1 <= top_k <= self.codes:
            raise VaelabError(f"--top-k {top_k}: must lie in 1..{self.codes} (the number of codes)")
        device = next(self.parameters()).device
        height, width = shape
        codes = torch.zeros(n, height, width, dtype=torch.long, device=device)
        if tags is not None:
            tags = tags.to(device)
        for i in range(height):
            # The vertical stacks see only the rows above row i, which are drawn: once per row.
            v = self.embedding(codes[:, :i + 1]).permute(0, 3, 1, 2)
            from_above = []
            for layer in self.layers:
                v, to_horizontal = layer.vertical_part(v, tags)
                from_above.append(to_horizontal[:, :, i:i + 1])
            for j in range(width):
                h = self.embedding(codes[:, i:i + 1]).permute(0, 3, 1, 2)  # row i; codes after j are not read
                for layer, to_horizontal in zip(self.layers, from_above):
                    h = layer.horizontal_part(h, to_horizontal, tags)
                logits = self.head(h[:, :, :, j:j + 1])[:, :, 0, 0].float().cpu() / temperature
                if top_k is not None:
                    kth = logits.topk(top_k, dim=1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, -math.inf)
                codes[:, i, j] = torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1).to(device)
        return codes

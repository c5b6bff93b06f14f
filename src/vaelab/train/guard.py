"""The training guard: which steps may change the weights (see `vaelab.train.trainer` for what follows a bad step)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


@dataclass
class Guard:
    """Judges each step by its loss and gradient norm against their running level.

    The running mean and mean absolute deviation are exponential averages over applied steps
    only, so a burst of bad steps cannot drag the reference up to meet it.
    """

    spike_factor: float
    warmup: int
    seen: int = 0  # applied steps since the start or the last rollback
    loss_mean: float = 0.0
    loss_dev: float = 0.0
    norm_mean: float = 0.0
    norm_dev: float = 0.0
    streak: int = 0  # bad steps in a row
    skipped: int = 0  # skipped steps, whole run
    rollbacks: int = 0
    decay: float = 0.98

    def judge(self, loss: float, norm: float) -> Optional[str]:
        """None when the step may be applied, else the reason it may not."""
        if not math.isfinite(loss):
            return f"non-finite loss ({loss})"
        if not math.isfinite(norm):
            return f"non-finite gradient norm ({norm})"
        if self.spike_factor > 0 and self.seen >= self.warmup:
            for name, value, mean, dev in (("loss", loss, self.loss_mean, self.loss_dev),
                                           ("gradient norm", norm, self.norm_mean, self.norm_dev)):
                if value > mean + self.spike_factor * max(dev, 1e-3 * abs(mean), 1e-12):
                    return f"{name} spike ({value:.4g}, running mean {mean:.4g})"
        return None

    def accept(self, loss: float, norm: float) -> None:
        if self.seen == 0:
            self.loss_mean, self.norm_mean, self.loss_dev, self.norm_dev = loss, norm, 0.0, 0.0
        else:
            # A plain average over the first steps, then an exponential one: an EMA started from
            # zero would underestimate the deviation and call ordinary noise a spike.
            a = max(1.0 - self.decay, 1.0 / (self.seen + 1))
            b = max(1.0 - self.decay, 1.0 / self.seen)
            self.loss_dev += b * (abs(loss - self.loss_mean) - self.loss_dev)
            self.loss_mean += a * (loss - self.loss_mean)
            self.norm_dev += b * (abs(norm - self.norm_mean) - self.norm_dev)
            self.norm_mean += a * (norm - self.norm_mean)
        self.seen += 1
        self.streak = 0

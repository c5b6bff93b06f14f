"""An ex-post Gaussian mixture over a Gaussian family's latents: a prior that samples where the
encoder actually puts images (Ghosh et al. 2020, "From Variational to Deterministic Autoencoders").

N(0, I) is the prior the KL pulls towards, but with a small beta the aggregate posterior is far
from it, and decoded N(0, I) draws land between the training images' latents. A mixture fitted to
the training images' posterior means follows the aggregate posterior instead.

The fit is scikit-learn's `GaussianMixture` (EM, k-means initialisation). What is kept is plain
tensors (weights, means and the covariances' Cholesky factors or standard deviations), saved as
safetensors, so sampling needs no pickle and runs in torch with the caller's generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from vaelab.errors import VaelabError


@dataclass
class GaussianMixture:
    weights: Tensor  # (K,)
    means: Tensor  # (K, D)
    scales: Tensor  # (K, D, D) lower Cholesky factors of the covariances (full), or (K, D) stds (diag)

    @property
    def covariance(self) -> str:
        return "full" if self.scales.dim() == 3 else "diag"

    @property
    def components(self) -> int:
        return len(self.weights)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, temperature: float = 1.0) -> Tensor:
        """n draws (n, D) in float32; temperature scales each component's spread (not its weight)."""
        if not temperature > 0:
            raise VaelabError(f"--temperature {temperature}: must be above 0")
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64) * temperature
        scales = self.scales[component]
        spread = (scales @ noise.unsqueeze(-1)).squeeze(-1) if self.covariance == "full" else scales * noise
        return (self.means[component] + spread).float()

    def log_likelihood(self, z: Tensor) -> Tensor:
        """log p(z) in nats for each row of z (N, D)."""
        z = z.double()
        diff = z[:, None, :] - self.means[None]  # (N, K, D)
        if self.covariance == "full":
            solved = torch.linalg.solve_triangular(self.scales[None], diff.unsqueeze(-1), upper=False).squeeze(-1)
            log_det = torch.log(torch.diagonal(self.scales, dim1=1, dim2=2)).sum(1)
        else:
            solved, log_det = diff / self.scales[None], torch.log(self.scales).sum(1)
        dims = z.shape[1]
        per_component = -0.5 * solved.pow(2).sum(2) - log_det[None] - 0.5 * dims * math.log(2 * math.pi)
        return torch.logsumexp(per_component + torch.log(self.weights)[None], dim=1)

    def tensors(self) -> dict[str, Tensor]:
        return {"weights": self.weights, "means": self.means, "scales": self.scales}

    def save(self, path: Path) -> None:
        from vaelab.files import save_safetensors

        save_safetensors(self.tensors(), path)

    @classmethod
    def load(cls, path: Path) -> "GaussianMixture":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
            return cls(tensors["weights"], tensors["means"], tensors["scales"])
        except Exception as error:  # safetensors raises its own error type for a damaged file
            raise VaelabError(f"{path}: not a readable mixture prior ({str(error).splitlines()[0] if str(error) else type(error).__name__}); refit it with 'vaelab prior RUN --fresh'") from None


def fit_mixture(train: np.ndarray, components: int, covariance: str, seed: int) -> GaussianMixture:
    """EM on the rows of `train` (N, D)."""
    from sklearn.mixture import GaussianMixture as SklearnMixture

    # reg_covar keeps a component's covariance invertible where it holds fewer images than dims.
    fitted = SklearnMixture(n_components=components, covariance_type=covariance, random_state=seed,
                            reg_covar=1e-4, max_iter=300).fit(train.astype(np.float64))
    covariances = fitted.covariances_
    scales = np.linalg.cholesky(covariances) if covariance == "full" else np.sqrt(covariances)
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
    weights = as_tensor(fitted.weights_)
    return GaussianMixture(weights / weights.sum(), as_tensor(fitted.means_), as_tensor(scales))

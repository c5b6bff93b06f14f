"""The ex-post Gaussian mixture: its log-likelihood is scikit-learn's, its draws follow the fitted
components and the seed, and it round-trips through safetensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaelab.errors import VaelabError
from vaelab.model.mixture import GaussianMixture, fit_mixture


def two_clusters(n: int = 400, dims: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = np.zeros((2, dims))
    centres[1, 0] = 8.0
    return centres[rng.integers(0, 2, n)] + rng.normal(0, [1.0, 0.5, 2.0][:dims], (n, dims))


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_log_likelihood_matches_scikit_learn(covariance):
    from sklearn.mixture import GaussianMixture as Reference

    data = two_clusters()
    mixture = fit_mixture(data, 2, covariance, seed=0)
    reference = Reference(2, covariance_type=covariance, random_state=0, reg_covar=1e-4, max_iter=300).fit(data)
    queries = data[:50] + 0.3
    ours = mixture.log_likelihood(torch.from_numpy(queries)).numpy()
    assert np.allclose(ours, reference.score_samples(queries), atol=1e-6)
    assert mixture.components == 2 and mixture.covariance == covariance


def test_draws_follow_the_components_and_the_seed(tmp_path):
    mixture = fit_mixture(two_clusters(), 2, "full", seed=0)
    draws = mixture.sample(4000, torch.Generator().manual_seed(0))
    assert draws.dtype == torch.float32 and draws.shape == (4000, 3)
    assert torch.equal(draws, mixture.sample(4000, torch.Generator().manual_seed(0)))
    # The draws near each centre in the proportion of its weight, with the clusters' spread.
    far = mixture.weights[mixture.means[:, 0] > 4].item()
    assert 0.4 < far < 0.6
    assert abs((draws[:, 0] > 4).float().mean().item() - far) < 0.03
    near_zero = draws[draws[:, 0] < 4]
    assert near_zero[:, 1].std().item() == pytest.approx(0.5, rel=0.1)
    assert near_zero[:, 2].std().item() == pytest.approx(2.0, rel=0.1)
    cold = mixture.sample(4000, torch.Generator().manual_seed(0), temperature=0.5)
    assert cold[cold[:, 0] < 4][:, 2].std().item() == pytest.approx(1.0, rel=0.1)

    mixture.save(tmp_path / "m.safetensors")
    again = GaussianMixture.load(tmp_path / "m.safetensors")
    assert torch.equal(again.sample(10, torch.Generator().manual_seed(1)), mixture.sample(10, torch.Generator().manual_seed(1)))
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(VaelabError, match="bad.safetensors: not a readable mixture prior"):
        GaussianMixture.load(tmp_path / "bad.safetensors")

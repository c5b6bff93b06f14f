"""The vq family: vector-quantize-pytorch's VQ (EMA codebook, k-means init, dead codes) and FSQ."""

from __future__ import annotations

import pytest
import torch

from vaelab.config import load_config
from vaelab.errors import VaelabError
from vaelab.model import Quantized, build_model

VQ = ["model.kind=vq", "model.channels=[8, 16, 16]", "model.norm_groups=8", "model.code_dim=4",
      "model.codebook_size=16"]


def tiny(*extra):
    return build_model(load_config(None, [*VQ, *extra]).model, (16, 20))


def test_encode_gives_codes_and_the_codes_decode_to_the_same_images():
    model = tiny()
    x = torch.rand(6, 3, 16, 20)
    model(x)  # the first training-mode batch initialises the codebook by k-means
    model.eval()
    posterior = model.encode(x)
    assert isinstance(posterior, Quantized) and posterior.kl() is None
    assert posterior.codes.shape == (6, 4, 5) and posterior.quantized.shape == (6, 4, 4, 5)
    assert 0 <= posterior.codes.min() and posterior.codes.max() < 16
    torch.testing.assert_close(model.decode_codes(posterior.codes), model.decode(posterior.quantized))
    with pytest.raises(VaelabError, match="codes must lie in 0..15"):
        model.decode_codes(posterior.codes + 16)


def test_the_codebook_learns_by_ema_and_the_commitment_trains_the_encoder():
    model = tiny("model.commitment_weight=0.5")
    codebook = model.quantizer._codebook
    x = torch.rand(6, 3, 16, 20)
    out = model(x)
    before = codebook.embed.clone()
    assert bool(codebook.initted)
    out = model(x)  # a second step moves the codes towards their vectors' mean
    assert not torch.equal(before, codebook.embed)
    assert not list(model.quantizer.parameters())  # the codebook is EMA buffers, not gradient-trained
    # The commitment is the squared distance of each vector to its code, summed per image, weighted.
    z_e = model.encoder(x)
    expected = 0.5 * (z_e - out.posterior.quantized.detach()).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(out.posterior.commitment, expected, rtol=1e-4, atol=1e-5)
    out.posterior.commitment.sum().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert all(p.grad is None for p in model.decoder.parameters())


def test_l2_codes_are_unit_vectors():
    model = tiny("model.l2_codes=true")
    model(torch.rand(4, 3, 16, 20))
    norms = model.eval().encode(torch.rand(4, 3, 16, 20)).quantized.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_fsq_rounds_each_channel_to_its_levels():
    model = tiny("model.quantizer=fsq", "model.levels=[5, 3]")
    assert model.latent_shape == (2, 4, 5) and model.codebook_size == 15
    posterior = model.encode(torch.rand(3, 3, 16, 20))
    assert posterior.codes.max() < 15 and torch.count_nonzero(posterior.commitment) == 0
    assert not list(model.quantizer.parameters())  # nothing to learn in the quantizer itself
    torch.testing.assert_close(model.decode_codes(posterior.codes), model.decode(posterior.quantized))


def test_vq_has_no_prior_yet_and_draws_no_noise():
    model = tiny()
    assert model.noise_shape is None and not model.has_prior
    with pytest.raises(VaelabError, match="no prior to sample from yet"):
        model.sample(4)

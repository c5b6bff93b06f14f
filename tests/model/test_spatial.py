"""The spatial family: diffusers' AutoencoderKL, its format on disk, and starting from one."""

from __future__ import annotations

import json

import pytest
import torch

from vaelab.cli import main
from vaelab.config import load_config
from vaelab.errors import VaelabError
from vaelab.model import SpatialVAE, build_model, check_model_fits
from vaelab.model.spatial import check_diffusers_folder, export_diffusers, load_diffusers_weights

TINY = ["model.kind=spatial", "model.channels=[8, 16, 16]", "model.norm_groups=8", "model.z_channels=3"]


def tiny(*extra, size=(32, 24)) -> SpatialVAE:
    config = load_config(None, [*TINY, *extra])
    return build_model(config.model, size)


def test_latent_map_shape_follows_the_levels():
    model = tiny()
    out = model(torch.rand(2, 3, 32, 24))
    assert model.latent_shape == (3, 8, 6)  # 3 levels: f = 4
    assert out.posterior.mean.shape == out.posterior.logvar.shape == out.z.shape == (2, 3, 8, 6)
    assert out.recon.shape == (2, 3, 32, 24)
    assert out.posterior.kl().shape == (2, 3 * 8 * 6)
    attention = tiny("model.attention=true")
    assert any("attention" in name for name, _ in attention.named_parameters())
    assert not any("attention" in name for name, _ in model.named_parameters())


def test_sizes_the_levels_cannot_divide_name_the_nearest_valid_size():
    config = load_config(None, TINY).model
    with pytest.raises(VaelabError, match=r"multiple of 4; use data.size \[32, 24\]"):
        check_model_fits(config, 30, 25)
    with pytest.raises(VaelabError, match="multiple of 4"):
        build_model(config, (30, 25))


def test_norm_groups_must_divide_every_level():
    with pytest.raises(VaelabError, match="model.norm_groups 8 does not divide model.channels entry 12"):
        load_config(None, ["model.kind=spatial", "model.channels=[8, 12]", "model.norm_groups=8"])


def test_an_unknown_family_or_a_key_of_another_family_is_one_clear_line():
    with pytest.raises(VaelabError, match="unknown family 'spatail'; did you mean 'spatial'"):
        load_config(None, ["model.kind=spatail"])
    with pytest.raises(VaelabError, match="unknown key 'model.latent'"):
        load_config(None, ["model.kind=spatial", "model.latent=64"])


def test_noise_given_equals_noise_drawn():
    model = tiny()
    x = torch.rand(3, 3, 32, 24)
    torch.manual_seed(4)
    drawn = model(x)
    torch.manual_seed(4)
    noise = torch.randn(3, *model.latent_shape)
    given = model(x, noise=noise)
    assert torch.equal(drawn.z, given.z) and torch.equal(drawn.recon, given.recon)


def test_export_loads_in_diffusers_with_the_same_outputs(tmp_path):
    from diffusers import AutoencoderKL

    model = tiny().eval()
    with torch.no_grad():  # not the fresh init: every weight moved
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = export_diffusers(model, tmp_path / "vae")
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    theirs = AutoencoderKL.from_pretrained(out).eval()
    x = torch.rand(2, 3, 32, 24) * 2 - 1
    with torch.no_grad():
        posterior = model.encode(x)
        dist = theirs.encode(x).latent_dist
        torch.testing.assert_close(dist.mean, posterior.mean)
        torch.testing.assert_close(dist.logvar, posterior.logvar)
        torch.testing.assert_close(theirs.decode(posterior.mean).sample, model.decode_logits(posterior.mean))
    with pytest.raises(VaelabError, match="exists and is not empty"):
        export_diffusers(model, out)


def test_init_from_a_diffusers_folder_copies_every_weight_or_names_the_mismatch(tmp_path):
    source = tiny()
    folder = export_diffusers(source, tmp_path / "pretrained")
    target = tiny()
    load_diffusers_weights(target, folder)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    wider = tiny("model.z_channels=4")
    with pytest.raises(VaelabError, match=r"'encoder.conv_out.weight' is \(6, 16, 3, 3\), this model's is \(8, 16, 3, 3\).*latent_channels 3"):
        check_diffusers_folder(wider, folder)
    with pytest.raises(VaelabError, match="is not a diffusers AutoencoderKL folder"):
        check_diffusers_folder(target, tmp_path)


def test_train_export_and_init_from_through_the_cli(tmp_path, capsys):
    from tiny_runs import make_images, only_run

    images = make_images(tmp_path / "images", count=12)
    common = ["-c", "/dev/null", "--set", f"data.images={images}", "--set", "data.size=[16, 16]",
              "--set", f"run.root={tmp_path / 'runs'}", "--set", "train.epochs=1", "--set", "train.batch_size=4",
              "--set", "model={kind: spatial, channels: [8, 16], norm_groups: 8, z_channels: 2}",
              "--set", "run.tensorboard=false", "--set", "data.workers=0"]
    main(["train", *common])  # returns: exit status 0
    run_dir = only_run(tmp_path / "runs")
    main(["export", str(run_dir), str(tmp_path / "vae")])
    meta = json.loads((tmp_path / "vae" / "vaelab.json").read_text())
    assert meta["scale"] == "unit" and meta["data_size"] == [16, 16]
    # A second run starts from the export; with a vanishing lr its weights stay the exported ones.
    main(["train", *common, "--set", f"run.root={tmp_path / 'runs2'}", "--set", "train.lr=1e-12",
          "--set", f"model={{kind: spatial, channels: [8, 16], norm_groups: 8, z_channels: 2, init_from: {tmp_path / 'vae'}}}"])
    second = only_run(tmp_path / "runs2")
    assert "weights from" in (second / "log.txt").read_text()
    trained = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
    started = torch.load(second / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.allclose(trained[k], started[k], atol=1e-8) for k in trained if trained[k].is_floating_point())
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:  # a mismatched folder: one line, no run folder
        main(["train", *common, "--set", f"run.root={tmp_path / 'runs3'}",
              "--set", f"model={{kind: spatial, channels: [8, 16], norm_groups: 8, z_channels: 4, init_from: {tmp_path / 'vae'}}}"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.init_from:") and err.count("\n") == 1 and "latent_channels 2" in err
    assert not (tmp_path / "runs3").exists() or not any((tmp_path / "runs3").iterdir())

from pathlib import Path

import pytest

from vaelab.config import load_config
from vaelab.errors import VaelabError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_default_config_is_the_builtin_set():
    config = load_config()
    assert config.data.images is None
    assert config.data.size == (64, 64)


def test_yaml_and_overrides_are_typed(tmp_path):
    path = write(tmp_path, "data:\n  size: [48, 32]\n  fit: crop\ntrain:\n  lr: 1.0e-4\n")
    config = load_config(path, ["train.lr=5e-5", "data.filter.include=[standing, duo]", "data.images=pics"])
    assert config.data.size == (48, 32)
    assert config.data.fit == "crop"
    assert config.train.lr == pytest.approx(5e-5)
    assert config.data.filter.include == ["standing", "duo"]
    assert config.data.images == Path.cwd() / "pics"  # resolved against the current directory


def test_unknown_key_in_file_gets_did_you_mean(tmp_path):
    path = write(tmp_path, "data:\n  fitt: pad\n")
    with pytest.raises(VaelabError, match=r"unknown key 'data.fitt'; did you mean 'data.fit'\?"):
        load_config(path)


def test_unknown_key_in_override_names_the_override():
    with pytest.raises(VaelabError, match=r"--set data.filter.exlude=\[a\]: unknown key 'data.filter.exlude'; did you mean 'data.filter.exclude'"):
        load_config(None, ["data.filter.exlude=[a]"])


def test_unknown_section_suggests_a_section():
    with pytest.raises(VaelabError, match=r"unknown key 'trian'; did you mean 'train'"):
        load_config(None, ["trian.lr=1"])


def test_bad_values_name_the_key(tmp_path):
    with pytest.raises(VaelabError, match=r"data.fit"):
        load_config(None, ["data.fit=squash"])
    with pytest.raises(VaelabError, match=r"data.size"):
        load_config(None, ["data.size=[2, 2]"])
    with pytest.raises(VaelabError, match=r"expected section.key=value"):
        load_config(None, ["data.fit"])


def test_tag_both_included_and_excluded_is_an_error():
    with pytest.raises(VaelabError, match=r"tag 'duo' is in both data.filter.include and data.filter.exclude"):
        load_config(None, ["data.filter.include=[duo, standing]", "data.filter.exclude=[duo]"])


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(VaelabError, match=r"invalid YAML at line \d+, column \d+"):
        load_config(write(tmp_path, "data:\n  size: [64, 64\n"))
    with pytest.raises(VaelabError, match=r"config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(VaelabError, match=r"must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["data.fit=stretch", "model.latent=8"])
    path = write(tmp_path, config.to_yaml())
    again = load_config(path)
    assert again.to_dict() == config.to_dict()


def test_a_key_of_several_types_gets_one_readable_message():
    with pytest.raises(VaelabError) as error:
        load_config(None, ["data.workers=-1"])
    assert str(error.value) == "--set data.workers=-1: data.workers: Input should be 'auto' or greater than or equal to 0"


def test_a_bad_value_is_blamed_on_its_set_not_on_the_config(tmp_path):
    with pytest.raises(VaelabError) as error:
        load_config(None, ["train.lr=abc"])
    assert str(error.value).startswith("--set train.lr=abc: train.lr: Input should be a valid number")
    path = write(tmp_path, "data:\n  fit: squash\n")
    with pytest.raises(VaelabError) as error:  # one from the file, one from a --set: each named
        load_config(path, ["data.size=[64, abc]"])
    parts = str(error.value).split("; ")
    assert f"{path}: data.fit: Input should be 'stretch', 'pad' or 'crop'" in parts
    assert any(p.startswith("--set data.size=[64, abc]: data.size[1]: Input should be a valid integer") for p in parts)
    with pytest.raises(VaelabError, match=r"^--set data.filter=\{include: 3\}: data.filter.include: "):
        load_config(None, ["data.filter={include: 3}"])  # a --set of a whole section
    with pytest.raises(VaelabError, match=r"^the default config with --set data.filter.include=\[duo\], "
                                          r"--set data.filter.exclude=\[duo\]: data.filter: tag 'duo'"):
        load_config(None, ["data.filter.include=[duo]", "data.filter.exclude=[duo]"])  # a check over the section


def test_auto_workers_share_the_cores_among_the_training_processes(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    data = load_config(None).data
    assert data.workers == "auto"
    assert (data.worker_count(), data.worker_count(4), data.worker_count(32)) == (8, 4, 1)
    assert load_config(None, ["data.workers=3"]).data.worker_count(4) == 3


def test_switching_model_kind_by_one_override_drops_the_other_familys_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {conv: [{filters: 8}], dense: 16, latent: 8, output_activation: sigmoid}\n"
                    "data: {scale: unit}\n")
    config = load_config(path, ["model.kind=spatial", "model.z_channels=2"])
    assert config.model.kind == "spatial" and config.model.z_channels == 2
    assert config.model.output_activation == "sigmoid"  # a key both families have is kept
    assert load_config(path, ["model.latent=4"]).model.latent == 4  # the file's own family is untouched
    with pytest.raises(VaelabError, match="unknown key 'model.conv'"):
        load_config(path, ["model.kind=spatial", "model.conv=[{filters: 8}]"])

"""The typed config of a learned prior: what `vaelab prior RUN` trains, saved as RUN/prior/config.yaml.

It is its own document, not a section of the run's config: the run's config.yaml is the spec of
the trained autoencoder and stays as it was; a prior is fitted afterwards, on that model's
latents, and can be refitted with other settings without touching the run.

    kind auto      the family's natural prior: vq -> pixelcnn, vector and spatial -> mixture
    kind pixelcnn  a gated PixelCNN (van den Oord et al. 2016) over the code map of a vq run
    kind mixture   a Gaussian mixture fitted ex post to the training images' posterior means
                   (Ghosh et al. 2020), for the Gaussian families

`--set prior.KEY=VALUE` overrides any key, as `--set` does for a run's config.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, ValidationError, field_validator

from vaelab.config import Section, check_keys, parse_override, set_dotted
from vaelab.errors import VaelabError

PRIOR_KINDS = ("auto", "pixelcnn", "mixture")


class PriorConfig(Section):
    kind: Literal["auto", "pixelcnn", "mixture"] = "auto"
    seed: int = 0

    # pixelcnn: the network
    channels: int = Field(32, ge=8, description="pixelcnn: feature channels of both stacks")
    layers: int = Field(8, ge=1, description="pixelcnn: gated layers; the receptive field grows by kernel // 2 per layer")
    kernel: int = Field(5, ge=3, description="pixelcnn: odd kernel size of the gated convolutions")
    # Conditioning on the collection's tags: each image's tags are embedded and summed into every
    # layer. While training, each image shows each of its tags with a keep rate drawn per image
    # from U(0, 1), so that the prior learns to condition on any subset (`sample --tag A --tag B`),
    # the empty one included.
    tags: bool = Field(False, description="pixelcnn: condition on the images' tags (sample --tag)")
    max_tags: int = Field(64, ge=1, description="pixelcnn: the most frequent tags of the training images that are kept")

    # pixelcnn: training
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="pixelcnn: dropout inside the gated layers")

    # mixture
    components: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 2, 4, 8, 16], min_length=1,
        description="mixture: component counts to try; the one with the best validation log-likelihood is kept")
    covariance: Literal["auto", "full", "diag"] = Field(
        "auto", description="mixture: auto = full where the latent has fewer floats than a tenth of the training images, else diag")

    @field_validator("kernel")
    @classmethod
    def _odd(cls, kernel: int) -> int:
        if kernel % 2 == 0:
            raise ValueError(f"must be odd (a centred kernel), got {kernel}; use {kernel + 1}")
        return kernel


class PriorFile(Section):
    prior: PriorConfig = Field(default_factory=PriorConfig)


def prior_config(base: Optional[dict[str, Any]] = None, overrides: Union[tuple[str, ...], list[str]] = ()) -> PriorConfig:
    """The prior config of `base` (a saved prior/config.yaml's mapping, or None for the defaults)
    with `prior.KEY=VALUE` overrides applied. Errors name the key."""
    raw: dict[str, Any] = {"prior": dict(base or {})}
    for override in overrides:
        key, value = parse_override(override)
        if not key.startswith("prior."):
            raise VaelabError(f"--set {override}: a prior's keys start with 'prior.', e.g. --set prior.epochs=20")
        set_dotted(raw, key, value, origin=f"--set {override}")
        alone: dict[str, Any] = {}
        set_dotted(alone, key, value, origin=f"--set {override}")
        check_keys(alone, PriorFile, origin=f"--set {override}")
    check_keys(raw, PriorFile, origin="prior config")
    try:
        return PriorFile.model_validate(raw).prior
    except ValidationError as error:
        item = error.errors()[0]
        where = ".".join(str(part) for part in item["loc"])
        raise VaelabError(f"{where}: {item['msg'].removeprefix('Value error, ')}") from None

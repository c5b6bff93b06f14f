"""The config's sections: the complete spec of a run, one pydantic model per section.

Every section forbids unknown keys (`vaelab.config.load` names them and suggests the nearest).
Each field also says what role its key plays, with `role(...)` (see `vaelab.config.roles`): what
the run computes (the default), how or where it runs, what it records, which seed it is, how long
it lasts; and whether it changes the unit of the loss or the model's input.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from vaelab.config.roles import BOOKKEEPING, EXECUTION, LENGTH, LOSS_UNIT, MODEL_INPUT, REPLICATE, role


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


class FieldNames(Section):
    """Names of the metadata fields. `file` falls back to `filename` when a file has no `file`."""

    file: str = "file"
    tags: str = "tags"
    width: str = "width"
    height: str = "height"
    source: Optional[str] = "source"
    bbox: Optional[str] = "bbox"
    tag_separator: str = Field(",", description="separator when tags are a string, e.g. 'a,b' or 'a|b'")


class FilterConfig(Section):
    orientation: Literal["any", "portrait", "landscape", "square"] = "any"
    include: list[str] = Field(default_factory=list, description="keep images with any of these tags")
    require: list[str] = Field(default_factory=list, description="keep images with all of these tags")
    exclude: list[str] = Field(default_factory=list, description="drop images with any of these tags")
    exclude_sources: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _no_contradiction(self) -> "FilterConfig":
        for wanted_name in ("include", "require"):
            both = sorted(set(getattr(self, wanted_name)) & set(self.exclude))
            if both:
                raise ValueError(
                    f"tag {both[0]!r} is in both data.filter.{wanted_name} and data.filter.exclude;"
                    " remove it from one of them"
                )
        return self


class DataConfig(Section):
    images: Optional[Path] = Field(
        None, description="folder that all image paths are relative to; null = the built-in figure set"
    )
    metadata: Optional[Path] = Field(None, description="JSON, JSONL, CSV or Parquet; null = index the folder")
    fields: FieldNames = Field(default_factory=FieldNames)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    size: tuple[int, int] = Field((64, 64), json_schema_extra=role(LOSS_UNIT, MODEL_INPUT))
    fit: Literal["stretch", "pad", "crop"] = Field("pad", json_schema_extra=role(LOSS_UNIT, MODEL_INPUT))
    bbox_crop: bool = Field(
        True, description="cut each image to its person box (fields.bbox) before fitting; images without a box stay whole",
        json_schema_extra=role(LOSS_UNIT, MODEL_INPUT),
    )
    pad_value: Union[int, tuple[int, int, int]] = Field(0, json_schema_extra=role(LOSS_UNIT, MODEL_INPUT))
    scale: Literal["unit", "symmetric", "standardize"] = Field("unit", json_schema_extra=role(LOSS_UNIT, MODEL_INPUT))
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    workers: Union[Literal["auto"], Annotated[int, Field(ge=0)]] = Field(
        "auto", description="decoding processes for the first epoch (later epochs read the cache); "
        "auto = this machine's cores shared by its training processes, at most 8", json_schema_extra=role(EXECUTION),
    )
    cache: bool = Field(True, description="keep fitted uint8 images in a memory-mapped file",
                        json_schema_extra=role(EXECUTION))
    cache_dir: Optional[Path] = Field(None, description="null = $VAELAB_CACHE_DIR or ~/.cache/vaelab",
                                      json_schema_extra=role(EXECUTION))
    demo_count: int = Field(2000, ge=1, description="size of the built-in figure set when images is null")
    prefetch: int = Field(
        2, ge=0, description="batches gathered from the cache ahead of the training step, in a background thread; 0 = none",
        json_schema_extra=role(EXECUTION),
    )

    @field_validator("size")
    @classmethod
    def _size_positive(cls, size: tuple[int, int]) -> tuple[int, int]:
        if min(size) < 8 or max(size) > 4096:
            raise ValueError(f"data.size {list(size)} must be [height, width] with each side in 8..4096")
        return size

    @field_validator("pad_value")
    @classmethod
    def _pad_in_range(cls, value):
        values = (value,) if isinstance(value, int) else value
        if any(not 0 <= v <= 255 for v in values):
            raise ValueError("data.pad_value must be 0..255 or [r, g, b] with each in 0..255")
        return value

    @property
    def pad_rgb(self) -> tuple[int, int, int]:
        return (self.pad_value,) * 3 if isinstance(self.pad_value, int) else tuple(self.pad_value)

    def worker_count(self, processes_here: int = 1) -> int:
        """`workers`, with auto resolved for `processes_here` training processes on this machine."""
        if self.workers != "auto":
            return self.workers
        return max(1, min(8, (os.cpu_count() or 1) // max(1, processes_here)))

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        return Path(os.environ.get("VAELAB_CACHE_DIR") or Path.home() / ".cache" / "vaelab")


# --------------------------------------------------------------------------------------------
# model, loss, train, run: the keys fixed by the product contract
# --------------------------------------------------------------------------------------------


class ConvLayer(Section):
    filters: int = Field(ge=1)
    kernel: int = Field(3, ge=1)
    stride: int = Field(2, ge=1)


class ModelConfig(Section):
    """kind: vector, the convolutional VAE with one latent vector per image (the seed's family)."""

    kind: Literal["vector"] = "vector"
    conv: list[ConvLayer] = Field(
        default_factory=lambda: [
            ConvLayer(filters=32, kernel=4, stride=2),
            ConvLayer(filters=64, kernel=4, stride=2),
            ConvLayer(filters=128, kernel=4, stride=2),
        ]
    )
    activation: Literal["lrelu", "relu", "elu", "gelu", "silu"] = "lrelu"
    init: Literal["he_normal", "he_uniform", "glorot_normal", "glorot_uniform", "default"] = "he_normal"
    norm: Literal["none", "batch", "group"] = "none"
    dense: int = Field(256, ge=1)
    latent: int = Field(32, ge=1)
    output_activation: Literal["none", "sigmoid", "tanh"] = "none"


class ResNetStack(Section):
    """The encoder/decoder of the spatial and vq families: diffusers' AutoencoderKL blocks (ResNet
    blocks with GroupNorm and SiLU). Each entry of `channels` is one resolution level; every level
    but the last halves the image, so the latent is data.size / 2^(levels - 1)."""

    channels: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [32, 64, 128], min_length=1, description="output channels of each level (block_out_channels)"
    )
    layers_per_block: int = Field(1, ge=1, description="ResNet blocks per level")
    attention: bool = Field(False, description="self-attention in the middle block, at the lowest resolution")
    norm_groups: int = Field(32, ge=1, description="GroupNorm groups; must divide every entry of channels")
    output_activation: Literal["none", "sigmoid", "tanh"] = "none"

    @model_validator(mode="after")
    def _groups_divide(self):
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"model.norm_groups {self.norm_groups} does not divide model.channels entry {bad[0]};"
                             f" use channels that are multiples of {self.norm_groups} or a smaller norm_groups")
        return self

    @property
    def factor(self) -> int:
        """How many image pixels one latent position covers along each side."""
        return 2 ** (len(self.channels) - 1)


class SpatialModelConfig(ResNetStack):
    """kind: spatial, an AutoencoderKL (Stable Diffusion's VAE design) with a z_channels x h x w
    Gaussian latent; saved and loaded in diffusers' format (vaelab export)."""

    kind: Literal["spatial"]
    z_channels: int = Field(4, ge=1, description="channels of the latent map")
    init_from: Optional[Path] = Field(
        None, description="start from the weights of a diffusers AutoencoderKL folder (config.json + safetensors)"
    )


class VQModelConfig(ResNetStack):
    """kind: vq, the same encoder/decoder with a quantized latent map (vector-quantize-pytorch)."""

    kind: Literal["vq"]
    quantizer: Literal["vq", "fsq"] = Field("vq", description="vq: a learned codebook; fsq: finite scalar quantization (levels)")
    codebook_size: int = Field(512, ge=2, description="vq: number of codes")
    code_dim: int = Field(64, ge=1, description="vq: channels of the latent map, the size of each code")
    levels: list[Annotated[int, Field(ge=2)]] = Field(
        default_factory=lambda: [8, 5, 5, 5], min_length=1, description="fsq: levels per latent channel; codes = their product"
    )
    commitment_weight: float = Field(0.25, ge=0.0, description="vq: weight of ||z_e - sg(z_q)||^2, summed per image")
    ema_decay: float = Field(0.99, gt=0.0, lt=1.0, description="vq: EMA decay of the codebook")
    kmeans_init: bool = Field(True, description="vq: initialise the codebook by k-means on the first batch")
    dead_code_threshold: float = Field(
        2.0, ge=0.0, description="vq: codes used fewer times than this (EMA count) are restarted from the batch; 0 = never"
    )
    l2_codes: bool = Field(False, description="vq: L2-normalised codes and inputs (cosine similarity)")

    @property
    def latent_channels(self) -> int:
        return len(self.levels) if self.quantizer == "fsq" else self.code_dim

    @property
    def codes(self) -> int:
        return math.prod(self.levels) if self.quantizer == "fsq" else self.codebook_size


def model_kind(value: Any) -> str:
    """The family a model section describes; a section without `kind` is the vector family."""
    if isinstance(value, dict):
        return value.get("kind", "vector")
    return getattr(value, "kind", "vector")


def section_types(annotation: Any) -> list[type[BaseModel]]:
    """The section classes inside a field's annotation: one, a list's item, or a union's members."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        found += [t for t in section_types(arg) if t not in found]
    return found


AnyModelConfig = Annotated[
    Union[
        Annotated[ModelConfig, Tag("vector")],
        Annotated[SpatialModelConfig, Tag("spatial")],
        Annotated[VQModelConfig, Tag("vq")],
    ],
    Discriminator(model_kind),
]
MODEL_KINDS = {"vector": ModelConfig, "spatial": SpatialModelConfig, "vq": VQModelConfig}


class LossConfig(Section):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, json_schema_extra=role(LOSS_UNIT))
    # sigma-VAE by default: summed MSE left the demo ghostly at 20 epochs (configs/demo.yaml)
    reconstruction: Literal["mse_sum", "bce", "gaussian", "l1"] = "gaussian"
    sigma: Union[Literal["learned", "optimal"], float] = "optimal"
    beta: float = Field(1.0, ge=0.0)
    kl_warmup_epochs: int = Field(0, ge=0)
    free_bits: float = Field(0.0, ge=0.0, description="nats per latent dimension below which KL is not pushed down")
    sigma_min: float = Field(
        0.0025, gt=0.0, description="gaussian: sigma is soft-clipped from below at this value (sigma-VAE's exp(-6))"
    )

    @field_validator("sigma")
    @classmethod
    def _sigma_positive(cls, sigma):
        if not isinstance(sigma, str) and not sigma > 0:
            raise ValueError("loss.sigma must be 'learned', 'optimal' or a positive number")
        return sigma


class TrainConfig(Section):
    """The optimisation. The defaults are configs/demo.yaml's, the embedded default run."""

    epochs: int = Field(20, ge=1, json_schema_extra=role(LENGTH))
    batches_per_epoch: Optional[int] = Field(None, ge=1, description="cap on batches per epoch; null = the whole train split")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: from lr down to lr/100 over train.epochs, a function of the step alone"
    )
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: Optional[float] = Field(None, gt=0.0, description="max gradient norm; null = no clipping")
    seed: int = Field(0, json_schema_extra=role(REPLICATE))
    device: str = Field("auto", description="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps",
                        json_schema_extra=role(EXECUTION))
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="mixed precision on CUDA GPUs; auto = bf16 where the GPU has it, else float32 "
                "(always on CPU); an explicit bf16 or fp16 that this machine cannot run is an error",
        json_schema_extra=role(EXECUTION),
    )
    channels_last: Union[Literal["auto"], bool] = Field(
        "auto", description="NHWC memory format for model and images; auto = true on CUDA (tensor cores), false on CPU",
        json_schema_extra=role(EXECUTION),
    )
    compile: bool = Field(
        False, description="torch.compile the training forward pass; pays a compile delay at start, worth it for long "
        "GPU runs. It draws eager's noise (inductor's fallback_random): a resume is exact and N processes match one, "
        "as without compile; its float rounding differs from eager's, so bitwise only when resumed with compile on",
        json_schema_extra=role(EXECUTION),
    )
    val_batches: Optional[int] = Field(
        None, ge=1, description="cap on validation batches per epoch, drawn as a fixed random subset of the validation "
        "split (seeded by train.seed: the same images every epoch, after a resume and on every rank); null = all")
    ema: Optional[float] = Field(
        None, gt=0.0, lt=1.0, description="decay of an exponential moving average of the weights (e.g. 0.999), "
        "used for validation, the image grids and the model that load_run, evaluate and export read; null = none"
    )
    spike_factor: float = Field(
        20.0, ge=0.0, description="guard: a loss or gradient norm this many mean deviations above its running mean is a spike; 0 = only non-finite values"
    )
    spike_warmup_steps: int = Field(20, ge=0, description="guard: good steps seen before spikes are judged")
    rollback_after: int = Field(5, ge=1, description="guard: bad steps in a row that roll back to the last epoch's end")
    rollback_lr_factor: float = Field(0.5, gt=0.0, le=1.0, description="guard: lr multiplier at each rollback")
    max_rollbacks: int = Field(8, ge=0, description="guard: stop the run after this many rollbacks")

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        # YAML 1.1 reads a bare `off` as false
        return "off" if value is False else value


class RunConfig(Section):
    """What a run records and where: bookkeeping, never part of what it computes."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, json_schema_extra=role(BOOKKEEPING))
    root: Path = Path("runs")
    name: Optional[str] = None
    checkpoint_every: int = Field(16, ge=1, description="keep a numbered checkpoint every N epochs")
    keep_checkpoints: int = Field(3, ge=1, description="numbered checkpoints kept; older ones are deleted")
    checkpoint_steps: Optional[int] = Field(None, ge=1, description="also save 'last' every N steps mid-epoch")
    checkpoint_minutes: Optional[float] = Field(
        2.0, gt=0.0, description="also save 'last' mid-epoch when this long has passed since the last save"
    )
    min_free_gb: float = Field(1.0, ge=0.0, description="stop cleanly, with a warning, rather than leave less free disk")
    tensorboard: bool = True
    images: int = Field(8, ge=0, description="images in the reconstruction grid each epoch (samples: twice as many); 0 = none")
    mlflow_uri: Optional[str] = Field(
        None, description="also log params, metrics and image grids to this MLflow tracking URI "
        "(http://host:5000, sqlite:///mlflow.db); null = no MLflow; needs pip install 'vaelab[mlflow]'"
    )
    mlflow_experiment: str = Field("vaelab", min_length=1, description="MLflow experiment name; created if missing")
    remote: Optional[str] = Field(
        None, description="also keep a copy of each run folder under this URL (s3://bucket/runs, gs://..., "
        "file:///mnt/backup), synced after each checkpoint; --resume auto continues runs found there; "
        "needs pip install 'vaelab[s3]' (or the fsspec package for the store)"
    )
    remote_options: dict[str, Any] = Field(
        default_factory=dict, description="options for the store's fsspec file system, e.g. "
        "{endpoint_url: http://minio:9000}; keep credentials in the environment, not here: the config is saved"
    )

    @field_validator("mlflow_uri")
    @classmethod
    def _absolute_sqlite(cls, uri: Optional[str]) -> Optional[str]:
        # A relative sqlite:///file.db is resolved now, like the config's other paths, so a
        # resume started from another folder logs into the same database.
        rest = uri[len("sqlite:///"):] if uri is not None and uri.startswith("sqlite:///") else None
        if not rest or rest.startswith("/") or rest == ":memory:":
            return uri
        return "sqlite:///" + os.path.abspath(os.path.expanduser(rest))


class Config(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: AnyModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

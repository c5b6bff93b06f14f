"""`vaelab export`: a trained run's model in another library's format.

`--format diffusers` (spatial runs) writes a `diffusers.AutoencoderKL` folder: config.json and
diffusion_pytorch_model.safetensors, loadable with `AutoencoderKL.from_pretrained(OUT)`, plus
`vaelab.json` with what diffusers' config cannot say: the pixel scaling its inputs use
(data.scale), the output activation vaelab applies after the decoder, the image size it was
trained at, and the run and checkpoint it came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from vaelab.errors import VaelabError
from vaelab.files import write_json
from vaelab.model.spatial import export_diffusers
from vaelab.runs.loaded import load_run

FORMATS = ("diffusers",)


def export_run(run_dir: Union[str, Path], out_dir: Union[str, Path], format: str = "diffusers",
               checkpoint: str = "best") -> Path:
    if format not in FORMATS:
        raise VaelabError(f"--format {format}: unknown; use one of {', '.join(FORMATS)}")
    run = load_run(run_dir, checkpoint, "cpu")
    if run.model.family != "spatial":
        raise VaelabError(f"{run_dir}: a model.kind {run.model.family} run has no diffusers equivalent; only"
                          " spatial runs (an AutoencoderKL) export to --format diffusers")
    out_dir = export_diffusers(run.model, Path(out_dir))
    write_json(out_dir / "vaelab.json", {
        "format": "vaelab-export", "run": str(Path(run_dir).absolute()), "checkpoint": run.checkpoint.name,
        "epoch": run.epoch, "data_size": list(run.data.size), "scale": run.data.scale,
        "input_range": {"unit": [0, 1], "symmetric": [-1, 1]}.get(run.data.scale, "standardized per image"),
        "output_activation": run.config.model.output_activation,
        "config": json.loads(json.dumps(run.config.to_dict())),
    })
    return out_dir

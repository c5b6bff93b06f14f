"""vaelab: from a folder of figure photos to trained, compared and sampled VAEs.

    from vaelab import load_run
    vae = load_run("runs/2026-11-26_21h33m47s")   # model, config and data settings
"""

import importlib.metadata

try:
    __version__ = importlib.metadata.version("vaelab")  # pyproject.toml's version: written in one place
except importlib.metadata.PackageNotFoundError:  # a source tree on PYTHONPATH that was never pip-installed
    __version__ = "0+unknown"


def __getattr__(name: str):
    # Imported on first use, so that `vaelab --help` does not pay for importing torch.
    if name == "load_run":
        from vaelab.runs.loaded import load_run

        return load_run
    raise AttributeError(f"module 'vaelab' has no attribute {name!r}")

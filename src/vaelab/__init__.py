"""vaelab: from a folder of figure photos to trained, compared and sampled VAEs.

    from vaelab import load_run
    vae = load_run("runs/2026-11-26_21h33m47s")   # model, config and data settings
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use, so that `vaelab --help` does not pay for importing torch.
    if name == "load_run":
        from vaelab.runs.loaded import load_run

        return load_run
    raise AttributeError(f"module 'vaelab' has no attribute {name!r}")

"""The train layer: one training loop (`trainer`) and what it needs per step: the losses, the
metrics, the NaN and spike guard, the progress bar and the data-parallel collectives; the device
and precision (`device`), the RNGs (`rng`), and the epoch-end validation and image grids (`evaluation`).

It knows configs, data and models, and nothing about run folders (`vaelab.runs`)."""

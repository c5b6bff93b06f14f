"""The run layer: one folder per training run, never reused. How a run starts and resumes
(`session`), what it records (`recorder`, `checkpoints`, `mlflow`, `provenance`), how its folder is
named, found and locked (`folder`), and how a trained run is loaded (`loaded`)."""

"""The run layer: one folder per training run, never reused. How a run starts and resumes
(`session`), what it records (`recorder`, `checkpoints`, `mlflow`, `provenance`), its folder's files,
status, lock and metrics and how the folder is named and found (`folder`), and how a trained run
is loaded (`loaded`)."""

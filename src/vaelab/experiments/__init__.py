"""Experiments on finished (or running) run folders: compare runs, and later sweeps and reports.

Layering: this package reads run folders and may use `vaelab.config`, `vaelab.runs.session` and
`vaelab.data`; nothing but the CLI imports it. Import the submodules directly
(`vaelab.experiments.compare`, `.stats`, `.plots`); this file stays empty so that importing
one of them does not pull in scipy or matplotlib for the others.
"""

"""The experiments layer, on finished (or running) run folders: compare runs, sweeps (`sweep/`),
reports, evaluation, priors and the commands that use a trained model (encode, decode, sample...).

Layering: it may import every layer below it (config, data, model, train, remote, runs); only the
CLI imports it. Import the submodules directly (`vaelab.experiments.compare`, `.stats`, `.plots`);
this file stays empty so that importing one of them does not pull in scipy or matplotlib for the
others.
"""

"""`vaelab sweep PLAN.yaml`: a baseline config plus one-change variants, each run and recorded,
locally or through a shared storage queue, with the journal of measured outcomes."""

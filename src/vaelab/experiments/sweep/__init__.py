"""`vaelab sweep PLAN.yaml`: a baseline config plus one-change variants, each run and recorded,
locally or through a shared storage queue, with the journal of measured outcomes.

The modules, each importing only from those above it:

    plan       the plan file: Plan, Pair, load_plan, each pair's config, key roles, search ranges
    records    which run folder holds each job (pair_state), and sweep.json
    journal    each variant measured against the baseline: journal.md, journal.html, the terminal
    search     a TPE search's trial configs, objective and summary
    database   Optuna's RDB storage from a URL, the queue lock, the heartbeat
    executor   the job state machine both queues use: look, start or resume, read how a job ended
    local      the local queue: `sweep_command`, in this process or in worker processes
    storage    the storage queue: `storage_command`, jobs as trials claimed by workers anywhere
"""

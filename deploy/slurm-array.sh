#!/bin/bash
# vaelab as a preemptible Slurm job array: one task per seed, each continuing its own run folder
# after a preemption, a node failure or its time limit (`--resume auto`). See docs/preemptible.md.
#
# Edit the lines marked EDIT, then:  mkdir -p logs && sbatch deploy/slurm-array.sh
#
#SBATCH --job-name=vaelab
#SBATCH --array=0-2                 # EDIT: one task per seed (the task id is the seed)
#SBATCH --gres=gpu:1                # EDIT: drop for CPU training
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=04:00:00             # EDIT: shorter than the whole run is fine: the task requeues itself
#SBATCH --requeue                   # a preempted task, or one on a failed node, goes back in the queue
#SBATCH --signal=B:USR1@300         # 300 s before the time limit: USR1 to this script only (B:)
#SBATCH --open-mode=append          # a requeued task appends to its log instead of overwriting it
#SBATCH --output=logs/%x-%A_%a.out

set -u
CONFIG=${VAELAB_CONFIG:-configs/ccp-figures.yaml}   # EDIT, or: sbatch --export=ALL,VAELAB_CONFIG=job.yaml ...
SEED=${SLURM_ARRAY_TASK_ID:-0}

# The task id goes into the config (train.seed), so every task is a different run and
# --resume auto finds each task's own folder; tasks with the same config would share runs.
# vaelab runs in the background and this shell waits for it, because bash runs a trap only
# once the foreground command has ended: a `wait` returns as soon as a signal arrives.
vaelab train -c "$CONFIG" --set "train.seed=$SEED" --resume auto &
child=$!
requeue=0

# USR1 (time limit ahead): vaelab stops on SIGTERM or SIGINT, not USR1, so pass it a SIGTERM;
# it finishes the step, writes a checkpoint and exits 143 (not finished). Then this script requeues the task.
trap 'requeue=1; kill -TERM "$child" 2>/dev/null' USR1
# SIGTERM (preemption, scancel): Slurm signals vaelab itself too, and a second signal would make
# vaelab abort without its checkpoint, so only keep this shell alive until vaelab has saved;
# the batch step ending first would kill vaelab mid-save. Slurm requeues a preempted task itself.
trap ':' TERM

while :; do
  wait "$child"
  code=$?
  kill -0 "$child" 2>/dev/null || break   # a signal cut the wait short: vaelab is still saving
done

if [ "$requeue" = 1 ]; then
  echo "vaelab: time limit ahead, checkpoint written; requeueing task $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"   # an array task has its own job id; it comes back pending
fi
exit "$code"

#!/usr/bin/env bash
# Multi-node GPU under SLURM, one process per node driving its GPUs:
#   sbatch --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 --signal=TERM@120 \
#          launch/slurm.sh configs/imagenet_lt.py /shared/workdirs/imagenet_lt [--config.x=y ...]
# JAX reads the process layout from SLURM's variables (no JAX_* needed).
# --signal=TERM@120 sends SIGTERM two minutes before the time limit. All
# processes stop at the same agreed point (the step in progress of whatever
# loop runs: stage 1, stage 2, a DLSA flow or classifier; or between two
# stages, e.g. when the signal comes during an evaluation), save it and
# exit 143; resubmitting the same command (or --requeue) resumes from it
# exactly (docs/parallelism.md, "Preemption").
set -euo pipefail
config=$1 workdir=$2; shift 2
exec srun python -m lcreg_jax.main --distributed --config="$config" --workdir="$workdir" "$@"

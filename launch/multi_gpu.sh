#!/usr/bin/env bash
# NVIDIA GPUs. One process drives all GPUs of a machine (the mesh spans them):
#   launch/multi_gpu.sh configs/imagenet_lt.py workdirs/imagenet_lt [--config.x=y ...]
# Several machines: run the same command on each with
#   JAX_COORDINATOR_ADDRESS=<host of process 0>:<free port>
#   JAX_NUM_PROCESSES=<number of machines>  JAX_PROCESS_ID=<0, 1, ...>
# set; the script then passes --distributed, and main checks the three
# variables before it joins the others. Under SLURM use launch/slurm.sh.
# The workdir must be one folder every machine sees (NFS, or gs://...).
set -euo pipefail
config=$1 workdir=$2; shift 2
extra=()
if [[ -n "${JAX_NUM_PROCESSES:-}" ]]; then extra+=(--distributed); fi
exec python -m lcreg_jax.main "${extra[@]}" --config="$config" --workdir="$workdir" "$@"

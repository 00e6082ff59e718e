#!/usr/bin/env bash
# One process drives all GPUs of a machine (the mesh spans them):
#   launch/multi_gpu.sh configs/cifar10_lt.py workdirs/c10 [--config.x=y ...]
# For several machines run this on each with the JAX coordinator variables
# set (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) and add
# --distributed.
set -euo pipefail
config=$1 workdir=$2; shift 2
exec python -m lcreg_jax.main --config="$config" --workdir="$workdir" "$@"

#!/usr/bin/env bash
# Runs one config on every host of a Cloud TPU pod slice.
#   launch/tpu_pod.sh TPU_NAME ZONE configs/imagenet_lt.py gs://bucket/workdir [--config.x=y ...]
# Each host runs the same command; --distributed makes JAX find its peers and
# the input pipeline then feeds each host's share of every global batch.
# A preemption notice (SIGTERM on every host) stops all hosts at one agreed
# point, in any stage, DLSA included; each saves and exits 143, and the
# same command resumes exactly (docs/parallelism.md, "Preemption").
set -euo pipefail
tpu=$1 zone=$2 config=$3 workdir=$4; shift 4
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  cd ~/lcreg_jax && . .venv/bin/activate &&
  python -m lcreg_jax.main --distributed --config=$config --workdir=$workdir $*"

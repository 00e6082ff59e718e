#!/usr/bin/env bash
# N processes on this machine, each with D CPU devices, joined through a
# localhost coordinator: the multi-host code path without a cluster (what
# tests/test_distributed.py checks against one process).
#   launch/local_processes.sh 2 2 tests/tiny.py /tmp/two_processes [--config.x=y ...]
# Each process logs to WORKDIR.p<i>.log; the command fails if any does.
# Every stage and option runs this way as on one process (validation
# selection, each stage-2 method, DLSA); benchmarks/pods_parity.py compares
# the two. `kill -TERM` to all N processes stops them at one agreed point
# with a checkpoint (exit 143); the same command resumes.
set -euo pipefail
n=$1 d=$2 config=$3 workdir=$4; shift 4
port=$(python -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')
export JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$d"
export JAX_COORDINATOR_ADDRESS="localhost:$port" JAX_NUM_PROCESSES="$n"
pids=()
for ((i = 0; i < n; i++)); do
  JAX_PROCESS_ID=$i python -m lcreg_jax.main --distributed --config="$config" \
      --workdir="$workdir" "$@" > "$workdir.p$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
tail -n 8 "$workdir.p0.log"
exit "$status"

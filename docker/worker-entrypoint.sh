#!/usr/bin/env bash
# Entry point of the worker image: pin this container to WORKER_GPUS free GPUs, then exec "$@".
#
# `docker compose up --scale worker=N` starts N identical containers, and Compose cannot
# hand each its own GPU: with `count: 1` every replica gets the same one
# (docker/compose#11863). So every worker container sees all GPUs of its host
# (`count: all`) and takes WORKER_GPUS of them (default 1) by holding an flock on
# GPU_LOCK_DIR/gpu-<index> for as long as it runs; GPU_LOCK_DIR is a named volume, local
# to the host and shared by its worker containers. The kernel drops the locks when the
# container's process ends, so a restarted worker takes them again. CUDA_VISIBLE_DEVICES
# then names the taken GPUs (CUDA_DEVICE_ORDER=PCI_BUS_ID, the order nvidia-smi counts
# in), and a job with `gpus: k <= WORKER_GPUS` runs torchrun over them.
#
# All GPUs taken: wait, retrying every GPU_WAIT_S seconds (a spare replica starts work
# when another stops). WORKER_GPUS above the host's GPU count: exit 1. No GPU visible
# (nvidia-smi missing or listing none): run on the CPU, unpinned.
set -euo pipefail

want=${WORKER_GPUS:-1}
lock_dir=${GPU_LOCK_DIR:-/locks}
wait_s=${GPU_WAIT_S:-30}

if ! [[ $want =~ ^[1-9][0-9]*$ ]]; then
  echo "worker-entrypoint: WORKER_GPUS must be a whole number >= 1, got '$want'" >&2
  exit 2
fi

gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || true)
read -r -a indices <<< "$(echo $gpus)"
if (( ${#indices[@]} == 0 )); then
  echo "worker-entrypoint: no GPU visible (nvidia-smi lists none); running on the CPU" >&2
  exec "$@"
fi
if (( want > ${#indices[@]} )); then
  echo "worker-entrypoint: WORKER_GPUS=$want but this host has ${#indices[@]} GPU(s): ${indices[*]}" >&2
  exit 1
fi

mkdir -p "$lock_dir"
announced=""
while :; do
  taken=() fds=()
  for index in "${indices[@]}"; do
    exec {fd}>>"$lock_dir/gpu-$index"
    if flock --nonblock "$fd"; then
      taken+=("$index") fds+=("$fd")
      (( ${#taken[@]} == want )) && break
    else
      exec {fd}>&-
    fi
  done
  (( ${#taken[@]} == want )) && break
  for fd in "${fds[@]}"; do exec {fd}>&-; done  # fewer than wanted: give them back, retry later
  if [[ -z $announced ]]; then
    echo "worker-entrypoint: fewer than $want of the GPUs ${indices[*]} are free (each running worker holds its own); waiting" >&2
    announced=yes
  fi
  sleep "$wait_s"
done

export CUDA_VISIBLE_DEVICES
CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${taken[*]}")
export CUDA_DEVICE_ORDER=PCI_BUS_ID
echo "worker-entrypoint: GPU(s) $CUDA_VISIBLE_DEVICES" >&2
exec "$@"  # the lock descriptors stay open in the exec'd worker: the GPUs stay ours while it runs

#!/bin/bash
# segae_jax on a Cloud TPU pod slice: the code and its environment on every worker, then the same
# `train.py --distributed` on all of them at once (JAX detects the slice's workers itself).
#
#   TPU=my-v5e-16 ZONE=us-west4-a scripts/tpu_pod.sh configs/unet_scenes.py gs://bucket/runs/unet \
#     [--config.key=value ...]
#
# The workdir is a gs:// URL (every worker writes its part of each checkpoint there through orbax
# and tensorstore; process 0 writes the logs, results and pictures through gcsfs); give --config.data.tfds_dir a gs:// path too, or a dataset
# the workers can each read. config.batch_size must divide by the slice's chip count.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE to its zone}"
config=${1:?usage: scripts/tpu_pod.sh CONFIG WORKDIR [--config.key=value ...]}
workdir=${2:?usage: scripts/tpu_pod.sh CONFIG WORKDIR [--config.key=value ...]}
shift 2
remote=segae_jax
ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="$1"
}

# 1. The code: this checkout, as an archive of its committed tree, on every worker.
archive=$(mktemp --suffix=.tar.gz)
git archive --format=tar.gz -o "$archive" HEAD
gcloud compute tpus tpu-vm scp "$archive" "$TPU":segae_jax.tar.gz --zone="$ZONE" --worker=all
rm -f "$archive"
# 2. The environment: the pinned package with the TPU and gs:// extras, in a venv on every worker.
ssh_all "rm -rf $remote && mkdir -p $remote && tar -xzf segae_jax.tar.gz -C $remote && \
  cd $remote && python3 -m venv .venv && .venv/bin/pip install --quiet -e '.[tpu,gcs]'"
# 3. The run: every worker at once; a preempted run (exit 75) resumes with the same command.
args=$(printf ' %q' "$@")
ssh_all "cd $remote && .venv/bin/python train.py --distributed --config=$config \
  --workdir=$workdir$args"

#!/usr/bin/env bash
#SBATCH --job-name=tinyvit_jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
#
# Runs a tinyvit_jax recipe on several GPU nodes under SLURM: one process per node
# drives all of that node's GPUs, and the processes meet through jax.distributed.
#
#   launch/slurm_gpu.sh --nodes 4 --recipe configs/in1k.py:variant=5m \
#     --workdir /shared/runs/in1k_5m --data-dir /shared/tfds -- --config.epochs=10
#   launch/slurm_gpu.sh --recipe configs/fpd_21k.py:variant=5m --workdir /shared/runs/fpd_5m \
#     --data-dir /shared/in21k -- --config.distill.teacher=/shared/teacher_export
#   sbatch --nodes=4 launch/slurm_gpu.sh --recipe configs/in1k.py:variant=5m \
#     --workdir /shared/runs/in1k_5m --data-dir /shared/tfds
#
# Outside a job the script checks the recipe and every flag here, as main checks them
# before its first stage ('PYTHON -m tinyvit_jax.main --check' with the flags the tasks
# get), then submits itself with sbatch, so a typo never waits in the queue; --dry-run
# checks and prints the sbatch command. Submitted with sbatch directly, the same check
# runs first thing in the job, before srun.
#
# Submit from the repository root (recipes are paths relative to it) in the Python
# environment that has tinyvit_jax and jax[cuda12]: sbatch hands that environment to the
# job, and PYTHON (default: python) is the interpreter the tasks run. The workdir must be
# on storage every node sees: a shared file system, or a bucket mounted at the same path
# on every node (gcsfuse); gs:// paths are refused, since the workdir, the logit store
# and the data go through local file APIs. Inside an allocation (sbatch or salloc) the
# script checks, then runs
#   srun --ntasks-per-node=1 --kill-on-bad-exit=1 ... python -m tinyvit_jax.main \
#     --config=RECIPE --workdir=DIR --distributed ...
# with this environment for jax.distributed.initialize():
#   JAX_COORDINATOR_ADDRESS  HOST:PORT, HOST the first of
#                            `scontrol show hostnames "$SLURM_JOB_NODELIST"`; JAX reads it.
#   JAX_LOCAL_DEVICE_IDS     0,...,G-1 for the node's G GPUs (SLURM_GPUS_ON_NODE); JAX
#                            reads it. Without it JAX's SLURM detection gives each process
#                            only the GPU numbered SLURM_LOCALID, which is GPU 0 here.
#   JAX_NUM_PROCESSES        SLURM_NNODES (one task per node)
#   JAX_PROCESS_ID           the task's SLURM_PROCID
# JAX itself takes the process count and id from SLURM_NTASKS and SLURM_PROCID (its
# cluster detection); JAX_NUM_PROCESSES and JAX_PROCESS_ID are the same numbers spelled
# out, the fallback for a launcher that hides SLURM's variables from the tasks. With
# --dry-run inside an allocation it asks scontrol for the host names and prints the
# environment and the srun command; outside one it prints the sbatch command.
#
# Options:
#   --recipe CONFIG[:ARGS]  e.g. configs/in1k.py:variant=5m (required)
#   --workdir DIR           checkpoints, logits and logs (required)
#   --data-dir DIR          the recipe's data, as main's --data_dir: a tfds data_dir (tfds
#                           recipes), or a folder holding train/ and val/ prepared
#                           folders (ArrayRecord recipes: fpd_21k)
#   --port PORT             coordinator port (default: 20000 + SLURM_JOB_ID % 20000)
#   --nodes N               when submitting: sbatch --nodes (default: the header's)
#   --gpus-per-node G       when submitting: sbatch --gpus-per-node (default: the header's)
#   --time T                when submitting: sbatch --time (default: the header's)
#   --dry-run               print every command and the environment, run nothing
#   -- ARGS...              more flags for tinyvit_jax.main (e.g. --config.epochs=10)
set -euo pipefail

usage() {
  sed -n '10,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

die() {
  echo "slurm_gpu.sh: error: $*" >&2
  echo "Run 'launch/slurm_gpu.sh --help' for the options." >&2
  exit 2
}

# Quotes one word for a shell only when it needs it, so printed commands stay readable
# and can be pasted back.
quote() {
  local plain='^[A-Za-z0-9_./:=@%+,-]+$'
  if [[ $1 =~ $plain ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote_all() {
  local word out=()
  for word in "$@"; do
    out+=("$(quote "$word")")
  done
  printf '%s' "${out[*]}"
}

run() {
  echo "+ $(quote_all "$@")"
  if [[ $dry_run == 0 ]]; then
    "$@"
  fi
}

set_env() {
  echo "+ export $1=$(quote "$2")"
  export "$1=$2"
}

recipe='' workdir='' data_dir='' port='' dry_run=0
submit_flags=() script_args=() extra=()
while (($#)); do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --recipe|--workdir|--data-dir|--port|--nodes|--gpus-per-node|--time)
      (($# >= 2)) || die "$1 needs a value"
      case $1 in
        --recipe) recipe=$2 ;;
        --workdir) workdir=$2 ;;
        --data-dir) data_dir=$2 ;;
        --port) port=$2 ;;
        *) submit_flags+=("$1=$2") ;;
      esac
      case $1 in
        --nodes|--gpus-per-node|--time) ;;
        *) script_args+=("$1" "$2") ;;
      esac
      shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option '$1'" ;;
  esac
done

[[ -n $recipe ]] || die "--recipe is required (e.g. configs/in1k.py:variant=5m)"
[[ -n $workdir ]] || die "--workdir is required (on storage every node sees)"

main=("${PYTHON:-python}" -m tinyvit_jax.main "--config=$recipe" "--workdir=$workdir" --distributed)
if [[ -n $data_dir ]]; then
  main+=("--data_dir=$data_dir")
fi
main+=("${extra[@]}")

# main's own check, here, on the flags the tasks get.
echo "+ $(quote_all "${main[@]}" --check)"
if ! output=$("${main[@]}" --check 2>&1); then
  problem=$(sed -n '/^error: /,$p' <<<"$output")
  [[ -n $problem ]] || die "could not run the check with ${main[0]}" \
    "($(tail -n 1 <<<"$output")): run this from the environment that has tinyvit_jax," \
    "or set PYTHON to its Python"
  die "the recipe check failed, so nothing was started: ${problem#error: }"
fi

if [[ -z ${SLURM_JOB_ID:-} ]]; then
  if ((${#extra[@]})); then
    script_args+=(-- "${extra[@]}")
  fi
  run sbatch "${submit_flags[@]}" "$0" "${script_args[@]}"
  exit 0
fi

mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
((${#hosts[@]})) || die "scontrol found no hosts in SLURM_JOB_NODELIST='$SLURM_JOB_NODELIST'"
gpus=${SLURM_GPUS_ON_NODE:-}
[[ -n $gpus ]] || die "SLURM_GPUS_ON_NODE is unset: request GPUs (--gpus-per-node)"
set_env JAX_COORDINATOR_ADDRESS "${hosts[0]}:${port:-$((20000 + SLURM_JOB_ID % 20000))}"
set_env JAX_NUM_PROCESSES "$SLURM_NNODES"
set_env JAX_LOCAL_DEVICE_IDS "$(seq -s, 0 $((gpus - 1)))"

# JAX_PROCESS_ID differs per task, so each task sets it from its own SLURM_PROCID.
# shellcheck disable=SC2016
run srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
  bash -c 'export JAX_PROCESS_ID=$SLURM_PROCID && exec "$@"' task "${main[@]}"

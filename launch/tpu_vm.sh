#!/usr/bin/env bash
# Runs a tinyvit_jax recipe on every worker of a Cloud TPU VM pod slice.
#
#   launch/tpu_vm.sh --name tvit --zone us-central2-b --accelerator-type v4-32 \
#     --recipe configs/fpd_21k.py:variant=5m --workdir gs://BUCKET/runs/fpd_5m \
#     --data-dir gs://BUCKET/tfds [-- --config.batch_size=2048 ...]
#   launch/tpu_vm.sh --name tvit --zone us-central2-b --delete
#
# Steps, each printed as '+ COMMAND' before it runs:
#   1. create the slice (gcloud compute tpus tpu-vm create);
#   2. install: pack this checkout's HEAD (git archive; uncommitted edits stay behind),
#      unpack it in every worker's ~/tinyvit_jax (replacing what was there) and
#      pip-install it there with jax[tpu]; or, with --pip SPEC, pip-install SPEC (e.g.
#      a git URL) instead, and then the recipe path must exist in the workers' home;
#   3. run 'python3 -m tinyvit_jax.main --distributed' on all workers at once
#      (--worker=all); jax.distributed.initialize() finds its peers from the TPU
#      metadata, so no coordinator address is needed.
# Every worker writes to and reads from the same workdir, so it must be on GCS; the
# logit store defaults to WORKDIR/logits and so is on GCS too. The slice's service
# account needs read and write access to those buckets. The run lasts as long as
# the ssh session: if that drops, rerun with --no-create --no-install and the run
# resumes from the workdir's last checkpoint.
#
# Options:
#   --name NAME               TPU VM name (required)
#   --zone ZONE               its zone (required)
#   --project PROJECT         GCP project (default: gcloud's configured one)
#   --accelerator-type TYPE   slice type, e.g. v4-32, v5litepod-16 (required to create)
#   --version VERSION         TPU software version (default: tpu-ubuntu2204-base, for
#                             v4; v5e wants v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e)
#   --recipe CONFIG[:ARGS]    e.g. configs/in1k.py:variant=5m (required to run)
#   --workdir gs://...        checkpoints, logits and logs (required to run)
#   --data-dir gs://...       tfds data_dir of the recipe's train and eval data
#   --pip SPEC                install SPEC on the workers instead of copying this checkout
#   --no-create               the slice already exists
#   --no-install              the workers already have the project
#   --delete                  delete the slice and do nothing else
#   --dry-run                 print every command, run none
#   -- ARGS...                more flags for tinyvit_jax.main (e.g. --config.epochs=10)
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

die() {
  echo "tpu_vm.sh: error: $*" >&2
  echo "Run 'launch/tpu_vm.sh --help' for the options." >&2
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

join_quoted() {
  local word out=()
  for word in "$@"; do
    out+=("$(quote "$word")")
  done
  printf '%s' "${out[*]}"
}

run() {
  echo "+ $(join_quoted "$@")"
  if [[ $dry_run == 0 ]]; then
    "$@"
  fi
}

name='' zone='' project='' accelerator_type='' version='tpu-ubuntu2204-base'
recipe='' workdir='' data_dir='' pip_spec=''
create=1 install=1 delete=0 dry_run=0
extra=()
while (($#)); do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --name|--zone|--project|--accelerator-type|--version|--recipe|--workdir|--data-dir|--pip)
      (($# >= 2)) || die "$1 needs a value"
      value=$2
      case $1 in
        --name) name=$value ;;
        --zone) zone=$value ;;
        --project) project=$value ;;
        --accelerator-type) accelerator_type=$value ;;
        --version) version=$value ;;
        --recipe) recipe=$value ;;
        --workdir) workdir=$value ;;
        --data-dir) data_dir=$value ;;
        --pip) pip_spec=$value ;;
      esac
      shift 2 ;;
    --no-create) create=0; shift ;;
    --no-install) install=0; shift ;;
    --delete) delete=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option '$1'" ;;
  esac
done

[[ -n $name ]] || die "--name is required"
[[ -n $zone ]] || die "--zone is required"
tpu=(gcloud compute tpus tpu-vm)
where=("--zone=$zone")
if [[ -n $project ]]; then
  where+=("--project=$project")
fi

if [[ $delete == 1 ]]; then
  run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
  exit 0
fi

[[ -n $recipe ]] || die "--recipe is required (e.g. configs/in1k.py:variant=5m)"
[[ -n $workdir ]] || die "--workdir is required (a gs:// path)"
[[ $workdir == gs://* ]] ||
  die "--workdir must be a gs:// path that every worker sees, not '$workdir'"
if [[ $create == 1 ]]; then
  [[ -n $accelerator_type ]] ||
    die "--accelerator-type is required to create the slice (or pass --no-create)"
  run "${tpu[@]}" create "$name" "${where[@]}" "--accelerator-type=$accelerator_type" \
    "--version=$version"
fi

if [[ $install == 1 ]]; then
  if [[ -n $pip_spec ]]; then
    setup="python3 -m pip install -q -U \"jax[tpu]\" $(quote "$pip_spec")"
  else
    repo=$(cd "$(dirname "$0")/.." && pwd)
    archive="${TMPDIR:-/tmp}/tinyvit_jax-$name.tar.gz"
    run git -C "$repo" archive --format=tar.gz "--output=$archive" HEAD
    run "${tpu[@]}" scp "$archive" "$name:tinyvit_jax.tar.gz" "${where[@]}" --worker=all
    setup="rm -rf tinyvit_jax && mkdir tinyvit_jax && tar -xzf tinyvit_jax.tar.gz -C tinyvit_jax"
    setup+=' && python3 -m pip install -q -U "jax[tpu]" -e ./tinyvit_jax'
  fi
  run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$setup"
fi

main=(python3 -m tinyvit_jax.main "--config=$recipe" "--workdir=$workdir" --distributed)
if [[ -n $data_dir ]]; then
  main+=("--config.data.train.data_dir=$data_dir" "--config.data.eval.data_dir=$data_dir")
fi
main+=("${extra[@]}")
if [[ -z $pip_spec ]]; then
  command="cd tinyvit_jax && $(join_quoted "${main[@]}")"
else
  command=$(join_quoted "${main[@]}")
fi
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$command"

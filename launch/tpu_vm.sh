#!/usr/bin/env bash
# Runs a tinyvit_jax recipe on every worker of a Cloud TPU VM pod slice.
#
#   launch/tpu_vm.sh --name tvit --zone us-central2-b --accelerator-type v4-32 \
#     --recipe configs/fpd_21k.py:variant=5m --workdir gs://BUCKET/runs/fpd_5m \
#     --data-dir gs://BUCKET/in21k -- --config.distill.teacher=gs://BUCKET/teacher_export
#   launch/tpu_vm.sh --name tvit --zone us-central2-b --accelerator-type v4-32 \
#     --recipe configs/in1k.py:variant=5m --workdir gs://BUCKET/runs/in1k_5m \
#     --data-dir gs://BUCKET/tfds -- --config.epochs=10
#   launch/tpu_vm.sh --name tvit --zone us-central2-b --delete
#
# Steps, each printed as '+ COMMAND' before it runs:
#   0. check, here, the recipe and every flag as main checks them before its first stage
#      ('python3 -m tinyvit_jax.main --check' with the flags the workers get, run in
#      this checkout; PYTHON names another interpreter), so a typo or a missing path
#      stops the launch before anything is created. This runs with --dry-run too;
#   0b. before creating the slice: plan the recipe for --accelerator-type, here
#      ('--plan=TYPE': every stage compiled for the slice on this machine, with its HBM
#      per chip and modelled speed; minutes on a laptop, no TPU needed), and stop when a
#      stage does not fit or does not compile; --no-plan skips it, to go on regardless.
#      --dry-run prints it and does not run it;
#   1. create the slice (gcloud compute tpus tpu-vm create);
#   2. install: pack this checkout's HEAD (git archive; uncommitted edits stay behind),
#      unpack it in every worker's ~/tinyvit_jax (replacing what was there) and
#      pip-install it there with jax[tpu]; or, with --pip SPEC, pip-install SPEC (e.g.
#      a git URL) instead, and then the recipe path must exist in the workers' home
#      (step 0 still checks it with this checkout's code: keep it at SPEC's version).
#      With gs:// paths, gcsfuse is installed too where it is missing;
#   3. mount: each bucket of a gs:// --workdir, --data-dir or --config.KEY=gs://... flag
#      (a teacher, a logit store, weights) is mounted with gcsfuse
#      at /mnt/gcs/BUCKET on every worker (mounts do not survive a reboot, so this runs
#      each time; a bucket already mounted is left as it is);
#   4. run 'python3 -m tinyvit_jax.main --distributed' on all workers at once
#      (--worker=all), gs://BUCKET/PATH given as /mnt/gcs/BUCKET/PATH;
#      jax.distributed.initialize() finds its peers from the TPU metadata, so no
#      coordinator address is needed.
# Every worker writes to and reads from the same workdir, so it must be on storage they
# all see: gs:// (mounted as above), or an absolute path on a shared file system such as
# Filestore. The workdir, the logit store (WORKDIR/logits) and grain's ArrayRecord
# reads all go through local file APIs, which is why buckets are mounted, not addressed
# as gs://. A bucket with hierarchical namespace makes the checkpoints' directory renames
# atomic. The slice's service account needs read and write access to the buckets. The
# run lasts as long as the ssh session: if that drops, rerun with --no-create
# --no-install and the run resumes from the workdir's last checkpoint.
#
# Options:
#   --name NAME               TPU VM name (required)
#   --zone ZONE               its zone (required)
#   --project PROJECT         GCP project (default: gcloud's configured one)
#   --accelerator-type TYPE   slice type, e.g. v4-32, v5litepod-16 (required to create)
#   --version VERSION         TPU software version (default: tpu-ubuntu2204-base, for
#                             v4; v5e wants v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e)
#   --recipe CONFIG[:ARGS]    e.g. configs/in1k.py:variant=5m (required to run)
#   --workdir gs://... | /shared/...   checkpoints, logits and logs (required to run)
#   --data-dir gs://... | /shared/...  the recipe's data, as main's --data_dir: a tfds
#                             data_dir (tfds recipes), or a folder holding train/ and
#                             val/ prepared folders (ArrayRecord recipes: fpd_21k)
#   --pip SPEC                install SPEC on the workers instead of copying this checkout
#   --no-create               the slice already exists
#   --no-install              the workers already have the project
#   --no-plan                 skip step 0b, the plan for --accelerator-type
#   --delete                  delete the slice and do nothing else
#   --dry-run                 print every command, run none
#   -- ARGS...                more flags for tinyvit_jax.main (e.g. --config.epochs=10);
#                             --config.KEY=gs://... values are mounted as above
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
create=1 install=1 plan=1 delete=0 dry_run=0
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
    --no-plan) plan=0; shift ;;
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
[[ -n $workdir ]] || die "--workdir is required (gs://BUCKET/... or a shared absolute path)"

# gs://BUCKET/PATH -> /mnt/gcs/BUCKET/PATH, the bucket added to those to mount; an
# absolute path stays as it is. Anything else is refused: each worker would resolve a
# relative path in its own home, and other URLs have no mount here.
buckets=()
mounted_path() {
  local flag=$1 path=$2 bucket
  case $path in
    gs://?*)
      bucket=${path#gs://}
      bucket=${bucket%%/*}
      [[ " ${buckets[*]} " == *" $bucket "* ]] || buckets+=("$bucket")
      mounted="/mnt/gcs/${path#gs://}" ;;
    /*) mounted=$path ;;
    *) die "$flag must be gs://BUCKET/... or an absolute path every worker sees, not '$path'" ;;
  esac
}
mounted_path --workdir "$workdir"
main=(python3 -m tinyvit_jax.main "--config=$recipe" "--workdir=$mounted" --distributed)
if [[ -n $data_dir ]]; then
  mounted_path --data-dir "$data_dir"
  main+=("--data_dir=$mounted")
fi
for word in "${extra[@]}"; do
  if [[ $word == --config.*=gs://* ]]; then
    mounted_path "${word%%=*}" "${word#*=}"
    word="${word%%=*}=$mounted"
  fi
  main+=("$word")
done
if [[ $create == 1 && -z $accelerator_type ]]; then
  die "--accelerator-type is required to create the slice (or pass --no-create)"
fi

# Step 0: main's own check, here, on the flags the workers get.
repo=$(cd "$(dirname "$0")/.." && pwd)
check=("${PYTHON:-python3}" "${main[@]:1}" --check)
echo "+ $(join_quoted "${check[@]}")"
if ! output=$(cd "$repo" && PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "${check[@]}" 2>&1)
then
  problem=$(sed -n '/^error: /,$p' <<<"$output")
  [[ -n $problem ]] || die "could not run the check with ${check[0]}" \
    "($(tail -n 1 <<<"$output")): 'pip install -e $repo' into it, or set PYTHON to a" \
    "Python that has tinyvit_jax's requirements"
  die "the recipe check failed, so nothing was started: ${problem#error: }"
fi

# Step 0b: the plan for the slice, here too (its table goes to the terminal).
if [[ $plan == 1 && $create == 1 ]]; then
  planned=("${PYTHON:-python3}" "${main[@]:1}" "--plan=$accelerator_type")
  echo "+ $(join_quoted "${planned[@]}")"
  if [[ $dry_run == 0 ]]; then
    if output=$(cd "$repo" && PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" \
        "${planned[@]}" 2>&1); then
      printf '%s\n' "$output"
    else
      printf '%s\n' "$output" | grep -v -e '^error: ' >&2 || true
      problem=$(grep '^error: ' <<<"$output" | tail -n 1)
      [[ -n $problem ]] || problem="error: $(tail -n 1 <<<"$output")"
      die "the plan for $accelerator_type stopped the launch, nothing was started:" \
        "${problem#error: } (--no-plan goes on regardless)"
    fi
  fi
fi

if [[ $create == 1 ]]; then
  run "${tpu[@]}" create "$name" "${where[@]}" "--accelerator-type=$accelerator_type" \
    "--version=$version"
fi

if [[ $install == 1 ]]; then
  if [[ -n $pip_spec ]]; then
    setup="python3 -m pip install -q -U \"jax[tpu]\" $(quote "$pip_spec")"
  else
    archive="${TMPDIR:-/tmp}/tinyvit_jax-$name.tar.gz"
    run git -C "$repo" archive --format=tar.gz "--output=$archive" HEAD
    run "${tpu[@]}" scp "$archive" "$name:tinyvit_jax.tar.gz" "${where[@]}" --worker=all
    setup="rm -rf tinyvit_jax && mkdir tinyvit_jax && tar -xzf tinyvit_jax.tar.gz -C tinyvit_jax"
    setup+=' && python3 -m pip install -q -U "jax[tpu]" -e ./tinyvit_jax'
  fi
  if ((${#buckets[@]})); then
    # Google's apt repository for gcsfuse; lsb_release runs on the worker.
    keyring=/usr/share/keyrings/cloud.google.asc
    # shellcheck disable=SC2016
    repository='gcsfuse-$(lsb_release -cs)'
    setup+=" && { command -v gcsfuse >/dev/null || {"
    setup+=" echo \"deb [signed-by=$keyring] https://packages.cloud.google.com/apt $repository"
    setup+=" main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null"
    setup+=" && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg"
    setup+=" | sudo tee $keyring >/dev/null"
    setup+=" && sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; }; }"
  fi
  run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$setup"
fi

if ((${#buckets[@]})); then
  mounts=()
  for bucket in "${buckets[@]}"; do
    point=$(quote "/mnt/gcs/$bucket")
    mount="sudo mkdir -p $point && sudo chown \"\$USER\" $point && { mountpoint -q $point"
    mount+=" || gcsfuse --implicit-dirs --rename-dir-limit=200000 $(quote "$bucket") $point; }"
    mounts+=("$mount")
  done
  mount_all=$(printf ' && %s' "${mounts[@]}")
  run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "${mount_all# && }"
fi

if [[ -z $pip_spec ]]; then
  command="cd tinyvit_jax && $(join_quoted "${main[@]}")"
else
  command=$(join_quoted "${main[@]}")
fi
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$command"

#!/usr/bin/env bash
# Downloads the wheels that benchmarks/accelerator.py needs and the GPU machine lacks.
#
#   benchmarks/accelerator_wheels.sh [DIR]      # default DIR: .whl (git ignores it)
#
# The lent GPU machine (CPython 3.12, x86-64, no network) has jax 0.11, flax, optax,
# orbax-checkpoint, torch, timm, numpy, pillow, pyyaml, protobuf, etils and psutil, but
# not grain, ml_collections, tensorflow-datasets or array_record, nor these packages'
# own needs listed below (promise is built from source: it has no wheel). The versions are the ones the test suite runs with here; none
# of them depends on jax. There, before the suite:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail

dest=${1:-.whl}
wheels=(
  grain==0.2.18 array_record==0.8.6 portpicker==1.6.0
  ml_collections==1.1.0
  tensorflow-datasets==4.9.10 dm-tree==0.1.10 immutabledict==4.3.1
  simple-parsing==0.1.9 docstring-parser==0.18.0 tensorflow-metadata==1.21.0
  googleapis-common-protos==1.76.0 termcolor==3.3.0 toml==0.10.2 tensorboardX==2.6.5
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 any; do
  platforms+=(--platform "$p")
done
mkdir -p "$dest"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d "$dest" "${wheels[@]}"
# promise, which tensorflow-datasets needs, is published as source only; it is pure
# Python, so a wheel built here installs there.
python3 -m pip wheel -q --no-deps -w "$dest" promise==2.3
size=$(du -sm "$dest" | cut -f1)
echo "$dest: $(find "$dest" -name '*.whl' | wc -l) wheels, ${size} MiB"
if (( size > 64 )); then
  echo "accelerator_wheels.sh: error: $dest holds ${size} MiB; the device machine takes" \
       "64 MiB with the working tree. Remove stale wheels from $dest and rerun." >&2
  exit 1
fi

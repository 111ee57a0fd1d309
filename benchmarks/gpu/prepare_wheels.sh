#!/usr/bin/env bash
# Download the wheels listed in device-wheels.txt for the device machine (CPython 3.12, manylinux x86_64) into
# benchmarks/gpu/wheels/ (gitignored; never commit wheels). Run here, where pip can reach the package index,
# before the device call that names benchmarks/gpu/wheels in `carry`.
#
#   bash benchmarks/gpu/prepare_wheels.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
mkdir -p "$here/wheels"
requirements=$(grep -o '^[A-Za-z0-9_.-]*==[^ #]*' "$here/device-wheels.txt")
# pip matches manylinux_2_N tags exactly: name the ones these packages publish.
# shellcheck disable=SC2086
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$here/wheels" $requirements
# One version of each: a stale wheel left from an earlier pin would make pip refuse the whole install.
for requirement in $requirements; do
    name=$(echo "${requirement%%==*}" | tr '-' '_')
    version=${requirement##*==}
    for wheel in "$here"/wheels/"$name"-*.whl; do
        case "$(basename "$wheel")" in
            "$name-$version-"*) ;;
            *) echo "removing stale $(basename "$wheel")"; rm -f "$wheel" ;;
        esac
    done
done
du -ch "$here"/wheels/*.whl

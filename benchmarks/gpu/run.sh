#!/usr/bin/env bash
# The device-machine wrapper of benchmarks/gpu/check.py (issue 19 item 6): one call, under 8 minutes.
#
# On the device machine (the session's `run` tool, which starts in the repository root and sets $OUT):
#   bash benchmarks/gpu/run.sh            with carry: ["benchmarks/gpu/wheels"], timeout_s: 540
# Before it, here: bash benchmarks/gpu/prepare_wheels.sh (downloads the wheels named in device-wheels.txt).
#
# What it does: installs, from the carried wheels only (no index), those packages the image lacks or has older
# than pinned, into /tmp/site; puts dg's packages on PYTHONPATH straight from this working tree (they are pure
# Python, and the image has no hatchling to build them with); runs check.py on CUDA at full size under a hard
# time limit; leaves gpu_check.json, gpu_check.md and gpu_check.log in $OUT (benchmarks/results when $OUT is
# unset). check.py rewrites the JSON and Markdown after every phase, so a run cut short still returns what it
# measured. Extra arguments go to check.py (e.g. --size tiny --device cpu to try the wrapper without a GPU).
#
# Environment: DG_COMMIT (recorded in the results; taken from git when the tree has .git), PYTHON (python3),
# DG_GPU_CHECK_LIMIT_S (hard limit of check.py, 450 s), DG_GPU_CHECK_BUDGET_S (no phase starts after it, 380 s).
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-$root/benchmarks/results}
wheels=${DG_GPU_CHECK_WHEELS:-$root/benchmarks/gpu/wheels}
python=${PYTHON:-python3}
limit=${DG_GPU_CHECK_LIMIT_S:-450}
budget=${DG_GPU_CHECK_BUDGET_S:-380}
site=${DG_GPU_CHECK_SITE:-/tmp/site}
mkdir -p "$out" "$site"

main() {
started=$(date +%s)

echo "== dg GPU check wrapper, $(date -u +%FT%TZ)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$python" -c 'import sys; print("python", sys.version.split()[0], sys.executable)'

# Carried wheels whose distribution is missing here or older than the wheel (the image's own newer ones stay).
if compgen -G "$wheels/*.whl" >/dev/null; then
    mapfile -t needed < <(PYTHONPATH="$site" "$python" - "$wheels" <<'PY'
import sys
from importlib import metadata
from pathlib import Path

from packaging.version import Version

for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    if have is None or Version(have) < Version(version):
        print(wheel)
    else:
        print(f"have {name} {have} (carried {version}): kept", file=sys.stderr)
PY
    )
    if ((${#needed[@]})); then
        echo "installing ${#needed[@]} carried wheel(s): ${needed[*]##*/}"
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            "${needed[@]}" || { echo "pip install of the carried wheels failed"; return 3; }
    fi
else
    echo "no wheels in $wheels: run benchmarks/gpu/prepare_wheels.sh here and name benchmarks/gpu/wheels in carry"
fi

dg_path=""
for package in dg-core dg-models dg-replay dg-expmodel dg-rl; do
    dg_path="$dg_path:$root/packages/$package/src"
done
export PYTHONPATH="$site$dg_path${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [[ -z "${DG_COMMIT:-}" ]]; then
    DG_COMMIT=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
fi
export DG_COMMIT

"$python" -c 'import dg_core, dg_models, dg_replay, dg_expmodel, dg_rl, usearch, torch, transformers, lightning
print("imports ok: torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers",
      transformers.__version__, "lightning", lightning.__version__, "usearch", usearch.__version__)' \
    || { echo "dg does not import here: see above"; return 4; }

# Later arguments win (argparse), so "$@" can override the defaults.
timeout --signal=TERM --kill-after=15 "$limit" \
    "$python" "$root/benchmarks/gpu/check.py" --out "$out" --budget-s "$budget" --device cuda --size full "$@"
status=$?
if ((status == 124)); then
    echo "check.py hit the ${limit}s limit: gpu_check.json holds the phases that finished (complete: false)"
fi
echo "== wrapper done in $(($(date +%s) - started)) s, check.py exit status $status"
return "$status"
}

main "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"

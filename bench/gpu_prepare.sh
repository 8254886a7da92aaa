#!/usr/bin/env bash
# What a device run of bench/gpu.py carries: wheels for the device's Python 3.12 (linux x86_64) of
# the project's serving and bench dependencies (pyproject.toml: the dependencies, the `server` and
# `train` extras; torch and the CPU onnxruntime left out) plus onnxruntime-gpu and nvidia-ml-py,
# then the plan of `run` calls that carry them (each call's working tree <= 64 MiB) and the one
# command that installs them there and runs the bench.
#
#   bench/gpu_prepare.sh [DEST]      # DEST defaults to bench/gpu-wheels (ignored by git)
#
# DEST/all:   everything pip resolves (kept here, never carried)
# DEST/carry: what the device lacks (its image holds torch, numpy, onnx, tokenizers, ...: the list
#             below, from .library's KINDS.md as read 2026-11-17), the onnxruntime-gpu wheel split in
#             parts of PART_MB MiB (default 60; a call carries one part beside the ~3 MiB repo)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=$(realpath -m "${1:-$ROOT/bench/gpu-wheels}")
PY=${PYTHON:-$ROOT/.venv/bin/python}
PART_MB=${PART_MB:-60}
LIMIT_MB=64
ALL=$DEST/all
CARRY=$DEST/carry

# Requirements: pyproject's, less torch and onnxruntime (onnxruntime-gpu installs the same module).
mapfile -t REQS < <("$PY" - "$ROOT/pyproject.toml" <<'EOF'
import re, sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
reqs = p["dependencies"] + p["optional-dependencies"]["server"] + p["optional-dependencies"]["train"]
skip = {"torch", "onnxruntime"}
for r in dict.fromkeys(reqs):
    if re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() not in skip:
        print(r)
print("httpx>=0.27")  # bench/loadgen.py
print("onnxruntime-gpu>=1.21")
print("nvidia-ml-py>=12.535")
EOF
)

PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
    manylinux_2_5_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$p")
done
mkdir -p "$ALL"
echo "pip download into $ALL: ${REQS[*]}" >&2
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$ALL" "${REQS[@]}" 2> >(grep -v "is ignored: it is neither" >&2)

# Already on the device (KINDS.md, nvidia-h200, "Python packages already there"): not carried.
DEVICE_HAS="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
certifi charset-normalizer click cloudpickle colorama contourpy cycler filelock flatbuffers fonttools
fsspec grpcio h11 h5py hf-xet httpcore httpx huggingface-hub idna jinja2 kiwisolver markdown
markdown-it-py markupsafe matplotlib mdurl ml-dtypes mpmath networkx numpy nvidia-ml-py onnx onnx-ir
onnxscript packaging pillow prometheus-client protobuf psutil pygments pyparsing python-dateutil pyyaml
regex requests rich safetensors setuptools shellingham six sympy tensorboard tensorboard-data-server
threadpoolctl tokenizers tqdm typer typing-extensions urllib3 uvloop werkzeug wheel zipp"

rm -rf "$CARRY" && mkdir -p "$CARRY/small"
for whl in "$ALL"/*.whl; do
    name=$(basename "$whl" | cut -d- -f1 | tr '_A-Z.' '-a-z-')
    if [[ " $(echo $DEVICE_HAS) " == *" $name "* ]]; then continue; fi
    if [[ $name == onnxruntime-gpu ]]; then
        (cd "$CARRY" && split -b "${PART_MB}M" "$whl" "$(basename "$whl").part-")
    else
        cp "$whl" "$CARRY/small/"
    fi
done

mib() { du -cb "$@" | tail -1 | awk '{printf "%.1f", $1 / 1048576}'; }
cd "$ROOT"
TREE=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null \
    | awk '$2 == "total" {s += $1} END {printf "%.1f", s / 1048576}')
WHEEL=$(basename "$(ls "$ALL"/onnxruntime_gpu-*.whl)")
mapfile -t PARTS < <(cd "$CARRY" && ls "$WHEEL".part-*)
rel() { realpath -m --relative-to="$ROOT" "$1"; }

echo
echo "all resolved: $(ls "$ALL" | wc -l) wheels, $(mib "$ALL") MiB; onnxruntime-gpu: $WHEEL, $(mib "$ALL/$WHEEL") MiB"
echo "carried: ${#PARTS[@]} parts of <= $PART_MB MiB + $(ls "$CARRY/small" | wc -l) small wheels" \
    "($(mib "$CARRY/small") MiB: $(cd "$CARRY/small" && ls | cut -d- -f1 | tr '\n' ' '))"
echo "the working tree that travels with every call: $TREE MiB"
case "$DEST" in "$ROOT"/*) ;; *) echo "NOTE: $DEST is outside the repo: a run call carries only paths inside it" \
    "(rerun without DEST to write bench/gpu-wheels, which .gitignore ignores)";; esac
echo
echo "PLAN (back to back: the machine stays warm 30 s after each call; keep the calls together)"
STAGE='mkdir -p /tmp/zs-wheels && cp'
n=${#PARTS[@]}
for i in "${!PARTS[@]}"; do
    carry=("$(rel "$CARRY/${PARTS[$i]}")")
    [[ $i -eq $((n - 1)) ]] && carry+=("$(rel "$CARRY/small")")
    size=$(awk -v a="$TREE" -v b="$(mib "${carry[@]}")" 'BEGIN {printf "%.1f", a + b}')
    over=$(awk -v s="$size" -v l="$LIMIT_MB" 'BEGIN {print (s > l) ? " OVER THE LIMIT: lower PART_MB" : ""}')
    echo "call $((i + 1)) of $n: carry=[${carry[*]}] ($size MiB with the tree$over)"
    if [[ $i -lt $((n - 1)) ]]; then
        echo "  command: $STAGE ${carry[0]} /tmp/zs-wheels/ && ls -l /tmp/zs-wheels"
    fi
done
SITE='python3 -c "import site; print(*site.getsitepackages(), sep=chr(10))"'
FINAL="$STAGE ${carry[0]} ${carry[1]}/*.whl /tmp/zs-wheels/ && cd /tmp/zs-wheels && W=$WHEEL"
FINAL+=' && cat $W.part-* > $W && rm $W.part-* && cd - >/dev/null'
FINAL+=" && python3 -m venv --without-pip --system-site-packages /tmp/zs-venv"
FINAL+=" && $SITE > /tmp/zs-venv/lib/python3.12/site-packages/device-image.pth"
FINAL+=" && { /tmp/zs-venv/bin/python -m pip install -q --no-index --find-links /tmp/zs-wheels /tmp/zs-wheels/*.whl"
FINAL+=" || /tmp/zs-venv/bin/python -m pip install -q --no-index --no-deps /tmp/zs-wheels/*.whl; }"
FINAL+=" && PYTHONUNBUFFERED=1 /tmp/zs-venv/bin/python bench/gpu.py --device cuda --budget-s 420"
FINAL+=' --out $OUT/gpu.json --table $OUT/gpu.md 2>&1 | tee $OUT/gpu.log'
echo "  command (${#FINAL} characters of the 2,000 a call takes; timeout_s 480: the bench's budget is 420 s,"
echo "  the install about 15 s; gpu.json and gpu.md are rewritten after every section, so a cut run keeps them):"
echo "    $FINAL"
cat <<'EOF'
Why the .pth line: the device's python3 is itself a venv (/opt/torch/.venv), and a venv made from a
venv with --system-site-packages sees the base interpreter's site-packages, not torch's; the .pth
adds the device image's site-packages after the new venv's own (so onnxruntime-gpu shadows the
image's CPU onnxruntime, and torch, numpy, onnx stay the image's).
EOF

#!/usr/bin/env bash
# Collect the wheels an image needs into a folder, for `docker build --build-arg PIP_OFFLINE=1`: on
# build machines where pip inside `docker build` cannot reach an index (no network, or a TLS proxy
# whose certificate the image does not trust), the build then installs from these wheels alone.
#
#   docker/wheelhouse.sh [server|gpu|openvino|train] [OUT]     (defaults: server, docker/wheels)
#
# The wheels are for the Python and platform that run this ($PYTHON, default .venv/bin/python, else
# python3, >= 3.11): they must match the image (CPython 3.11 on x86_64 glibc for python:3.11-slim and the
# test's Debian bookworm base). The project itself is not built here (nor its build/ folder made in
# the work tree): its requirements are read from pyproject.toml, and the image builds the project's
# wheel from the source in the build context, with the build backend (setuptools) collected here.
set -euo pipefail
cd "$(dirname "$0")/.."

kind="${1:-server}"
out="${2:-docker/wheels}"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi

case "$kind" in
    server) more=() ;;
    gpu) more=("onnxruntime-gpu[cuda,cudnn]") ;;
    openvino) more=() ;; # the server's wheels and OpenVINO's (the image's VARIANT=openvino)
    # torch's CPU build: on the CI machines `torch==2.13.0` is a file on local disk that pip finds;
    # elsewhere set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
    train) more=("torch==${TORCH_VERSION:-2.13.0}") ;;
    *)
        echo "usage: $0 [server|gpu|openvino|train] [OUT]" >&2
        exit 2
        ;;
esac

# the core dependencies and the extra's, as pyproject.toml lists them
mapfile -t reqs < <("$python" - "$kind" <<'PY'
import sys
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = ["server", "openvino"] if sys.argv[1] == "openvino" else [sys.argv[1]]
print("\n".join(project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]))
PY
)
mkdir -p "$out"
"$python" -m pip wheel --quiet --wheel-dir "$out" "${reqs[@]}" "${more[@]}" 'setuptools>=77' wheel
echo "$(find "$out" -name '*.whl' | wc -l) wheels in $out ($(du -sh "$out" | cut -f1))"

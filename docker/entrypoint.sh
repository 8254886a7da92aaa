#!/bin/sh
# Entry point of the server image.
#   (no arguments) or `serve [flags]`  ->  zeroshot serve --host $HOST --port $PORT [flags]
#   another zeroshot subcommand         ->  zeroshot <subcommand> ...   (e.g. `eval /models/default`)
#   anything else                       ->  run as given (e.g. `sh`)
# `exec` everywhere: the server must be PID 1 so that `docker stop`'s SIGTERM reaches it and starts
# the drain, instead of killing a shell that would not pass it on.
set -eu

# The GPU image takes CUDA and cuDNN from NVIDIA's pip wheels (site-packages/nvidia/*/lib);
# onnxruntime-gpu finds them through LD_LIBRARY_PATH. The CPU image has no such folders.
for lib in /opt/venv/lib/python3*/site-packages/nvidia/*/lib; do
    if [ -d "$lib" ]; then
        LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"

if [ "$#" -eq 0 ]; then
    set -- serve
fi
case "$1" in
    serve)
        shift
        exec zeroshot serve --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" "$@"
        ;;
    train | export | eval | -h | --help | -v | --verbose)
        exec zeroshot "$@"
        ;;
    *)
        exec "$@"
        ;;
esac

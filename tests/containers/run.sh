#!/usr/bin/env bash
# The container test (`make test-containers`). Builds the server image and runs it the way
# docker-compose.yml does, on this machine, with host networking only and traffic only to loopback:
#
#   0. config: docker-compose.yml (CPU and GPU) passes `docker-compose config`; the Kubernetes
#      manifests (rendered with `kubectl kustomize`) pass an offline schema validator
#   1. images: a Debian bookworm base made with debootstrap (Docker Hub is out of reach here; set
#      BASE_IMAGE to use an image you have, e.g. python:3.11-slim), then docker/Dockerfile on it,
#      installing from a wheelhouse made on this host (pip inside `docker build` has no index here)
#   2. two replicas on loopback ports, models mounted read-only from a temporary copy of
#      models/default, label sets on a shared writable folder, read-only root file system; nginx
#      from apt in front, with docker/nginx.conf (only its listen port and upstream servers changed)
#   3. classify through nginx; a label set registered through nginx is seen by both replicas
#   4. one replica stopped with SIGTERM (`docker stop`) while a load loop keeps sending requests
#      through nginx: it drains (/readyz 503), exits 0, and no request fails; then it is started again
#   5. a new model version published into the mounted folder under load: both replicas switch to it
#      (asked directly) and no request fails
#   6. cleanup, also on failure: containers, images, nginx, the temporary folder, and dockerd if this
#      script started it
#
# Needs root where packages are missing (it installs docker.io, debootstrap, nginx-light and
# docker-compose with apt) and `make setup` done (the venv and models/default). The debootstrap
# image is cached as a tarball in $ZEROSHOT_CONTAINER_CACHE (~/.cache/zeroshot-containers); delete
# it to rebuild. KEEP=1 keeps the temporary folder (logs) after the run.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"

PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
LB_PORT="${LB_PORT:-18080}"
R1_PORT="${R1_PORT:-18081}"
R2_PORT="${R2_PORT:-18082}"
LB="http://127.0.0.1:$LB_PORT"
R1="http://127.0.0.1:$R1_PORT"
R2="http://127.0.0.1:$R2_PORT"
DRAIN_S=3          # the replicas' ZEROSHOT_DRAIN_S (5 by default; shorter keeps the test short)
STOP_TIMEOUT=45    # > drain + ZEROSHOT_SHUTDOWN_TIMEOUT_S (30), as stop_grace_period in compose
ADMIN_TOKEN=container-test-admin-token
CACHE="${ZEROSHOT_CONTAINER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/zeroshot-containers}"
RUN_ID="$(date +%Y%m%d%H%M%S)-$$"
NAME="zeroshot-ctest-$RUN_ID"
IMAGE="zeroshot-ctest:$RUN_ID"
IMAGE_OV="zeroshot-ctest-openvino:$RUN_ID" # VARIANT=openvino
TMP="$(mktemp -d "${TMPDIR:-/tmp}/zeroshot-ctest.XXXXXX")"
harness() { "$PYTHON" tests/containers/harness.py "$@"; }

# ---- bookkeeping: what to clean up, and how long each phase took ----
CONTAINERS=()
IMAGES=()
PIDS=()          # background processes of ours (nginx, load loops), stopped by id
DOCKERD_PID=""
PHASE="" PHASE_T0="" T_START="${EPOCHREALTIME/./}"
TIMES=()

log() { printf '[containers] %s\n' "$*"; }
die() {
    printf '[containers] FAILED: %s\n' "$*" >&2
    exit 1
}
elapsed() { # microseconds since $1 -> "12.3"
    local us=$((${EPOCHREALTIME/./} - $1))
    printf '%d.%d' $((us / 1000000)) $((us % 1000000 / 100000))
}
phase() { # end the running phase, start the next (no argument: just end)
    if [[ -n "$PHASE" ]]; then
        TIMES+=("$(printf '%7s s  %s' "$(elapsed "$PHASE_T0")" "$PHASE")")
        log "done: $PHASE ($(elapsed "$PHASE_T0") s)"
    fi
    PHASE="${1:-}"
    PHASE_T0="${EPOCHREALTIME/./}"
    if [[ -n "$PHASE" ]]; then log "---- $PHASE"; fi
}

cleanup() {
    local rc=$?
    set +e
    if ((rc != 0)); then
        log "failed in phase: $PHASE; logs follow"
        for c in "${CONTAINERS[@]}"; do
            echo "--- docker logs $c (last 25 lines, without the 200 OK access lines)"
            docker logs "$c" 2>&1 | grep -v '" 200 OK$' | tail -n 25
        done
        for f in "$TMP"/nginx.error.log "$TMP"/nginx.access.log; do
            [[ -s "$f" ]] && echo "--- $f (last 15 lines)" && tail -n 15 "$f"
        done
    fi
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    for c in "${CONTAINERS[@]}"; do docker rm -f -v "$c" >/dev/null 2>&1; done
    for i in "${IMAGES[@]}"; do docker rmi -f "$i" >/dev/null 2>&1; done
    if [[ -n "$DOCKERD_PID" ]]; then
        kill "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done
    fi
    if [[ "${KEEP:-0}" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    if ((rc == 0)); then
        log "passed in $(elapsed "$T_START") s:"
    else
        log "FAILED after $(elapsed "$T_START") s:"
    fi
    printf '%s\n' "${TIMES[@]}"
    # one closing line in the form test runners print (a phase passed when it ran to its end)
    echo "containers: ${#TIMES[@]} passed, $((rc != 0)) failed"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

apt_mirror() { # the Debian mirror apt uses here (debootstrap must use the same one)
    local uri=""
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        uri="$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)"
    fi
    if [[ -z "$uri" && -f /etc/apt/sources.list ]]; then
        uri="$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) { print $i; exit } }' \
            /etc/apt/sources.list)"
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

start_replica() { # name port [image [docker run options...]]
    local name="$1" port="$2" image="${3:-$IMAGE}"
    shift $(($# < 3 ? $# : 3))
    docker run -d --name "$name" --network host \
        --read-only --tmpfs /tmp \
        --stop-timeout "$STOP_TIMEOUT" \
        -v "$TMP/models:/models:ro" \
        -v "$TMP/label-sets:/data/label-sets" \
        -e HOST=127.0.0.1 -e PORT="$port" \
        -e ZEROSHOT_DEVICE=cpu \
        -e ZEROSHOT_INTRA_OP_THREADS=1 \
        -e ZEROSHOT_RELOAD_INTERVAL_S=1 \
        -e ZEROSHOT_DRAIN_S="$DRAIN_S" \
        -e ZEROSHOT_ADMIN_TOKEN="$ADMIN_TOKEN" \
        "$@" "$image" >/dev/null
}

start_load() { # out-file; the load loop's pid goes into LOAD_PID (python's own: no subshell between)
    "$PYTHON" tests/containers/harness.py load "$LB" --out "$1" --max-seconds 300 &
    LOAD_PID=$!
    PIDS+=("$LOAD_PID")
}

stop_load() { # stop the loop started last (it writes its summary on SIGTERM)
    kill -TERM "$LOAD_PID"
    wait "$LOAD_PID" || die "the load loop exited with $?"
}

# =====================================================================================================
phase "prerequisites"
[[ -x "$PYTHON" ]] || die "$PYTHON is missing: run \`make setup\` first"
[[ -f models/default/CURRENT ]] || die "models/default/CURRENT is missing: run \`make setup\` first"
missing=()
if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then missing+=(docker.io); fi
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v nginx >/dev/null || missing+=(nginx-light)
if [[ -z "${BASE_IMAGE:-}" ]] && ! command -v debootstrap >/dev/null; then missing+=(debootstrap); fi
if ((${#missing[@]})); then
    ((EUID == 0)) || die "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root"
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >"$TMP/apt.log" 2>&1 || {
        tail -n 20 "$TMP/apt.log"
        die "apt-get install failed"
    }
fi
if ! docker info >/dev/null 2>&1; then
    # No bridge network and no iptables rules: every container here uses the host's network.
    log "starting dockerd"
    dockerd --bridge=none --iptables=false --ip-masq=false >"$TMP/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 150); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
    docker info >/dev/null 2>&1 || { tail -n 20 "$TMP/dockerd.log"; die "dockerd did not start"; }
fi
"$PYTHON" - "$LB_PORT" "$R1_PORT" "$R2_PORT" <<'PY' || die "a test port is taken (set LB_PORT, R1_PORT, R2_PORT)"
import socket, sys
for port in sys.argv[1:]:
    with socket.socket() as s:  # SO_REUSEADDR as the servers do: connections in TIME_WAIT are fine
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", int(port)))
PY

# =====================================================================================================
phase "compose and Kubernetes configuration"
docker-compose -f docker-compose.yml config -q
docker-compose -f docker-compose.yml -f docker/compose.gpu.yml config -q
"$PYTHON" -m venv "$TMP/kv"
"$TMP/kv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0 \
    2> >(grep -v 'is ignored' >&2)
mkdir -p "$TMP/k8s"
if command -v kubectl >/dev/null; then
    kubectl kustomize docker/k8s/base >"$TMP/k8s/cpu.yaml"
    kubectl kustomize docker/k8s/gpu >"$TMP/k8s/gpu.yaml"
else # the base's files as they are; the GPU overlay is a patch and needs kustomize to render
    log "kubectl is not installed: validating docker/k8s/base's files without the GPU overlay"
    cp docker/k8s/base/{pvc,deployment,service,hpa}.yaml "$TMP/k8s/"
fi
cp docker/k8s/retrain-job.yaml "$TMP/k8s/"
# The schemas ship inside the package: this makes no network request.
"$TMP/kv/bin/kubernetes-validate" --strict --quiet "$TMP"/k8s/*.yaml

# =====================================================================================================
phase "base image"
if [[ -n "${BASE_IMAGE:-}" ]]; then
    base="$BASE_IMAGE"
    log "using BASE_IMAGE=$base"
else
    tarball="$CACHE/debian-bookworm-python3.tar"
    if [[ ! -s "$tarball" ]]; then
        mirror="$(apt_mirror)"
        ((EUID == 0)) || die "debootstrap needs root"
        log "debootstrap bookworm from $mirror"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$TMP/rootfs" "$mirror" >"$TMP/debootstrap.log" 2>&1 || {
            tail -n 20 "$TMP/debootstrap.log"
            die "debootstrap failed"
        }
        rm -rf "$TMP"/rootfs/var/cache/apt/archives/*.deb "$TMP"/rootfs/var/lib/apt/lists/* \
            "$TMP"/rootfs/usr/share/doc/* "$TMP"/rootfs/usr/share/man/* "$TMP"/rootfs/usr/share/locale/*
        mkdir -p "$CACHE"
        tar -C "$TMP/rootfs" --numeric-owner -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$TMP/rootfs"
    else
        log "debootstrap image from the cache: $tarball"
    fi
    base="zeroshot-ctest-base:$RUN_ID"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        "$tarball" "$base" >/dev/null
    IMAGES+=("$base")
fi

# =====================================================================================================
phase "server image"
# A build context with only what the image needs (the work tree holds .venv, models and runs), in
# the repository's layout, plus the wheelhouse.
mkdir -p "$TMP/context"
tar --exclude=__pycache__ --exclude='docker/wheels/*.whl' -cf - pyproject.toml README.md model app docker |
    tar -xf - -C "$TMP/context"
PYTHON="$PYTHON" bash docker/wheelhouse.sh server "$TMP/context/docker/wheels" 2> >(grep -v 'is ignored' >&2)
# The classic builder leaves the build stage behind as an untagged image: note the new ones to
# remove them afterwards.
dangling_before="$(docker images -q --no-trunc --filter dangling=true | sort)"
docker build --network none -f "$TMP/context/docker/Dockerfile" \
    --build-arg BASE_IMAGE="$base" --build-arg PIP_OFFLINE=1 \
    -t "$IMAGE" "$TMP/context" >"$TMP/build.log" 2>&1 || {
    tail -n 40 "$TMP/build.log"
    die "docker build failed"
}
IMAGES+=("$IMAGE")
while read -r id; do
    [[ -n "$id" ]] && IMAGES+=("$id")
done < <(comm -13 <(echo "$dangling_before") <(docker images -q --no-trunc --filter dangling=true | sort))
docker run --rm --network none --entrypoint python3 "$IMAGE" -c \
    "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" || die "torch is in the image"
log "image $IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%d MB", $1 / 1e6 }'), user $(
    docker image inspect -f '{{.Config.User}}' "$IMAGE")"
# The openvino variant, from the same context with OpenVINO's wheels added to the wheelhouse.
PYTHON="$PYTHON" bash docker/wheelhouse.sh openvino "$TMP/context/docker/wheels" 2> >(grep -v 'is ignored' >&2)
dangling_before="$(docker images -q --no-trunc --filter dangling=true | sort)"
docker build --network none -f "$TMP/context/docker/Dockerfile" \
    --build-arg BASE_IMAGE="$base" --build-arg PIP_OFFLINE=1 --build-arg VARIANT=openvino \
    -t "$IMAGE_OV" "$TMP/context" >"$TMP/build-openvino.log" 2>&1 || {
    tail -n 40 "$TMP/build-openvino.log"
    die "docker build of the openvino variant failed"
}
IMAGES+=("$IMAGE_OV")
while read -r id; do
    [[ -n "$id" ]] && IMAGES+=("$id")
done < <(comm -13 <(echo "$dangling_before") <(docker images -q --no-trunc --filter dangling=true | sort))
docker run --rm --network none --entrypoint python3 "$IMAGE_OV" -c \
    "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None or u.find_spec('openvino') is None)" ||
    die "the openvino image has torch, or lacks openvino"
log "image $IMAGE_OV: $(docker image inspect -f '{{.Size}}' "$IMAGE_OV" | awk '{ printf "%d MB", $1 / 1e6 }')"

# =====================================================================================================
phase "two replicas and nginx"
# A copy of the default model, so that publishing does not touch the repository's models/. It is
# made readable for the image's user (uid 10001), which bind mounts need.
version="$(tr -d '[:space:]' <models/default/CURRENT)"
mkdir -p "$TMP/models/default" "$TMP/label-sets"
cp -r "models/default/$version" "$TMP/models/default/"
cp models/default/CURRENT "$TMP/models/default/"
chmod -R a+rX "$TMP/models"
chown 10001:10001 "$TMP/label-sets" 2>/dev/null || chmod 777 "$TMP/label-sets"
start_replica "$NAME-r1" "$R1_PORT"
CONTAINERS+=("$NAME-r1")
# replica 2 is the openvino variant on OpenVINO's runtime: a mixed pair behind one balancer
start_replica "$NAME-r2" "$R2_PORT" "$IMAGE_OV" -e ZEROSHOT_BACKEND=openvino
CONTAINERS+=("$NAME-r2")
harness nginx-conf docker/nginx.conf "$TMP/nginx.conf" --listen "127.0.0.1:$LB_PORT" \
    --upstream "127.0.0.1:$R1_PORT" --upstream "127.0.0.1:$R2_PORT"
mkdir -p "$TMP/nginx"
nginx -t -q -p "$TMP/nginx" -c "$TMP/nginx.conf" -g "pid $TMP/nginx.pid;"
nginx -p "$TMP/nginx" -c "$TMP/nginx.conf" -g "daemon off; pid $TMP/nginx.pid;" \
    >"$TMP/nginx.access.log" 2>"$TMP/nginx.error.log" &
PIDS+=($!)
harness wait-ready "$R1" "$R2" --timeout 120
harness wait-ready "$LB" --timeout 10
"$PYTHON" - "$R2" <<'PY' || die "replica 2 does not serve on OpenVINO"
import json, sys, urllib.request

models = json.load(urllib.request.urlopen(sys.argv[1] + "/v1/models", timeout=5))
print(f"  replica 2: backend {models['backend']}, provider {models['provider']}")
sys.exit(models["backend"] != "openvino")
PY

# =====================================================================================================
phase "classify through nginx"
got="$(harness classify "$LB")" || die "classify through nginx"
[[ "$got" == "$version" ]] || die "nginx answered with model $got, expected $version"
log "top label 'yellow cross' from model $got"
# A label set registered through nginx (on one replica) lives in the shared folder: both see it.
harness put-label-set "$LB" ctest-shapes --token "$ADMIN_TOKEN"
harness classify "$R1" --label-set ctest-shapes >/dev/null
harness classify "$R2" --label-set ctest-shapes >/dev/null
log "label set registered through nginx, used on both replicas"

# =====================================================================================================
phase "stop a replica under load"
start_load "$TMP/load-stop.json"
sleep 2
t0="${EPOCHREALTIME/./}"
docker stop -t "$STOP_TIMEOUT" "$NAME-r1" >/dev/null &
stop_pid=$!
# While it drains, the replica still lives (/healthz 200) but is no longer ready (/readyz 503).
"$PYTHON" - "$R1" <<'PY' || die "the stopping replica did not drain (/readyz 503, /healthz 200)"
import sys, time, urllib.error, urllib.request

def status(url):
    try:
        return urllib.request.urlopen(url, timeout=2).status
    except urllib.error.HTTPError as e:
        return e.code

deadline = time.monotonic() + 2
while status(sys.argv[1] + "/readyz") != 503:
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.05)
sys.exit(status(sys.argv[1] + "/healthz") != 200)
PY
wait "$stop_pid"
stopped_in="$(elapsed "$t0")"
code="$(docker inspect -f '{{.State.ExitCode}}' "$NAME-r1")"
[[ "$code" == 0 ]] || die "the stopped replica exited with $code, expected 0"
log "replica 1 drained and exited 0 after $stopped_in s (ZEROSHOT_DRAIN_S=$DRAIN_S)"
sleep 3 # replica 2 alone
docker start "$NAME-r1" >/dev/null
harness wait-ready "$R1" --timeout 120
sleep 2 # both again
stop_load
harness check-load "$TMP/load-stop.json" --min-requests 50
retried="$(grep -c 'upstream=[^ ]*, ' "$TMP/nginx.access.log" || true)"
log "nginx retried $retried requests on the other replica"

# =====================================================================================================
phase "publish a new model version under load"
new_version="ctest-$RUN_ID"
start_load "$TMP/load-publish.json"
sleep 2
harness publish "$TMP/models/default" "$new_version"
t0="${EPOCHREALTIME/./}"
harness wait-version "$new_version" "$R1" "$R2" --timeout 60
log "both replicas serve $new_version, $(elapsed "$t0") s after CURRENT changed"
sleep 2 # answers from the new version only
stop_load
harness check-load "$TMP/load-publish.json" --min-requests 50 --last-version "$new_version"
health="$(docker inspect -f '{{.State.Health.Status}}' "$NAME-r2")"
[[ "$health" == healthy ]] || die "replica 2's HEALTHCHECK says $health"
log "HEALTHCHECK: $health"

phase

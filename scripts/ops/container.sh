#!/usr/bin/env bash
# Build the Dockerfile's image with rootful podman and check it runs as promised, without a
# container registry: the base image is made locally from Debian packages.
#
#   sudo bash scripts/ops/container.sh setup   # once: podman, its configuration, the local base
#   sudo bash scripts/ops/container.sh check   # build, run read-only, /healthz /summary /inference, non-root,
#                                          # 64 slow clients cut off while /healthz answers,
#                                          # `podman stop` ends it cleanly; exit 0 if all held
#
# `setup` installs podman, buildah, debootstrap and runc from apt, writes
# /etc/containers/{containers,storage}.conf where absent (cgroupfs, file events, runc, vfs
# storage), bootstraps a minimal Debian bookworm with python3, python3-venv, python3-pip and this
# machine's CA certificates, and imports it as $BASE_IMAGE. The container shares the host's
# network namespace (--network host) and listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."

BASE_IMAGE=${BASE_IMAGE:-localhost/emotion-base:bookworm}
IMAGE=${IMAGE:-localhost/emotion-classifier:check}
NAME=${NAME:-emotion-classifier-check}
# The Debian bookworm mirror this machine's apt already uses: the first http(s) URI of Debian's
# own deb822 file (its first stanza is the main archive), else of a `deb` line of sources.list
# for bookworm; empty where there is none (then `setup` asks for MIRROR).
apt_mirror() {
    local uri
    uri=$(grep -s '^URIs:' /etc/apt/sources.list.d/debian.sources |
        awk '{for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\//) {print $i; exit}}' || true)
    if [ -z "$uri" ]; then
        uri=$(grep -s '^deb ' /etc/apt/sources.list |
            awk '{for (i = 2; i < NF; i++) if ($i ~ /^https?:\/\// && $(i + 1) ~ /^bookworm$/) {print $i; exit}}' ||
            true)
    fi
    printf '%s' "$uri"
}
MIRROR=${MIRROR:-$(apt_mirror)}
ROOTFS=${ROOTFS:-/var/tmp/emotion-base-rootfs}
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] && PYTHON=.venv/bin/python

log() { printf '%s\n' "container.sh: $*" >&2; }

write_if_absent() {  # file, content
    if [ -e "$1" ]; then
        log "keeping the existing $1"
    else
        printf '%s\n' "$2" >"$1"
        log "wrote $1"
    fi
}

setup() {
    if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah debootstrap runc
    fi
    mkdir -p /etc/containers
    write_if_absent /etc/containers/containers.conf '[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"'
    write_if_absent /etc/containers/storage.conf '[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"'
    if podman image exists "$BASE_IMAGE"; then
        log "$BASE_IMAGE exists"
        return
    fi
    [ -n "$MIRROR" ] || { log "no Debian bookworm mirror in apt's sources: set MIRROR to one"; exit 1; }
    rm -rf "$ROOTFS"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
        bookworm "$ROOTFS" "$MIRROR"
    # This machine's CA certificates (for pip inside the build, behind a TLS-inspecting proxy).
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    fi
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    # Debian marks its Python as system-managed (PEP 668); the image is ours to manage.
    tar -C "$ROOTFS" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
        --change 'CMD ["/bin/bash"]' \
        - "$BASE_IMAGE"
    rm -rf "$ROOTFS"
    log "imported $BASE_IMAGE"
}

fail() { log "FAILED: $*"; podman logs "$NAME" 2>&1 | tail -20 >&2 || true; exit 1; }

check() {
    command -v podman >/dev/null || { log "podman is not installed: run setup"; exit 3; }
    podman image exists "$BASE_IMAGE" || { log "no $BASE_IMAGE: run setup"; exit 3; }
    # Docker's image format keeps the Dockerfile's HEALTHCHECK (OCI's has no such field).
    podman build --format docker --network host --build-arg "BASE=$BASE_IMAGE" -t "$IMAGE" . >&2
    port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    url="http://127.0.0.1:$port"
    podman rm -f "$NAME" >/dev/null 2>&1 || true
    podman run -d --name "$NAME" --network host --read-only --tmpfs /tmp -e "PORT=$port" -e HOST=127.0.0.1 "$IMAGE" >/dev/null
    trap 'podman rm -f "$NAME" >/dev/null 2>&1 || true' EXIT
    for _ in $(seq 1 120); do
        curl -fsS "$url/readyz" >/dev/null 2>&1 && break
        [ "$(podman inspect -f '{{.State.Running}}' "$NAME")" = true ] || fail "the container exited"
        sleep 1
    done
    curl -fsS "$url/readyz" >/dev/null || fail "not ready after 120 s"

    health=$(curl -fsS "$url/healthz")
    summary=$(curl -fsS "$url/summary")
    image=$(mktemp --suffix=.jpg)
    PYTHONPATH=scripts/ops "$PYTHON" -c 'import sys, loadlib; sys.stdout.buffer.write(loadlib.synthetic_face_photo())' >"$image"
    inference=$(curl -fsS -H "Content-Type: application/octet-stream" --data-binary "@$image" "$url/inference")
    rm -f "$image"
    metrics=$(curl -fsS "$url/metrics")
    # 64 slow clients (trickled headers, trickled bodies, silent): /healthz answers meanwhile
    # and each is cut off after EMOTION_READ_TIMEOUT_S (10 s), with a 408 where it sent a part.
    slow=$("$PYTHON" -m emotion_server.slowclients "$url" --clients 64 --cap 25)
    healthcheck=$(podman healthcheck run "$NAME" >/dev/null 2>&1 && echo healthy || echo unhealthy)
    uid=$(podman exec "$NAME" id -u)
    # What the image holds in /app: the served model and its card, no Keras files, data,
    # virtual environments or tests (.dockerignore).
    contents=$(podman exec "$NAME" find /app -maxdepth 2 -not -path '*/src/*' | sort | tr '\n' ' ')
    started=$(date +%s)
    podman stop -t 30 "$NAME" >/dev/null
    stop_seconds=$(( $(date +%s) - started ))
    exit_code=$(podman inspect -f '{{.State.ExitCode}}' "$NAME")
    logs=$(podman logs "$NAME" 2>&1 | tail -5)
    # A CPU limit (docker run --cpus, a Kubernetes limit) leaves the host's CPUs visible: the
    # server must size its threads by the quota, not by the CPUs it sees.
    cpus_limited=$(podman run --rm --network host --cpus 1 "$IMAGE" \
        python -c 'from emotion_server.config import available_cpus; print(available_cpus())')

    HEALTH=$health SUMMARY=$summary INFERENCE=$inference USER_ID=$uid EXIT_CODE=$exit_code \
    STOP_SECONDS=$stop_seconds LOGS=$logs METRICS=$metrics HEALTHCHECK=$healthcheck SLOW=$slow \
    CONTENTS=$contents CPUS_LIMITED=$cpus_limited \
    "$PYTHON" - <<'PY'
import json, os, re

slow = json.loads(os.environ["SLOW"])
report = {
    "healthz": json.loads(os.environ["HEALTH"]),
    "slow_clients": slow["slow_clients"],
    "healthz_s_with_slow_clients": slow["healthz_s"],
    "summary_input_shape": json.loads(os.environ["SUMMARY"])["input_shape"],
    "inference_prediction": json.loads(os.environ["INFERENCE"])["prediction"],
    "user_id": int(os.environ["USER_ID"]),
    "stop_exit_code": int(os.environ["EXIT_CODE"]),
    "stop_seconds": int(os.environ["STOP_SECONDS"]),
    "shutdown_logged": "Shutting down: Master" in os.environ["LOGS"],
    "image_healthcheck": os.environ["HEALTHCHECK"],
    "app_files": os.environ["CONTENTS"].split(),
    "cpus_seen_with_cpus_1": int(os.environ["CPUS_LIMITED"]),
    "metrics_inference_200": re.findall(
        r'emotion_http_requests_total\{endpoint="/inference",method="POST",status="200"\} (\S+)',
        os.environ["METRICS"],
    ),
}
checks = {
    "healthz ok": report["healthz"] == {"status": "ok"},
    "summary": report["summary_input_shape"] == [1, 48, 48, 1],
    "inference": bool(report["inference_prediction"]),
    "metrics count it": report["metrics_inference_200"] == ["1.0"],
    "image HEALTHCHECK passes": report["image_healthcheck"] == "healthy",
    "non-root (uid 10001)": report["user_id"] == 10001,
    "served model and card inside; no .h5, data, venv, tests or build": {
        "/app/models/emotion_model.int8.onnx",
        "/app/models/emotion_model.int8.json",
    } <= set(report["app_files"])
    and not any(
        f.endswith((".h5", ".keras")) or f.split("/")[2] in (".venv", ".data", "tests", "runs", "build")
        for f in report["app_files"]
        if f.count("/") >= 2
    ),
    "podman stop: exit 0, graceful": report["stop_exit_code"] == 0 and report["shutdown_logged"],
    # workers that hang as they exit make a stop wait for gunicorn's 20 s graceful timeout
    "podman stop within 10 s": report["stop_seconds"] < 10,
    "threads sized by a CPU limit (--cpus 1)": report["cpus_seen_with_cpus_1"] == 1,
    "healthz < 1 s with 64 slow clients": all(
        s is not None and s < 1 for s in report["healthz_s_with_slow_clients"]
    ),
    "slow clients cut off (408 read_timeout, silent: closed)": all(
        set(kind["answers"]) == {"closed" if name == "silent" else "answered 408 read_timeout"}
        for name, kind in report["slow_clients"].items()
    ),
}
report["checks"] = checks
print(json.dumps(report, indent=2))
raise SystemExit(0 if all(checks.values()) else 1)
PY
}

case "${1:-}" in
    setup) setup ;;
    check) check ;;
    *) echo "usage: $0 setup|check" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Builds the runtime image for linux/arm64 (the Raspberry Pi 5) on an x86-64 machine, under
# QEMU user emulation, and proves it runs: the interpreter reports aarch64, the worker's
# --check passes in stub mode, and the seed's smoke test (scripts/smoke.sh) passes against an
# arm64 worker and bridge on a local broker (loopback, --network host).
#
# Where a registry is reachable, the plain way is Buildx (the deployment plan, section 3):
#   docker buildx build --platform linux/arm64 -f docker/hailo_runtime/Dockerfile -t IMAGE --push .
# Here no registry is, so the arm64 base is made with debootstrap (cached as
# hailo-base:bookworm-arm64) and the Dockerfile built on it with BASE_IMAGE.
#
# Environment: IMAGE (default hailo-sidecar:arm64), ARM64_SMOKE=0 skips the smoke test,
# ARM64_CPU_CHECK=1 also runs --check in cpu mode (onnxruntime; see below), KEEP_DOCKERD=1
# leaves a dockerd started here running. Prints the time of each stage.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
export LOG_TAG=arm64
# shellcheck source=docker/lib.sh
source docker/lib.sh

BASE=${ARM64_BASE_IMAGE:-hailo-base:bookworm-arm64}
IMAGE=${IMAGE:-hailo-sidecar:arm64}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo "$REPO/.venv/bin/python" || echo python3 )}
RUN_ID=hailo-arm64-$$
WORK=$(mktemp -d "/var/tmp/$RUN_ID.XXXXXX")
CONTAINERS=()
BROKER_PID=""


cleanup() {
    local rc=$?
    set +e
    [ -z "$BROKER_PID" ] || { kill "$BROKER_PID"; wait "$BROKER_PID"; } 2>/dev/null
    finish_run "$rc"
}
trap cleanup EXIT

stage "qemu and docker"
ensure_packages docker.io debootstrap qemu-user-static binfmt-support mosquitto mosquitto-clients curl jq
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    as_root mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || as_root update-binfmts --enable qemu-aarch64
# The F flag: the kernel opens the emulator at registration, so it works inside containers too.
grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
    || die "qemu-aarch64 is not registered with the F flag (see /proc/sys/fs/binfmt_misc)"
ensure_dockerd

stage "arm64 base image"
ensure_base_image "$BASE" arm64
machine=$(run_bounded 60 "$BASE" uname -m)
[ "$machine" = aarch64 ] || die "$BASE runs as $machine, not aarch64"

stage "runtime image build"
build_args=(--build-arg "BASE_IMAGE=$BASE")
cert=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
[ ! -f "$cert" ] || build_args+=(--secret "id=pip_cert,src=$cert")
"$DOCKER" build --network host --progress plain -f docker/hailo_runtime/Dockerfile \
    "${build_args[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log" >&2; die "arm64 build failed"; }
grep -E "^#[0-9]+ [0-9.]+ worker [0-9]" "$WORK/build.log" >&2 || true

stage "image checks"
run_bounded 120 --network none "$IMAGE" python3 -c \
    'import platform, numpy; print(platform.machine(), "numpy", numpy.__version__)' \
    | tee "$WORK/machine.txt" >&2
grep -q '^aarch64 ' "$WORK/machine.txt" || die "the image does not run aarch64 code"
# onnxruntime 1.32's aarch64 build crashes at import under Debian's qemu-user 7.2 (1.20 does
# not), while it runs on a real Pi: the cpu mode is checked here only when asked for.
modes=(stub)
[ "${ARM64_CPU_CHECK:-0}" != 1 ] || modes+=(cpu)
for mode in "${modes[@]}"; do
    run_bounded 180 --network none --read-only --tmpfs /tmp -e "INFER_MODE=$mode" "$IMAGE" \
        hailo-worker --check >"$WORK/check-$mode.log" 2>&1 \
        || { cat "$WORK/check-$mode.log" >&2; die "--check failed in $mode mode"; }
    grep "one window" "$WORK/check-$mode.log" >&2
done

if [ "${ARM64_SMOKE:-1}" = 1 ]; then
    stage "smoke (arm64 containers)"
    MQTT_PORT=$(free_port)
    BRIDGE_PORT=$(free_port)
    sed "s/^listener [0-9]*.*/listener $MQTT_PORT 127.0.0.1/" mosquitto/dev.conf >"$WORK/mosquitto.conf"
    echo "user root" >>"$WORK/mosquitto.conf"
    "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    BROKER_PID=$!
    wait_port "$MQTT_PORT" 10 || die "mosquitto did not listen on $MQTT_PORT"
    runtime=(--network host --read-only --tmpfs /tmp --user app --cap-drop ALL
        --security-opt no-new-privileges -v "$REPO/artifacts:/models:ro"
        --health-interval 3s --health-start-period 20s
        -e MQTT_HOST=127.0.0.1 -e "MQTT_PORT=$MQTT_PORT" -e INFER_MODE=stub -e STATUS_INTERVAL_S=2)
    CONTAINERS+=("$RUN_ID-worker" "$RUN_ID-bridge")
    "$DOCKER" run -d --name "$RUN_ID-worker" "${runtime[@]}" -e WORKER_ID=arm64-worker \
        -e METRICS_PORT=0 "$IMAGE" hailo-worker >/dev/null
    "$DOCKER" run -d --name "$RUN_ID-bridge" "${runtime[@]}" -e BRIDGE_HOST=127.0.0.1 \
        -e "BRIDGE_PORT=$BRIDGE_PORT" "$IMAGE" hailo-bridge >/dev/null
    wait_healthy "$RUN_ID-bridge" 120 || die "the arm64 bridge never became healthy"
    BRIDGE_URL="http://127.0.0.1:$BRIDGE_PORT" MQTT_HOST=127.0.0.1 MQTT_PORT=$MQTT_PORT \
        SMOKE_TIMEOUT_S=20 PYTHON=$PYTHON scripts/smoke.sh
fi
log "built $IMAGE for linux/arm64: $("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

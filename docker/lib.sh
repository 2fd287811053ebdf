# shellcheck shell=bash
# Shell functions shared by scripts/docker_ci.sh and scripts/build_arm64.sh (source it; bash).
#
# They make a machine with nothing but Debian's packages able to build and run the images:
# Docker Engine and Compose v1 from Debian, a dockerd started on demand, and base images made
# with debootstrap, since no image registry may be reachable (docker pull fails).

# The Docker client that builds: Debian's docker.io client speaks BuildKit by itself
# (DOCKER_BUILDKIT=1), while a newer client without the buildx plugin cannot. It may only be
# installed by ensure_packages, so ensure_dockerd looks again; DOCKER set by the caller wins.
DOCKER_CLIENT=${DOCKER:-}
docker_client() {
    if [ -n "$DOCKER_CLIENT" ]; then echo "$DOCKER_CLIENT"
    elif [ -x /usr/bin/docker ]; then echo /usr/bin/docker
    else echo docker
    fi
}
DOCKER=$(docker_client)
export DOCKER_BUILDKIT=1
DOCKERD_LOG=${DOCKERD_LOG:-/var/tmp/hailo-dockerd.log}
STARTED_DOCKERD_PID=""

log() { printf '%s [%s] %s\n' "$(date +%H:%M:%S)" "${LOG_TAG:-docker}" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
# Exit 3 says "this machine has no working Docker engine", as opposed to a failed check.
no_engine() { log "NO DOCKER ENGINE: $*"; exit 3; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# ensure_packages PKG...: apt-get installs those not installed yet (apt-get update only then).
ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "apt-get install ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

# ensure_dockerd: use a running engine, or start dockerd in the background and wait for it.
# Sets STARTED_DOCKERD_PID when it started one (stop_dockerd stops only that one).
ensure_dockerd() {
    DOCKER=$(docker_client)
    if "$DOCKER" info >/dev/null 2>&1; then return 0; fi
    command -v dockerd >/dev/null 2>&1 || no_engine "no dockerd (apt-get install docker.io)"
    log "starting dockerd (log $DOCKERD_LOG)"
    # setsid and no inherited descriptors: the daemon must not hold a CI pipe open.
    if [ "$(id -u)" -eq 0 ]; then
        setsid dockerd </dev/null >"$DOCKERD_LOG" 2>&1 &
    else
        # shellcheck disable=SC2024 # the log is ours to write, in /var/tmp
        sudo setsid dockerd </dev/null >"$DOCKERD_LOG" 2>&1 &
    fi
    STARTED_DOCKERD_PID=$!
    local i
    for i in $(seq 1 60); do
        if [ -S /var/run/docker.sock ] && "$DOCKER" info >/dev/null 2>&1; then
            # The daemon's own pid (the one started above may be a sudo in front of it).
            STARTED_DOCKERD_PID=$(cat /var/run/docker.pid 2>/dev/null || echo "$STARTED_DOCKERD_PID")
            log "dockerd up after ${i}s (pid $STARTED_DOCKERD_PID)"
            return 0
        fi
        kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || { tail -20 "$DOCKERD_LOG" >&2; no_engine "dockerd exited"; }
        sleep 1
    done
    tail -20 "$DOCKERD_LOG" >&2
    no_engine "dockerd did not answer within 60 s"
}

stop_dockerd() {
    [ -n "$STARTED_DOCKERD_PID" ] || return 0
    log "stopping the dockerd this script started (pid $STARTED_DOCKERD_PID)"
    as_root kill -TERM "$STARTED_DOCKERD_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 30); do
        kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || break
        sleep 1
    done
    STARTED_DOCKERD_PID=""
}

# ensure_base_image NAME ARCH: a Debian bookworm image with python3 and python3-venv, made
# with debootstrap and `docker import` unless NAME already exists (it is cached in dockerd).
# It stands in for python:3.11-slim-bookworm where no registry is reachable.
ensure_base_image() {
    local name=$1 arch=$2 dir started
    if "$DOCKER" image inspect "$name" >/dev/null 2>&1; then
        log "base image $name exists (cached)"
        return 0
    fi
    ensure_packages debootstrap
    dir=$(mktemp -d /var/tmp/hailo-rootfs.XXXXXX)
    started=$(date +%s)
    log "debootstrap bookworm ($arch) for $name"
    # DEBOOTSTRAP_MIRROR is empty by default: debootstrap then uses its own default mirror.
    # shellcheck disable=SC2086
    as_root debootstrap --arch="$arch" --variant=minbase \
        --include=python3,python3-venv,ca-certificates \
        bookworm "$dir" ${DEBOOTSTRAP_MIRROR:-} >"$dir.log" 2>&1 \
        || { tail -20 "$dir.log" >&2; as_root rm -rf "$dir"; die "debootstrap failed"; }
    # Package lists and downloaded .debs are dead weight in a base image.
    as_root rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    as_root tar -C "$dir" -c . | "$DOCKER" import \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$name" >/dev/null
    as_root rm -rf "$dir" "$dir.log"
    log "base image $name made in $(( $(date +%s) - started )) s"
}

# free_port: a TCP port nothing listens on now, on loopback.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_http URL SECONDS: until URL answers 2xx.
wait_http() {
    local url=$1 seconds=$2 i
    for i in $(seq 1 $((seconds * 5))); do
        curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

# wait_port PORT SECONDS: until something accepts on 127.0.0.1:PORT.
wait_port() {
    local port=$1 seconds=$2 i
    for i in $(seq 1 $((seconds * 5))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

# wait_healthy CONTAINER SECONDS: until Docker's HEALTHCHECK reports healthy.
wait_healthy() {
    local name=$1 seconds=$2 i state
    for i in $(seq 1 "$seconds"); do
        state=$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$name" 2>/dev/null || echo gone)
        [ "$state" = healthy ] && return 0
        if [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" != true ]; then
            log "$name is not running"
            return 1
        fi
        sleep 1
    done
    log "$name is $state after ${seconds}s"
    return 1
}

# run_bounded SECONDS DOCKER-RUN-ARGS...: `docker run --rm` that is stopped after SECONDS.
# A crash under QEMU emulation can leave a container hanging after the client has given up,
# so the container is named and removed whatever happens.
run_bounded() {
    local seconds=$1 name rc=0
    shift
    name=hailo-bounded-$$-$RANDOM
    timeout "$seconds" "$DOCKER" run --rm --name "$name" "$@" || rc=$?
    "$DOCKER" rm -f "$name" >/dev/null 2>&1 || true
    return $rc
}

# stage NAME: log the start of a stage and time the one before it into TIMINGS.
TIMINGS=()
started_all=$(date +%s)
stage_started=$started_all
stage_name=""
stage() {
    local now
    now=$(date +%s)
    [ -z "$stage_name" ] || TIMINGS+=("$(printf '%-28s %4d s' "$stage_name" $((now - stage_started)))")
    stage_name=$1
    stage_started=$now
    log "== $1"
}

# finish_run RC: the end of a run (an EXIT trap): on failure the logs of CONTAINERS, then those
# containers and WORK removed, a dockerd started here stopped (unless KEEP_DOCKERD=1), the
# stage timings, and exit RC.
finish_run() {
    local rc=$1 c
    if [ "$rc" -ne 0 ]; then
        for c in "${CONTAINERS[@]}"; do
            log "--- docker logs $c (last 40 lines)"
            "$DOCKER" logs --tail 40 "$c" 2>&1 | sed 's/^/    /' >&2
        done
    fi
    [ ${#CONTAINERS[@]} -eq 0 ] || "$DOCKER" rm -f "${CONTAINERS[@]}" >/dev/null 2>&1
    rm -rf "$WORK"
    [ "${KEEP_DOCKERD:-0}" = 1 ] || stop_dockerd
    stage "done"
    printf '%s\n' "${TIMINGS[@]}" >&2
    log "total $(( $(date +%s) - started_all )) s: $([ "$rc" -eq 0 ] && echo PASSED || echo "FAILED (exit $rc)")"
    exit "$rc"
}

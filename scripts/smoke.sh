#!/usr/bin/env bash
# Smoke test of a running deployment (the seed's section 6, against hailo-bridge and the broker):
#   1. GET  /healthz answers 200, printed with jq;
#   2. POST /infer with the seed's body (100 rows of 9 zeros) answers 64 latent + 12 motif scores;
#   3. the same round trip over MQTT: schemas/examples/window.msgpack to imu/<sensor>/window,
#      the answer on infer/<sensor>/+ must be a result with 64 + 12 floats (msgpack or JSON, read
#      with the repo's worker.wire). The seed used mosquitto_pub and mosquitto_sub; one paho
#      connection does both here, since the broker gives each user a single client id.
# The seed's jq filter `.latent|length==64 and .motif_scores|length==12` is wrong (jq reads it as
# `.latent | (length==64 and .motif_scores) | ...`); the parenthesised one below is the fix.
#
# Environment: BRIDGE_URL (http://localhost:9000), BRIDGE_TOKEN (sent as a bearer token when set),
# MQTT_HOST (localhost), MQTT_PORT (1883), MQTT_USERNAME / MQTT_PASSWORD (when the broker needs
# them), SMOKE_SENSOR (smoke-<pid>), SMOKE_TIMEOUT_S (10), PYTHON (python3).
# Prints OK when everything passed; otherwise what failed, and exits 1.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
BRIDGE_URL=${BRIDGE_URL:-http://localhost:9000}
MQTT_HOST=${MQTT_HOST:-localhost}
MQTT_PORT=${MQTT_PORT:-1883}
SENSOR=${SMOKE_SENSOR:-smoke-$$}
TIMEOUT_S=${SMOKE_TIMEOUT_S:-10}
PYTHON=${PYTHON:-python3}
WINDOW=schemas/examples/window.msgpack

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

for tool in curl jq "$PYTHON"; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
auth=()
[ -n "${BRIDGE_TOKEN:-}" ] && auth=(-H "Authorization: Bearer $BRIDGE_TOKEN")

# Body and status code both: a failure then says why (the bridge's reason or detail).
fetch() { curl -sS --max-time "$TIMEOUT_S" -w '\n%{http_code}' "$@"; }

step "health: GET $BRIDGE_URL/healthz"
reply=$(fetch "$BRIDGE_URL/healthz") || fail "/healthz: no answer from $BRIDGE_URL"
code=${reply##*$'\n'} body=${reply%$'\n'*}
jq . <<<"$body" || fail "/healthz answered $code, not JSON"
[ "$code" = 200 ] || fail "/healthz answered $code: $(jq -r '.reason // empty' <<<"$body")"

step "contract: POST $BRIDGE_URL/infer (latent=64, motifs=12)"
payload=$("$PYTHON" - <<'PY'
import json; print(json.dumps({"x":[[0.0]*9 for _ in range(100)]}))
PY
)
reply=$(fetch -X POST "$BRIDGE_URL/infer" "${auth[@]}" -H 'Content-Type: application/json' \
    -d "$payload") || fail "/infer: no answer from $BRIDGE_URL"
code=${reply##*$'\n'} body=${reply%$'\n'*}
[ "$code" = 200 ] || fail "/infer answered $code: $(jq -r '.detail // empty' <<<"$body" 2>/dev/null)"
jq -e '(.latent|length==64) and (.motif_scores|length==12)' <<<"$body" >/dev/null \
    || fail "/infer did not answer 64 latent floats and 12 motif scores: $body"
echo "ok"

step "mqtt: $WINDOW to imu/$SENSOR/window on $MQTT_HOST:$MQTT_PORT"
[ -f "$WINDOW" ] || fail "$WINDOW is missing"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# One connection subscribes, then publishes once its SUBACK is in: the production broker binds a
# client id to its user, so a mosquitto_sub and a mosquitto_pub logged in as the same sensor would
# take each other's session. Topic and hex payload on one line: results are msgpack by default.
MQTT_HOST=$MQTT_HOST MQTT_PORT=$MQTT_PORT SENSOR=$SENSOR TIMEOUT_S=$TIMEOUT_S WINDOW=$WINDOW \
"$PYTHON" - >"$out" <<'PY' || fail "could not reach the broker at $MQTT_HOST:$MQTT_PORT"
import os, sys, threading
import paho.mqtt.client as mqtt

env = os.environ
sensor = env["SENSOR"]
answer: list[str] = []
done = threading.Event()
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=env.get("MQTT_USERNAME") or sensor,
                     protocol=mqtt.MQTTv5)
if env.get("MQTT_USERNAME"):
    client.username_pw_set(env["MQTT_USERNAME"], env.get("MQTT_PASSWORD"))
client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"infer/{sensor}/+", qos=1)
client.on_subscribe = lambda c, u, mid, rcs, p: c.publish(
    f"imu/{sensor}/window", open(env["WINDOW"], "rb").read(), qos=1)
def on_message(c, u, msg):
    answer.append(f"{msg.topic} {msg.payload.hex()}")
    done.set()
client.on_message = on_message
client.connect(env["MQTT_HOST"], int(env["MQTT_PORT"]))
client.loop_start()
done.wait(float(env["TIMEOUT_S"]))
client.loop_stop()
print(*answer[:1])
PY
[ -s "$out" ] || fail "no answer on infer/$SENSOR/+ within ${TIMEOUT_S} s"
read -r topic hex <"$out"
[ "$topic" = "infer/$SENSOR/result" ] || fail "answer on $topic, not infer/$SENSOR/result"
"$PYTHON" - "$hex" <<'PY' || fail "the MQTT result is not 64 latent floats + 12 motif scores"
import sys
from worker import wire
doc = wire.decode(bytes.fromhex(sys.argv[1]))
ok = all(len(doc.get(k, [])) == n and all(isinstance(v, float) for v in doc[k])
         for k, n in (("latent", 64), ("motif_scores", 12)))
print(f"result from {doc.get('worker_id')} ({doc.get('model')}), seq {doc.get('seq')}")
sys.exit(0 if ok else 1)
PY
echo "OK"

#!/usr/bin/env bash
# `make run`: a local broker, the worker with the CPU model, the HTTP bridge and a few
# simulated sensors, all in the foreground until Ctrl-C (or RUN_SECONDS).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
export MQTT_HOST=${MQTT_HOST:-localhost}
export MQTT_PORT=${MQTT_PORT:-1883}
export BRIDGE_PORT=${BRIDGE_PORT:-9000}
export INFER_MODE=${INFER_MODE:-cpu}
export WORKER_ID=${WORKER_ID:-local-worker}
export METRICS_PORT=${METRICS_PORT:-9100}
SENSORS=${SENSORS:-3}
RATE=${RATE:-5}
RUN_SECONDS=${RUN_SECONDS:-0}
mkdir -p .run
pids=()
cleanup() {
  # Stop the sensors first, then the bridge and the worker (which publishes `stopped`).
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

if port_open "$MQTT_HOST" "$MQTT_PORT"; then
  echo "using the broker already listening on $MQTT_HOST:$MQTT_PORT"
else
  sed "s/^listener [0-9]*/listener $MQTT_PORT/" mosquitto/dev.conf > .run/mosquitto.conf
  mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  "$mosquitto" -c .run/mosquitto.conf > .run/mosquitto.log 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do port_open "$MQTT_HOST" "$MQTT_PORT" && break; sleep 0.1; done
  port_open "$MQTT_HOST" "$MQTT_PORT" || { echo "mosquitto did not start: .run/mosquitto.log"; exit 1; }
  echo "broker: mosquitto on $MQTT_HOST:$MQTT_PORT (log .run/mosquitto.log)"
fi

"$BIN/hailo-worker" > .run/worker.log 2>&1 &
pids+=($!)
"$BIN/hailo-bridge" > .run/bridge.log 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  grep -q "serving" .run/worker.log 2>/dev/null && break
  kill -0 "${pids[-2]}" 2>/dev/null || { cat .run/worker.log; exit 2; }
  sleep 0.1
done
cat <<MSG
worker: $WORKER_ID, INFER_MODE=$INFER_MODE (log .run/worker.log, metrics http://localhost:$METRICS_PORT/metrics)
bridge: http://localhost:$BRIDGE_PORT  (live page /, docs /docs, health /healthz; log .run/bridge.log)
watch:  mosquitto_sub -p $MQTT_PORT -t 'infer/#' -t 'hailo/+/status' -v
send:   mosquitto_pub -p $MQTT_PORT -t imu/demo/window -f schemas/examples/window.msgpack -q 1
sensors: $SENSORS simulated at $RATE windows/s each; Ctrl-C stops everything
MSG
sim_args=(--sensors "$SENSORS" --rate "$RATE")
[ "$RUN_SECONDS" != 0 ] && sim_args+=(--duration "$RUN_SECONDS")
"$BIN/hailo-sim" "${sim_args[@]}" &
pids+=($!)
wait "${pids[-1]}"

#!/bin/sh
# Starts Mosquitto with the production config and the TLS listener on only when its certificate
# and key are present: Mosquitto cannot test for files, and a listener whose files are missing
# stops it from starting. The include dir named in the config is rebuilt on every start from
# conf.d/ beside the config: every *.conf there, plus tls.conf.in as tls.conf when TLS is on.
#
# Environment: MOSQUITTO_CONF (default /mosquitto/config/mosquitto.conf), MOSQUITTO_CERT_DIR
# (default /mosquitto/certs; holds server.crt and server.key), MOSQUITTO_BIN (default mosquitto).
# Extra arguments go to mosquitto (e.g. -v).
set -eu

conf=${MOSQUITTO_CONF:-/mosquitto/config/mosquitto.conf}
cert_dir=${MOSQUITTO_CERT_DIR:-/mosquitto/certs}
src_dir=$(dirname "$conf")/conf.d

include_dir=$(sed -n 's/^include_dir[[:space:]][[:space:]]*//p' "$conf" | tail -n 1)
if [ -z "$include_dir" ]; then
    echo "start.sh: $conf has no include_dir line" >&2
    exit 2
fi
mkdir -p "$include_dir"
rm -f "$include_dir"/*.conf
for f in "$src_dir"/*.conf; do
    if [ -e "$f" ]; then cp "$f" "$include_dir/"; fi
done

if [ -r "$cert_dir/server.crt" ] && [ -r "$cert_dir/server.key" ]; then
    sed "s#/mosquitto/certs/#$cert_dir/#g" "$src_dir/tls.conf.in" > "$include_dir/tls.conf"
    echo "start.sh: TLS listener on, with $cert_dir/server.crt" >&2
else
    echo "start.sh: no $cert_dir/server.crt and server.key: TLS listener off" >&2
fi

exec "${MOSQUITTO_BIN:-mosquitto}" -c "$conf" "$@"

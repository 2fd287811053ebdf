#!/bin/sh
# Starts Mosquitto with the production config and the TLS listener on only when its certificate
# and key are present: Mosquitto cannot test for files, and a listener whose files are missing
# stops it from starting. The include dir named in the config is rebuilt on every start from
# conf.d/ beside the config: every *.conf there, plus tls.conf.in as tls.conf when TLS is on.
#
# The dynamic-security plugin is loaded the same way, when add-user.sh's dynamic-security.json is
# beside the password file: it refuses shared subscriptions to every user it lists (no acl line
# can), and its path differs between images (eclipse-mosquitto: /usr/lib; Debian: the
# multiarch dir), which a config file cannot test either.
#
# Environment: MOSQUITTO_CONF (default /mosquitto/config/mosquitto.conf), MOSQUITTO_CERT_DIR
# (default /mosquitto/certs; holds server.crt and server.key), MOSQUITTO_BIN (default mosquitto),
# MOSQUITTO_DYNSEC_PLUGIN (default: the first mosquitto_dynamic_security.so found under /usr/lib).
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

passwd=$(sed -n 's/^password_file[[:space:]][[:space:]]*//p' "$conf" | tail -n 1)
dynsec_json=${passwd:+$(dirname "$passwd")/dynamic-security.json}
if [ -n "$dynsec_json" ] && [ -r "$dynsec_json" ]; then
    plugin=${MOSQUITTO_DYNSEC_PLUGIN:-}
    if [ -z "$plugin" ]; then
        for candidate in /usr/lib/mosquitto_dynamic_security.so /usr/lib/*/mosquitto_dynamic_security.so \
            /usr/local/lib/mosquitto_dynamic_security.so; do
            if [ -r "$candidate" ]; then plugin=$candidate; break; fi
        done
    fi
    if [ -n "$plugin" ] && [ -r "$plugin" ]; then
        printf 'plugin %s\nplugin_opt_config_file %s\n' "$plugin" "$dynsec_json" > "$include_dir/dynsec.conf"
        echo "start.sh: shared subscriptions refused to the users of $dynsec_json ($plugin)" >&2
    else
        echo "start.sh: WARNING: no mosquitto_dynamic_security.so: shared subscriptions are not refused to anyone (set MOSQUITTO_DYNSEC_PLUGIN)" >&2
    fi
fi

exec "${MOSQUITTO_BIN:-mosquitto}" -c "$conf" "$@"

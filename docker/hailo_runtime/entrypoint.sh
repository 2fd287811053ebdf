#!/bin/sh
# Entry point of the runtime image: reads secrets from files, then runs the command.
#
# Docker and Compose hand secrets over as files (/run/secrets/NAME), while the processes read
# their settings from environment variables. For each secret setting, NAME_FILE names a file
# whose content (trailing newlines dropped) becomes NAME, so the value is never written in a
# Compose file, an image or `docker inspect`. A bad NAME_FILE stops the container at start with
# one line naming the setting, exit 2, like any other bad setting.
set -eu

# SHARED_GROUP is one of them: the broker refuses the group to the users it knows, and the name
# stays secret for those it does not (mosquitto/README.md, "Threat model").
for name in MQTT_USERNAME MQTT_PASSWORD BRIDGE_TOKEN SHARED_GROUP; do
    eval "file=\${${name}_FILE:-}"
    [ -n "$file" ] || continue
    eval "direct=\${${name}:-}"
    if [ -n "$direct" ]; then
        echo "hailo-entrypoint: bad setting: ${name}_FILE: ${name} is set too; set one of them" >&2
        exit 2
    fi
    if [ ! -r "$file" ]; then
        echo "hailo-entrypoint: bad setting: ${name}_FILE: cannot read $file (is it readable by uid $(id -u)?)" >&2
        exit 2
    fi
    value=$(cat "$file")
    export "$name=$value"
    unset "${name}_FILE"
done

exec "$@"

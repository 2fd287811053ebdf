#!/usr/bin/env bash
# Makes a throwaway CA and a server certificate for trying the TLS listener (and for the tests):
#
#   mosquitto/gen-test-certs.sh DIR [HOST ...]     (default hosts: localhost 127.0.0.1)
#
# Writes DIR/ca.crt, DIR/ca.key, DIR/server.crt and DIR/server.key, valid for 7 days. Give
# clients DIR/ca.crt (MQTT_CA_FILE). server.key goes to group MOSQUITTO_GROUP (default mosquitto,
# when that group exists and this runs as root), since the broker reads it as its own user.
# For production use certificates from your own CA; never commit a private key. Needs openssl.
set -euo pipefail

[[ $# -ge 1 ]] || { echo "usage: gen-test-certs.sh DIR [HOST ...]" >&2; exit 2; }
dir=$1
shift
hosts=("$@")
[[ ${#hosts[@]} -gt 0 ]] || hosts=(localhost 127.0.0.1)

san=""
for h in "${hosts[@]}"; do
    if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then san+="IP:$h,"; else san+="DNS:$h,"; fi
done
san=${san%,}

mkdir -p "$dir"
cd "$dir"
umask 077
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -new -x509 -key ca.key -out ca.crt -days 7 -subj "/CN=hailo-edge throwaway test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl ecparam -name prime256v1 -genkey -noout -out server.key
openssl req -new -key server.key -out server.csr -subj "/CN=${hosts[0]}"
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -out server.crt -days 7 \
    -set_serial "0x$(openssl rand -hex 8)" -extfile <(
        printf '%s\n' "subjectAltName=$san" "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
            "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid"
    )
rm -f server.csr
chmod 0644 ca.crt server.crt
# Mosquitto 2.0 reads the key after dropping to its own user: let its group read it.
if [[ -n ${MOSQUITTO_GROUP:-} ]]; then
    chgrp "$MOSQUITTO_GROUP" server.key && chmod 0640 server.key
elif [[ $EUID -eq 0 ]] && getent group mosquitto >/dev/null; then
    chgrp mosquitto server.key && chmod 0640 server.key
fi
echo "Throwaway CA and server certificate for ${hosts[*]} in $(pwd) (valid 7 days)."

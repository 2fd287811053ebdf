#!/usr/bin/env bash
# Installs what pip cannot: Mosquitto (broker and clients), jq, curl, openssl, ss, Prometheus and
# Chromium with its driver, and for the network-fault tests ip (netns, veth) and nft, from Debian. Idempotent: does
# nothing when they are already there.
set -euo pipefail
missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # throwaway certs in the TLS tests
# `ss -ltnp`: tests/test_mosquitto_security.py checks where each broker listener listens
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
# tests/test_prometheus.py runs prometheus and promtool (both in this package) as plain processes
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 \
    || missing+=(prometheus)
# tests/reliability/test_network_faults.py: `ip netns` and a veth pair (iproute2, above, with ss)
# and nft rules inside it
{ command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ]; } || missing+=(nftables)
# tests/test_page.py: the bridge's page and /docs in a real headless browser (selenium drives it)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing ${missing[*]} with apt-get" >&2
$sudo apt-get update -qq
# No recommends: prometheus recommends prometheus-node-exporter, a service that would take
# port 9100, the worker's METRICS_PORT.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
# The package enables and starts a system Prometheus on :9090 scraping localhost. The tests run
# their own on a free port, so one we just installed is stopped and disabled (where systemd runs:
# containers and CI images usually forbid the start through policy-rc.d anyway).
if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi

#!/bin/sh
# Entry point of the compiler image: makes Hailo's Dataflow Compiler available, then runs the
# command (compile-hef by default).
#
# The DFC is never in the image. On first use its wheel, mounted read-only at HAILO_DFC_DIR
# (default /opt/hailo/dfc), is installed into HAILO_VENV (default /opt/hailo/venv), which should
# be a mounted directory so that the install (several minutes; TensorFlow among its
# dependencies) is done once. A HailoRT wheel beside it (hailort-*.whl) is installed too, for
# the DFC features that use it.
set -eu
dfc_dir=${HAILO_DFC_DIR:-/opt/hailo/dfc}
venv=${HAILO_VENV:-/opt/hailo/venv}

if ! command -v hailo >/dev/null 2>&1; then
    wheel=""
    for w in "$dfc_dir"/hailo_dataflow_compiler-*.whl; do
        [ -f "$w" ] && wheel=$w
    done
    if [ -z "$wheel" ]; then
        echo "hailo-compiler: Hailo's Dataflow Compiler is not installed: mount the directory holding hailo_dataflow_compiler-<version>-py3-none-linux_x86_64.whl at $dfc_dir (read-only)" >&2
        exit 2
    fi
    if [ ! -w "$venv" ]; then
        echo "hailo-compiler: $venv is not writable: mount a directory there (-v \$HOME/.cache/hailo-dfc:$venv)" >&2
        exit 2
    fi
    echo "hailo-compiler: installing $(basename "$wheel") into $venv (once)" >&2
    python3 -m venv "$venv"
    extra=""
    for w in "$dfc_dir"/hailort-*.whl; do
        [ -f "$w" ] && extra=$w
    done
    # shellcheck disable=SC2086 # $extra is one path or nothing
    "$venv/bin/pip" install --no-cache-dir "$wheel" $extra
    command -v hailo >/dev/null 2>&1 || { echo "hailo-compiler: no 'hailo' command after the install" >&2; exit 1; }
fi

exec "$@"

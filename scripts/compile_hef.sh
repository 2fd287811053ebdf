#!/usr/bin/env bash
# Compiles the ONNX encoder into a HEF with Hailo's Dataflow Compiler (the `hailo` command):
# parse (ONNX -> .har), optimize (quantise against the calibration set), compile (-> .hef).
#
#   scripts/compile_hef.sh --calib calib.npy [--onnx artifacts/tcn_encoder-v0.1.0.onnx]
#       [--version 0.1.0] [--hw-arch hailo8] [--out artifacts] [--net-name tcn_encoder]
#       [--model-script FILE.alls] [--end-node-names "A B"] [--force] [--keep-workdir]
#
# Writes OUT/<net-name>-v<version>.hef and adds its line to OUT/hef_sha256sum.txt (the list the
# worker checks HEF_PATH against). Earlier versions and their lines are left as they are, for
# rollback; a version that already exists is refused unless --force.
# The DFC runs on x86-64 only: in the compiler image (docker/hailo_compiler/), or wherever
# `hailo` is on PATH (HAILO=/path/to/hailo names another). Intermediate files go to a temporary
# directory, removed on success and kept (with the DFC's logs) on failure.
# Exit status: 0 done, 1 a DFC step failed, 2 bad arguments or inputs.
set -euo pipefail

PROG=compile_hef.sh
onnx=artifacts/tcn_encoder-v0.1.0.onnx
calib=calib.npy
version=""
hw_arch=hailo8
out=artifacts
net_name=tcn_encoder
model_script=""
end_nodes=""
force=0
keep=0
HAILO=${HAILO:-hailo}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
bad() { echo "$PROG: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case $1 in
        --onnx) onnx=${2:?}; shift 2 ;;
        --calib) calib=${2:?}; shift 2 ;;
        --version) version=${2:?}; shift 2 ;;
        --hw-arch) hw_arch=${2:?}; shift 2 ;;
        --out) out=${2:?}; shift 2 ;;
        --net-name) net_name=${2:?}; shift 2 ;;
        --model-script) model_script=${2:?}; shift 2 ;;
        --end-node-names) end_nodes=${2:?}; shift 2 ;;
        --force) force=1; shift ;;
        --keep-workdir) keep=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; bad "unknown argument: $1" ;;
    esac
done

# --- inputs ------------------------------------------------------------------------------------
[ -f "$onnx" ] || bad "--onnx: no such file: $onnx"
[ -f "$calib" ] || bad "--calib: no such file: $calib (record one with hailo-record)"
[ -z "$model_script" ] || [ -f "$model_script" ] || bad "--model-script: no such file: $model_script"
if [ -z "$version" ]; then
    # tcn_encoder-v0.1.0.onnx -> 0.1.0
    version=$(basename "$onnx" .onnx | sed -n 's/^.*-v\([0-9][0-9A-Za-z.+-]*\)$/\1/p')
    [ -n "$version" ] || bad "--version: not given, and $onnx has no -v<version> in its name"
fi
[[ $version =~ ^[0-9][0-9A-Za-z.+-]*$ ]] || bad "--version: not a version: $version"
[[ $net_name =~ ^[A-Za-z][A-Za-z0-9_]*$ ]] || bad "--net-name: letters, digits and _ only: $net_name"
[[ $hw_arch =~ ^[a-z0-9]+$ ]] || bad "--hw-arch: not an architecture name: $hw_arch"
command -v "$HAILO" >/dev/null 2>&1 \
    || bad "Hailo's Dataflow Compiler ('$HAILO') is not on PATH: run this in the compiler image (docker/hailo_compiler/README.md)"
mkdir -p "$out"
hef_name="$net_name-v$version.hef"
target="$out/$hef_name"
if [ -e "$target" ] && [ "$force" -ne 1 ]; then
    bad "$target exists: earlier versions are kept for rollback; give a new --version (or --force)"
fi

# The calibration set must be float32 windows; numpy is there wherever the DFC is.
if python3 -c 'import numpy' 2>/dev/null; then
    python3 - "$calib" <<'PY' || exit 2
import sys
import numpy as np
path = sys.argv[1]
try:
    a = np.load(path, mmap_mode="r", allow_pickle=False)
except Exception as exc:  # not an .npy at all
    sys.exit(f"compile_hef.sh: --calib: cannot read {path} as .npy: {exc}")
if a.dtype != np.float32 or a.ndim < 3 or a.shape[0] < 1:
    sys.exit(f"compile_hef.sh: --calib: need float32 [N, ...] windows, got {a.dtype} {list(a.shape)}")
note = "" if a.shape[0] >= 1024 else " (Hailo recommends about 1024 real samples)"
print(f"compile_hef.sh: calibration set {list(a.shape)} float32{note}", file=sys.stderr)
PY
else
    echo "$PROG: numpy missing here: the calibration set is left to the DFC to check" >&2
fi

# --- the three DFC steps, in a scratch directory (the DFC writes its logs to the cwd) ----------
abs() { (cd "$(dirname "$1")" && printf '%s/%s\n' "$(pwd)" "$(basename "$1")"); }
onnx_abs=$(abs "$onnx")
calib_abs=$(abs "$calib")
script_abs=""
[ -z "$model_script" ] || script_abs=$(abs "$model_script")
scratch=${TMPDIR:-/tmp}
made_scratch=0
[ -d "$scratch" ] || { mkdir -p "$scratch"; made_scratch=1; }
work=$(mktemp -d "$scratch/compile_hef.XXXXXX")
cleanup() {
    local rc=$?
    if [ $rc -ne 0 ] || [ "$keep" -eq 1 ]; then
        echo "$PROG: work directory with the DFC's logs kept: $work" >&2
    else
        rm -rf "$work"
        [ "$made_scratch" -eq 0 ] || rmdir "$scratch" 2>/dev/null || true
    fi
}
trap cleanup EXIT

step() {
    local name=$1
    shift
    echo "$PROG: == $name: $HAILO $*" >&2
    local started=$SECONDS
    if ! (cd "$work" && "$HAILO" "$@"); then
        echo "$PROG: $name failed (see the logs in $work)" >&2
        exit 1
    fi
    echo "$PROG: $name done in $((SECONDS - started)) s" >&2
}

parse_args=(parser onnx "$onnx_abs" --net-name "$net_name" --hw-arch "$hw_arch"
    --har-path "$work/$net_name.har" -y)
# shellcheck disable=SC2206 # node names are separated by spaces, as the DFC takes them
[ -z "$end_nodes" ] || parse_args+=(--end-node-names $end_nodes)
step parse "${parse_args[@]}"

optimize_args=(optimize "$work/$net_name.har" --hw-arch "$hw_arch"
    --calib-set-path "$calib_abs" --output-har-path "$work/${net_name}_optimized.har")
[ -z "$script_abs" ] || optimize_args+=(--model-script "$script_abs")
step optimize "${optimize_args[@]}"

mkdir -p "$work/out"
step compile compiler "$work/${net_name}_optimized.har" --hw-arch "$hw_arch" --output-dir "$work/out"

shopt -s nullglob
hefs=("$work"/out/*.hef)
[ ${#hefs[@]} -eq 1 ] || { echo "$PROG: expected one .hef from the compiler, got ${#hefs[@]}" >&2; exit 1; }

# --- publish: the HEF, then its checksum line; each by a rename, so a reader never sees half --
cp "${hefs[0]}" "$out/.$hef_name.tmp"
mv -f "$out/.$hef_name.tmp" "$target"
hash=$(sha256sum "$target" | cut -d' ' -f1)
sums="$out/hef_sha256sum.txt"
{
    # Every other line stays as it was: re-hashing older files would bless a changed one.
    [ ! -f "$sums" ] || awk -v name="$hef_name" '$2 != name && $2 != "*" name' "$sums"
    printf '%s  %s\n' "$hash" "$hef_name"
} | sort -k2 >"$sums.tmp"
mv -f "$sums.tmp" "$sums"

echo "$PROG: wrote $target (sha256 $hash, $hw_arch) and updated $sums" >&2
echo "$PROG: use it with INFER_MODE=hailo HEF_PATH=/models/$hef_name" >&2

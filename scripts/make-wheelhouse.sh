#!/usr/bin/env bash
# Make the container image's wheelhouse: wheels of akidb-embed, akidb-embed-onnx and
# akidb-embed-server, and of every runtime dependency they declare, for the image's Python
# and CPU, in wheelhouse/ (the Dockerfile installs from it with --no-index, so the image
# build downloads nothing). Run it on any machine with pip: the dependencies are fetched
# as binary wheels for the target, not for this machine.
#
#   bash scripts/make-wheelhouse.sh [--out DIR] [--python-version 3.11] [--arch x86_64|aarch64]
#                                   [--constraint FILE]
#
# --constraint pins versions (e.g. `pip freeze` of a tested virtualenv), so the image runs
# exactly what was tested. Our own wheels are reproducible (SOURCE_DATE_EPOCH from git).
# The export tooling (torch, transformers, onnx) is not in the wheelhouse: the image only
# serves models already exported (`akidb-embed export`), or downloaded from the hub.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
out=wheelhouse
pyver=3.11
arch=$(uname -m)
constraints=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=${2:?}; shift 2 ;;
        --python-version) pyver=${2:?}; shift 2 ;;
        --arch) arch=${2:?}; shift 2 ;;
        --constraint) constraints+=(--constraint "${2:?}"); shift 2 ;;
        -h|--help) usage ;;
        *) echo "make-wheelhouse: unknown argument: $1" >&2; usage ;;
    esac
done
case "$arch" in
    x86_64|amd64) arch=x86_64 ;;
    aarch64|arm64) arch=aarch64 ;;
    *) echo "make-wheelhouse: unsupported --arch $arch (x86_64 or aarch64)" >&2; exit 2 ;;
esac
if ! [[ "$pyver" =~ ^3\.[0-9]+$ ]]; then
    echo "make-wheelhouse: --python-version must look like 3.11, got $pyver" >&2
    exit 2
fi
python=${PYTHON:-python3}
pip() { "$python" -m pip --disable-pip-version-check --quiet "$@"; }
version=$("$python" -c 'import re, sys; print(re.search(r"__version__ = \"(.+)\"", open(sys.argv[1]).read())[1])' src/akidb_embed/_version.py)
start=$(date +%s)

# Rebuilt whole each time, so no stale version lingers.
rm -rf "$out"
mkdir -p "$out"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 315532800)}
pip wheel --no-deps --wheel-dir "$out" . ./src/akidb_embed_onnx ./src/akidb_embed_server

# Binary wheels for the target: manylinux for glibc 2.17 .. 2.36 (Debian bookworm's), this
# Python's ABI, the stable ABI, or pure Python.
platforms=()
for minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${minor}_${arch}"); done
platforms+=(--platform "manylinux2014_${arch}")
abi=cp${pyver/./}
pip download --only-binary=:all: --dest "$out" --find-links "$out" \
    --python-version "$pyver" --implementation cp --abi "$abi" --abi abi3 --abi none \
    "${platforms[@]}" "${constraints[@]}" \
    "akidb-embed-server==$version" "akidb-embed-onnx==$version"
printf 'python=%s machine=%s\n' "$pyver" "$arch" > "$out/TARGET"
(cd "$out" && sha256sum -- *.whl > SHA256SUMS)

count=$(find "$out" -name '*.whl' | wc -l)
echo "wheelhouse: $count wheels, $(du -sh "$out" | cut -f1), Python $pyver $arch, in $out ($(( $(date +%s) - start )) s)"

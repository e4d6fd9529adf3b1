#!/usr/bin/env bash
# Build the container image and run it for real (called by .ci/run; runs alone too, as root).
#
# There is no Docker engine here and public base images cannot be pulled, so: a local
# Debian bookworm base with Python 3.11 made by debootstrap (cached under .cache/image,
# keyed by its inputs), the wheelhouse (scripts/make-wheelhouse.sh, pinned to the versions
# of the tested virtualenv), `buildah bud` of the Dockerfile with that base as BASE_IMAGE,
# then scripts/check_image.py runs each docker-compose.yaml service in the image with
# `buildah run` and probes it from the host. Prints the image size, the time from start to
# ready, and how long each step took. Everything lives in a private buildah storage that is
# removed on exit, failure included.
#
#   bash scripts/check-image.sh            # AKIDB_VENV: the host virtualenv (default .venv)
#   AKIDB_IMAGE_CACHE=DIR                  # where the base rootfs is cached (.cache/image)
#   AKIDB_KEEP_IMAGE=1                     # keep the storage (path printed) for a look
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${AKIDB_VENV:-.venv}
python="$venv/bin/python"
cache=${AKIDB_IMAGE_CACHE:-.cache/image}
mirror=${AKIDB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
packages=python3,python3-venv,ca-certificates
start=$(date +%s)
step_start=$start
steps=()
step() { local now; now=$(date +%s); steps+=("$1=$(( now - step_start ))"); step_start=$now; }

if [ "$(id -u)" != 0 ]; then
    echo "check-image: needs root (debootstrap, buildah's chroot isolation)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
    apt_install() { apt-get -o DPkg::Lock::Timeout=600 install -y -q buildah debootstrap; }
    apt_install || { apt-get -o DPkg::Lock::Timeout=600 update -q && apt_install; }
fi
step tools

# Everything of this run in one folder, removed on exit (unless AKIDB_KEEP_IMAGE=1).
work=$(mktemp -d "${TMPDIR:-/tmp}/akidb-image.XXXXXX")
export TMPDIR="$work/tmp"   # buildah's chroot mounts go here too
mkdir -p "$TMPDIR"
buildah="buildah --root $work/storage --runroot $work/run --storage-driver vfs"
cleanup() {
    local status=$?
    set +e
    if [ "${AKIDB_KEEP_IMAGE:-}" = 1 ]; then
        echo "check-image: kept $work (buildah ${buildah#buildah })"
        return
    fi
    $buildah rm --all >/dev/null 2>&1
    # Mounts left by an interrupted run would make rm fail; undo them first.
    grep -o " $work[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$work"
    [ $status = 0 ] || echo "check-image: FAILED (exit $status)" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. The base image: bookworm + Python 3.11, the shape of python:3.11-slim-bookworm (no
#    apt lists, docs, man pages or locales). Cached by its inputs.
key=$(printf '%s\n' "$suite" minbase "$packages" "$mirror" "$(dpkg --print-architecture)" \
    "$(dpkg-query -W -f '${Version}' debootstrap)" slim-1 | sha256sum | cut -c1-16)
base_tar="$cache/base-$suite-$key.tar"
if [ ! -s "$base_tar" ]; then
    mkdir -p "$cache"
    rootfs="$work/rootfs"
    echo "check-image: debootstrap $suite ($packages), about 2-3 min, cached as $base_tar"
    debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
        >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log"; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
        "$rootfs"/usr/share/locale/*
    tar --numeric-owner -C "$rootfs" -cf "$base_tar.part" .
    mv "$base_tar.part" "$base_tar"
    rm -rf "$rootfs"
fi
mkdir -p "$work/base"
ln "$base_tar" "$work/base/rootfs.tar" 2>/dev/null || cp "$base_tar" "$work/base/rootfs.tar"
printf 'FROM scratch\nADD rootfs.tar /\nENV LANG=C.UTF-8\nCMD ["python3"]\n' >"$work/base/Dockerfile"
base_image=localhost/akidb-base:$key
$buildah bud --quiet --isolation chroot -t "$base_image" "$work/base" >/dev/null
step base

# 2. The wheelhouse, pinned to the versions the tests ran with.
"$python" -m pip freeze --disable-pip-version-check --exclude-editable \
    | grep -E '^[A-Za-z0-9._-]+==' >"$work/constraints.txt" || true
PYTHON="$python" bash scripts/make-wheelhouse.sh --constraint "$work/constraints.txt" \
    2> >(grep -v "^WARNING: Location 'file:" >&2)
step wheelhouse

# 3. The image (docker format: OCI has no HEALTHCHECK).
image=localhost/akidb-embed:check
$buildah bud --quiet --isolation chroot --format docker \
    --build-arg BASE_IMAGE="$base_image" -t "$image" . >"$work/build.log" 2>&1 \
    || { cat "$work/build.log"; exit 1; }
step build
size=$($buildah images --json "$image" | "$python" -c 'import json, sys; print(json.load(sys.stdin)[0]["size"])')
base_size=$($buildah images --json "$base_image" | "$python" -c 'import json, sys; print(json.load(sys.stdin)[0]["size"])')

# 4. Run it: the exported model (the README's serve.sh export, made here when missing).
model=$("$python" -c 'import sys; sys.path.insert(0, "examples"); from search_demo import onnx_model_dir; print(onnx_model_dir())' | tail -n 1)
step model
"$python" scripts/check_image.py --buildah "$buildah" --image "$image" --model "$model" \
    --summary "$work/summary.json"
step run
# Nothing of ours may be left: no container, no mount.
[ -z "$($buildah containers --quiet)" ] || { echo "check-image: containers left" >&2; exit 1; }
! grep -q " $work/" /proc/mounts || { echo "check-image: mounts left" >&2; exit 1; }

ready=$("$python" - "$work/summary.json" <<'EOF'
import json, sys
runs = json.load(open(sys.argv[1]))
print(", ".join(f"{name} {run['ready_s']:.2f} s" for name, run in runs.items()))
EOF
)
echo "image: $size (base $base_size; goal <= 600 MB, no torch), ready after start: $ready (goal <= 3 s)"
# The size is deterministic, so it is a gate; the ready time depends on the machine's load
# and is reported only (benchmarks, not CI, judge speed).
"$python" -c 'import re, sys; n, unit = re.fullmatch(r"([\d.]+) ?([kMG]?B)", sys.argv[1]).groups(); mb = float(n) * {"kB": 1e-3, "MB": 1, "GB": 1e3, "B": 1e-6}[unit]; sys.exit(None if mb <= 600 else f"check-image: the image is {mb:.0f} MB, over the 600 MB goal")' "$size"
echo "steps (s): ${steps[*]}"
echo "check-image finished in $(( $(date +%s) - start )) s"

#!/usr/bin/env bash
# Build the image's bases offline: Debian bookworm (Python 3.11) from the Debian archive that
# apt on this host already uses (its own sources file; no host name is written here).
#   RUNTIME (default python:3.11-slim, the name bentofile.yaml uses, so no registry is needed)
#   BUILD   (the same plus binutils, for the build stage only: strips TensorFlow's symbols)
# Cached: does nothing when both tags exist. Usage: container-base.sh [RUNTIME [BUILD]]
set -euo pipefail
runtime=${1:-docker.io/library/python:3.11-slim}
build=${2:-localhost/despliegue-build-base:bookworm}
if podman image exists "$runtime" && podman image exists "$build"; then
    echo "base images $runtime and $build exist (podman rmi them to rebuild)"
    exit 0
fi
sources=""
for candidate in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    [ -s "$candidate" ] && { sources=$candidate; break; }
done
[ -n "$sources" ] || { echo "no apt sources file to build the base from" >&2; exit 1; }
rootfs=$(mktemp -d /var/tmp/despliegue-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
# No recommends, manuals, translations or docs (the copyright files stay). The image must not
# ship this host's apt source: it is removed (with apt's lists and caches), so the image points
# at no mirror; whoever extends the image adds their own source.
mmdebstrap --mode=root --variant=minbase \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates,binutils \
    --customize-hook='rm -f "$1"/etc/apt/sources.list "$1"/etc/apt/sources.list.d/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
    bookworm "$rootfs" - < "$sources"
# pip refuses to touch Debian's Python (PEP 668) unless told; BentoML's RUN steps
# `pip install uv` into it, then install everything else into /app/.venv.
import_rootfs() {
    tar -C "$rootfs" -c . | podman import \
        --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' \
        - "$1"
}
import_rootfs "$build"
chroot "$rootfs" apt-get -qq -y purge --autoremove binutils >/dev/null
rm -rf "$rootfs"/var/log/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/ldconfig/*
import_rootfs "$runtime"
podman image ls --filter reference="$runtime" --filter reference="$build"

#!/usr/bin/env bash
# Build the image's base offline: Debian bookworm (Python 3.11) from the Debian archive that
# apt on this host already uses (its own sources file; no host name is written here), tagged
# as the `python:3.11-slim` that bentofile.yaml names, so the build needs no image registry.
# Cached: does nothing when the tag exists. Usage: container-base.sh [IMAGE-NAME]
set -euo pipefail
name=${1:-docker.io/library/python:3.11-slim}
if podman image exists "$name"; then
    echo "base image $name exists (podman rmi it to rebuild)"
    exit 0
fi
sources=""
for candidate in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    [ -s "$candidate" ] && { sources=$candidate; break; }
done
[ -n "$sources" ] || { echo "no apt sources file to build the base from" >&2; exit 1; }
rootfs=$(mktemp -d /var/tmp/despliegue-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
# The image must not ship this host's apt source: remove it (and apt's lists/caches) so the
# image points at no mirror; whoever extends the image adds their own source.
# No recommends, manuals, translations or docs (the copyright files stay).
mmdebstrap --mode=root --variant=minbase \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
    --customize-hook='rm -f "$1"/etc/apt/sources.list "$1"/etc/apt/sources.list.d/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
    bookworm "$rootfs" - < "$sources"
# pip refuses to touch Debian's Python (PEP 668) unless told; BentoML's RUN steps
# `pip install uv` into it, then install everything else into /app/.venv.
tar -C "$rootfs" -c . | podman import \
    --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    - "$name"
podman image ls "$name"

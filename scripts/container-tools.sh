#!/usr/bin/env bash
# Install the daemonless container tools (Debian/Ubuntu, root): buildah builds, podman runs,
# skopeo inspects OCI archives, mmdebstrap makes the base image offline from apt's own sources.
# Exit 0 when they are present; exit 3 (with the reason) when they cannot be installed here.
set -euo pipefail
tools=(buildah podman skopeo mmdebstrap runc)
missing=()
for tool in "${tools[@]}"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "container tools missing (${missing[*]}) and not installable: needs root and apt-get" >&2
    exit 3
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
        buildah podman skopeo mmdebstrap runc fuse-overlayfs uidmap >/dev/null; }; then
    echo "container tools missing (${missing[*]}): apt-get install failed" >&2
    exit 3
fi

#!/usr/bin/env bash
# Bento -> OCI image -> OCI archive, with no Docker daemon and no registry:
#   1. the base image (built offline once, see container-base.sh),
#   2. `bentoml build` (code, configuration.yaml, model tags, the home's lifecycle state, locked
#      requirements),
#   3. `bentoml containerize --backend buildah` (the Bento's generated Dockerfile),
#   4. `buildah push oci-archive:` + `skopeo inspect`, size printed,
#   5. the store keeps this image and the build cache: older versions of $IMAGE and the build
#      stages they left behind are removed (each build adds ~1.6 GB; a disk that filled up
#      once stopped a build half way).
# Environment: BENTOML (the bentoml CLI), PYTHON (the venv's Python, which runs the build),
# IMAGE (repository name, default despliegue), BUILD_BASE_IMAGE (build stage's base, see
# container-base.sh), CA_BUNDLE (a PEM file bind-mounted read-only during RUN steps only, for
# networks whose TLS is intercepted; never copied into the image; empty disables), DIST
# (archive folder).
set -euo pipefail
cd "$(dirname "$0")/.."
BENTOML=${BENTOML:-bentoml}
PYTHON=${PYTHON:-python}
IMAGE=${IMAGE:-despliegue}
DIST=${DIST:-dist}
CA_BUNDLE=${CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
# Image for the build stage only (the runtime stage uses the Bento's base image).
BUILD_BASE_IMAGE=${BUILD_BASE_IMAGE:-localhost/despliegue-build-base:bookworm}

# The store keeps one image of $IMAGE (and `latest`) and the build cache; other versions go (one
# in use by a container stays, said so).
remove_other_versions() {
    local keep=$1 old image
    old=$(podman images --format '{{.Repository}}:{{.Tag}}' | { grep -E "/$IMAGE:" || true; } \
        | { grep -v -e ":$keep\$" -e ':latest$' || true; })
    for image in $old; do podman rmi "$image" >/dev/null || echo "kept $image: in use"; done
}
remove_other_versions latest
scripts/container-base.sh docker.io/library/python:3.11-slim "$BUILD_BASE_IMAGE"
# With the home's lifecycle state packed (despliegue/lifecycle/pack.py): the image serves what
# was promoted.
tag=$("$PYTHON" -m despliegue.lifecycle.pack "$BENTOML" build --output tag | tail -n 1)
tag=${tag#__tag__:}
version=${tag#*:}
echo "bento $tag"
opts=(--opt isolation=chroot --opt format=docker --opt "build-arg=BUILD_BASE_IMAGE=$BUILD_BASE_IMAGE")
# Cache unchanged steps (base, uv, locked requirements) between builds; remove a failed step's
# working container too (each held a multi-GB layer).
opts+=(--opt layers --opt force-rm)
if [ -n "$CA_BUNDLE" ] && [ -f "$CA_BUNDLE" ]; then
    opts+=(--opt "volume=$(readlink -f "$CA_BUNDLE"):/etc/ssl/certs/ca-certificates.crt:ro")
fi
start=$(date +%s)
# From "/": BentoML 1.4 resolves the Bento's Dockerfile template inside a temporary build
# context and refuses any path outside the working directory.
(cd / && "$BENTOML" containerize "$tag" --backend buildah --image-tag "$IMAGE:$version" "${opts[@]}")
echo "image built in $(( $(date +%s) - start )) s"
podman tag "$IMAGE:$version" "$IMAGE:latest"
mkdir -p "$DIST"
archive="$DIST/$IMAGE-$version.oci.tar"
rm -f "$DIST/$IMAGE"-*.oci.tar   # one archive: the current image
buildah push --quiet "$IMAGE:$version" "oci-archive:$archive:$IMAGE:$version"
ln -sf "$(basename "$archive")" "$DIST/$IMAGE.oci.tar"
skopeo inspect --format '{{.Digest}} {{.Os}}/{{.Architecture}} {{len .Layers}} layers' \
    "oci-archive:$archive" | sed "s|^|$archive: |"
size=$(podman image inspect "$IMAGE:$version" --format '{{.Size}}')
echo "image $IMAGE:$version size $(python3 -c "print(f'{$size/1e9:.2f} GB')") (uncompressed), archive $(du -h "$archive" | cut -f1)"
echo "$IMAGE:$version" > "$DIST/image.txt"
remove_other_versions "$version"
# Dangling images (untagged, no child) made before this build go too: on a build machine, the
# leaves of older builds' stages. The steps this build reused are parents of its own images, so
# the build cache stays. (Pruned only after a build: before one, the last build's stage leaf is
# all that holds the cache.)
podman image prune --force --filter "until=$start" >/dev/null
graphroot=$(podman info --format '{{.Store.GraphRoot}}')
echo "image store $graphroot: $(df -h --output=avail "$graphroot" | tail -1 | tr -d ' ') free"

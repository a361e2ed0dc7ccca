#!/usr/bin/env bash
# Builds the serving image cascade:latest (deploy/Dockerfile) and cascade-prometheus:latest
# (deploy/Dockerfile.prometheus) and cascade-redis:latest (deploy/Dockerfile.redis) on the base from deploy/base_image.sh (made when missing).
#   deploy/build_image.sh           the bundle and the dataset are mounted at run time (default)
#   deploy/build_image.sh --bake    bake artifacts/current and its dataset into the image
# Env: IMAGE (cascade:latest), ARTIFACTS (artifacts), DATA_DIR (data), DOCKER (a client with
# BuildKit built in: Debian's docker.io client, /usr/bin/docker, by default).
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-/usr/bin/docker}
IMAGE=${IMAGE:-cascade:latest}
PROMETHEUS_IMAGE=${PROMETHEUS_IMAGE:-cascade-prometheus:latest}
REDIS_IMAGE=${REDIS_IMAGE:-cascade-redis:latest}
ARTIFACTS=${ARTIFACTS:-artifacts}
DATA_DIR=${DATA_DIR:-data}
export DOCKER_BUILDKIT=1
# BuildKit's step log with VERBOSE=1; otherwise quiet (a failing step still prints its output).
progress=(--quiet)
[[ -n ${VERBOSE:-} ]] && progress=(--progress plain)

bundle=mounted
if [[ ${1:-} == --bake ]]; then
    # Stage the published bundle (the version `current` points to, plus the link) and the
    # dataset it was trained on: the only paths .dockerignore lets through besides the sources.
    version_dir=$(readlink -f "$ARTIFACTS/current") \
        || { echo "error: no $ARTIFACTS/current: run \`make demo\` first" >&2; exit 1; }
    dataset=$(python3 -c 'import json, sys
print(json.load(open(sys.argv[1]))["components"]["recall"]["dataset"])' "$version_dir/manifest.json")
    [[ -d $DATA_DIR/$dataset ]] || { echo "error: no $DATA_DIR/$dataset" >&2; exit 1; }
    rm -rf .cascade/bake
    mkdir -p .cascade/bake/artifacts .cascade/bake/data
    cp -a "$version_dir" .cascade/bake/artifacts/
    # Keep the pin: `current -> .pins/<manifest sha256> -> ../<version>` (cascade/artifacts.py).
    pin=$(readlink "$ARTIFACTS/current")
    if [[ $pin == .pins/* ]]; then
        mkdir -p .cascade/bake/artifacts/.pins
        ln -s "../$(basename "$version_dir")" ".cascade/bake/artifacts/$pin"
        ln -s "$pin" .cascade/bake/artifacts/current
    else
        ln -s "$(basename "$version_dir")" .cascade/bake/artifacts/current
    fi
    cp -a "$DATA_DIR/$dataset" .cascade/bake/data/
    trap 'rm -rf .cascade/bake' EXIT
    bundle=baked
    echo "== baking $(basename "$version_dir") ($dataset) into $IMAGE"
fi

bash deploy/base_image.sh

started=$SECONDS
"$DOCKER" build "${progress[@]}" --network host --build-arg BUNDLE="$bundle" -f deploy/Dockerfile -t "$IMAGE" .
echo "== built $IMAGE in $((SECONDS - started)) s"

started=$SECONDS
"$DOCKER" build "${progress[@]}" --network host -f deploy/Dockerfile.prometheus -t "$PROMETHEUS_IMAGE" \
    deploy/prometheus
echo "== built $PROMETHEUS_IMAGE in $((SECONDS - started)) s"

started=$SECONDS
"$DOCKER" build "${progress[@]}" --network host -f deploy/Dockerfile.redis -t "$REDIS_IMAGE" deploy
echo "== built $REDIS_IMAGE in $((SECONDS - started)) s"
# vfs stores every layer as a full copy: drop the images this build replaced.
"$DOCKER" image prune --force >/dev/null
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' \
    | grep -E "^(${IMAGE%%:*}|${PROMETHEUS_IMAGE%%:*}|cascade-base):" || true

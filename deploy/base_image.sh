#!/usr/bin/env bash
# Builds the stand-in base image cascade-base:debian (no container registry is reachable here):
# debootstrap a minimal Debian of the host's release from the host's apt mirror, with python3 and
# venv, copy the host's CA bundle in (pip inside the build must trust the same CAs as the host),
# and `docker import` it. Skipped when the image exists; FORCE=1 rebuilds it.
# Needs root, debootstrap and a running Docker engine (deploy/compose_smoke.sh sets both up).
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-cascade-base:debian}
DOCKER=${DOCKER:-docker}
WORK=${WORK:-/var/tmp/cascade-base}

if [[ -z ${FORCE:-} ]] && "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "== base image $BASE_IMAGE exists (FORCE=1 rebuilds it)"
    exit 0
fi

# shellcheck disable=SC1091
release=$(. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")
# The host's own Debian mirror: deb822 sources first, then the one-line format.
mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources \
    2>/dev/null || true)
if [[ -z $mirror ]]; then
    mirror=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[[ -r $ca_bundle ]] || { echo "error: no CA bundle at $ca_bundle" >&2; exit 1; }

rootfs="$WORK/$release"
started=$SECONDS
rm -rf "$rootfs"
mkdir -p "$WORK"
echo "== debootstrap $release from $mirror into $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$release" "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }

# The host's CAs: the bundle itself, and the local certificates it was built from, so that a
# later update-ca-certificates inside the image (e.g. an apt install) keeps them.
cp "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
fi
# Smaller image: no apt lists or package cache, no docs (the lists come back with apt-get update).
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*

echo "== docker import $BASE_IMAGE"
tar --numeric-owner -C "$rootfs" -c . | "$DOCKER" import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
    --message "debootstrap $release minbase + python3 + host CA bundle" - "$BASE_IMAGE"
rm -rf "$rootfs"
echo "== built $BASE_IMAGE in $((SECONDS - started)) s"

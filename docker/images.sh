#!/usr/bin/env bash
# `make images`: builds chameleon-router (docker/Dockerfile.router) and chameleon-shard-cpu
# (docker/Dockerfile.shard-cpu) with buildah, without a Docker engine or an image registry.
#
# The base is a Debian bookworm made by debootstrap from Debian's package mirror (python3, python3-venv,
# ca-certificates, plus the host's extra CA certificates so pip in the build trusts what the host
# trusts), imported as $IMAGE_BASE. It is keyed by a hash of what goes in it: an unchanged key reuses
# the image, or the rootfs tarball cached under $IMAGE_CACHE; anything else rebuilds it.
# The shard image gets the torch wheel the host's pip picks for $TORCH_SPEC (the one `make install`
# puts in .venv), bound in at /wheels, instead of PyTorch's CPU index that its Dockerfile defaults to.
# On a Docker host, `docker build` with the Dockerfiles' default (public) bases does the same.
#
# Environment: PIP (host pip command, default `python3 -m pip`), TORCH_SPEC (default torch==2.13.0),
# IMAGE_CACHE (default ~/.cache/chameleon/images), IMAGE_BASE (localhost/chameleon-base:bookworm),
# DEBIAN_MIRROR (http://deb.debian.org/debian). Needs root, buildah and debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."

PIP=${PIP:-python3 -m pip}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
CACHE=${IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chameleon/images}
BASE=${IMAGE_BASE:-localhost/chameleon-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates
BASE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

for tool in buildah debootstrap; do
    command -v "$tool" >/dev/null || { echo "make images: $tool not found (apt-get install buildah debootstrap)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "make images: needs root (buildah and debootstrap)" >&2; exit 1; }
mkdir -p "$CACHE"

host_cas() { find /usr/local/share/ca-certificates -name '*.crt' -type f 2>/dev/null | sort; }

base_key() {
    {
        echo "v1 $SUITE $MIRROR $PACKAGES $BASE_PATH"
        host_cas | while read -r crt; do sha256sum "$crt"; done
    } | sha256sum | cut -c1-16
}

make_rootfs_tar() {  # $1: the tarball to write
    local root
    root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    echo "make images: debootstrap $SUITE (about a minute)" >&2
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log" >&2; return 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    host_cas | while read -r crt; do cp "$crt" "$root/usr/local/share/ca-certificates/"; done
    chroot "$root" update-ca-certificates >/dev/null
    tar -C "$root" -cf "$1.tmp" . && mv "$1.tmp" "$1"
    rm -rf "$root"
    trap - EXIT
}

ensure_base() {
    local key have tarball ctr
    key=$(base_key)
    have=$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "chameleon.base-key"}}' \
        "$BASE" 2>/dev/null || true)
    if [ "$have" = "$key" ]; then
        echo "make images: base $BASE is current ($key)" >&2
        return
    fi
    tarball="$CACHE/base-$SUITE-$key.tar"
    [ -f "$tarball" ] || make_rootfs_tar "$tarball"
    ctr=$(buildah from scratch)
    buildah add --quiet "$ctr" "$tarball" / >/dev/null
    buildah config --label "chameleon.base-key=$key" --env "PATH=$BASE_PATH" --cmd /bin/bash "$ctr"
    buildah commit --quiet --rm "$ctr" "$BASE" >/dev/null
    echo "make images: base $BASE imported ($key)" >&2
}

torch_wheel() {  # prints the wheel's folder and file name
    local dir
    dir="$CACHE/wheels/$(echo "$TORCH_SPEC $(uname -m)" | sha256sum | cut -c1-12)"
    if ! compgen -G "$dir/torch-*.whl" >/dev/null; then
        mkdir -p "$dir"
        # The base's Python is Debian bookworm's 3.11, whatever the host runs.
        $PIP download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
            --platform "manylinux_2_28_$(uname -m)" --dest "$dir" "$TORCH_SPEC" >&2
    fi
    local wheel
    wheel=$(compgen -G "$dir/torch-*.whl" | head -1)
    echo "$dir" "$(basename "$wheel")"
}

ensure_base
read -r WHEEL_DIR WHEEL < <(torch_wheel)

BUD=(buildah bud --isolation chroot --format docker --layers --build-arg "BASE=$BASE")
echo "make images: building chameleon-router" >&2
"${BUD[@]}" -f docker/Dockerfile.router -t chameleon-router .
echo "make images: building chameleon-shard-cpu (torch: $WHEEL)" >&2
"${BUD[@]}" -f docker/Dockerfile.shard-cpu --volume "$WHEEL_DIR:/wheels:ro" \
    --build-arg TORCH_INDEX_URL= --build-arg "TORCH_SPEC=/wheels/$WHEEL" -t chameleon-shard-cpu .
for image in chameleon-router chameleon-shard-cpu; do
    buildah images --noheading --format '{{.Name}}:{{.Tag}} {{.Size}}' "localhost/$image"
done

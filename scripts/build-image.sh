#!/usr/bin/env bash
# Builds the clickheatmap image offline from binaries built by cargo on this machine, into a
# docker-archive tar (load it with `docker load`, `podman load`, or ../shared/kube/load-image.sh).
#
#   scripts/build-image.sh [--profile dist|dev] [--name IMAGE] [--out FILE.tar]
#
#   --profile dist     (default) builds the four binaries with `cargo build --profile dist
#                      --locked` (release without debug info and symbols) if they are missing or
#                      older than the sources; the image is what ships. `release` is accepted as
#                      another name for it.
#   --profile dev      takes the binaries `cargo test` already built in target/debug (the node
#                      end-to-end suite does this: CI never builds a second, release profile).
#   --name             default localhost/clickheatmap:<workspace version>
#   --out              default target/image/clickheatmap-<profile>.tar
#
# The image is FROM scratch (Containerfile): the binaries stripped of debug info and symbols, the
# shared libraries they link (found with ldd: glibc, libgcc_s), the machine's CA bundle, an
# /etc/passwd naming the user 65532, and nsswitch.conf (glibc then reads /etc/hosts, which
# Kubernetes' hostAliases write). File times are fixed, so the same binaries give the same layer.
# Builder: ../shared/kube/build-image.sh (buildah, vfs storage, no network) when present, else
# buildah, podman or docker from PATH.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)

profile=dist name="" out=""
while [ $# -gt 0 ]; do
  case $1 in
    --profile) profile=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$profile" = release ]; then profile=dist; fi
name=${name:-localhost/clickheatmap:$version}
out=${out:-$root/target/image/clickheatmap-$profile.tar}
binaries=(clickheatmap-operator clickheatmap-aggregator clickheatmap-collector clickheatmap-viewer)
target_dir=${CARGO_TARGET_DIR:-$root/target}
case $profile in
  dist)
    bin_dir=$target_dir/dist
    (cd "$root" && cargo build --profile dist --locked \
      -p clickheatmap-operator -p clickheatmap-aggregator -p clickheatmap-collector -p clickheatmap-viewer)
    ;;
  dev) bin_dir=$target_dir/debug ;;
  *) echo "build-image.sh: --profile is dist or dev, not $profile" >&2; exit 2 ;;
esac
for binary in "${binaries[@]}"; do
  if [ ! -x "$bin_dir/$binary" ]; then
    echo "build-image.sh: $bin_dir/$binary is missing; build it first (cargo test --workspace builds all four)" >&2
    exit 1
  fi
done
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca_bundle" ] || { echo "build-image.sh: $ca_bundle is missing (apt-get install ca-certificates)" >&2; exit 1; }

context=$(mktemp -d "${TMPDIR:-/tmp}/clickheatmap-image.XXXXXX")
trap 'rm -rf "$context"' EXIT
rootfs=$context/rootfs
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs"
for binary in "${binaries[@]}"; do
  strip --strip-all -o "$rootfs/usr/local/bin/$binary" "$bin_dir/$binary"
  # Every shared library the binary links, at the path the dynamic loader looks for it.
  ldd "$bin_dir/$binary" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }' | while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
done
cp "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
chmod -R u=rwX,go=rX "$rootfs"
chmod 0755 "$rootfs"/usr/local/bin/*
find "$rootfs" -exec touch -h -d @"${SOURCE_DATE_EPOCH:-0}" {} +
cp "$root/Containerfile" "$context/Containerfile"

shared_builder=${CLICKHEATMAP_KUBE_DIR:-$root/../shared/kube}/build-image.sh
mkdir -p "$(dirname "$out")"
if [ -x "$shared_builder" ]; then
  "$shared_builder" "$context/Containerfile" "$context" "$name" "$out" >/dev/null
elif command -v buildah >/dev/null 2>&1; then
  buildah build --quiet --pull=never -f "$context/Containerfile" -t "$name" "$context" >/dev/null
  rm -f "$out"
  buildah push --quiet "$name" "docker-archive:$out:$name"
elif command -v podman >/dev/null 2>&1 || command -v docker >/dev/null 2>&1; then
  engine=$(command -v podman || command -v docker)
  "$engine" build -q -f "$context/Containerfile" -t "$name" "$context" >/dev/null
  "$engine" save -o "$out" "$name"
else
  echo "build-image.sh: no image builder (buildah, podman or docker) found" >&2
  exit 1
fi
echo "$name $out $(du -m "$out" | cut -f1) MiB"

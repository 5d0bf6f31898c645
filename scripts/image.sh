#!/usr/bin/env bash
# Builds Ferry's container image -- the one deploy/image/Dockerfile
# describes: Debian 12 with iptables (both backends), iproute2 and ca-certificates, the
# four binaries in /usr/local/bin -- without a container engine or registry,
# as an OCI image layout plus an archive of it, and prints the image's
# digest. Needs root (mmdebstrap and umoci keep file ownership) and a Debian
# mirror; installs mmdebstrap, umoci and jq with apt-get when missing.
#
#   scripts/image.sh [--binaries DIR] [--out DIR] [--tag TAG]
#
# stdout, last three lines:
#   image: OUT/oci:TAG            (umoci unpack --image OUT/oci:TAG DIR)
#   archive: OUT/ferry-TAG.oci.tar (skopeo copy oci-archive:... docker://...)
#   digest: sha256:...            (the manifest's digest: the image's id)
# Progress goes to stderr. See docs/image.md.
#
# Reproducible: with the same binaries, commit and cached Debian root
# filesystem, two runs give the same digest. Times come from the commit
# (SOURCE_DATE_EPOCH, git log -1 --format=%ct); the root filesystem is cached
# under OUT/cache by a hash of its recipe (suite, packages, options), so
# later runs download nothing. Delete OUT/cache to pick up Debian updates.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bins=(ferry-proxy ferry-control-plane ferryctl ferry-certs)

usage() {
  cat <<EOF
usage: scripts/image.sh [--binaries DIR] [--out DIR] [--tag TAG]

Builds Ferry's container image (deploy/image/Dockerfile's) without a
container engine: mmdebstrap (Debian bookworm, iptables, ca-certificates)
plus the binaries, written with umoci as an OCI layout and archive.

  --binaries DIR  take ${bins[*]} from DIR
                  (default: scripts/release.sh builds them into
                  target/<host triple>/release)
  --out DIR       output directory (default: target/image); writes
                  DIR/oci (layout, tag TAG), DIR/ferry-TAG.oci.tar and
                  DIR/cache (the Debian root filesystem, reused)
  --tag TAG       image tag (default: the workspace version, Cargo.toml)
  -h, --help      this text

Environment: FERRY_IMAGE_MIRROR (default http://deb.debian.org/debian),
FERRY_IMAGE_SECURITY_MIRROR (default http://deb.debian.org/debian-security),
FERRY_IMAGE_SOURCE (the org.opencontainers.image.source label),
SOURCE_DATE_EPOCH (default: the commit's time), FERRY_GIT_COMMIT (default:
git rev-parse HEAD).
EOF
}

log() { printf 'image.sh: %s\n' "$*" >&2; }
die() { printf 'image.sh: error: %s\n' "$*" >&2; exit 1; }

binaries=""
out="$root/target/image"
tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binaries) [ $# -ge 2 ] || die "--binaries needs a directory"; binaries=$2; shift 2 ;;
    --binaries=*) binaries=${1#*=}; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --tag) [ $# -ge 2 ] || die "--tag needs a value"; tag=$2; shift 2 ;;
    --tag=*) tag=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "run as root: mmdebstrap (--mode=root) and umoci unpack/repack keep file ownership"

# --- tools -------------------------------------------------------------------
need=()
for tool in mmdebstrap:mmdebstrap umoci:umoci jq:jq gpgv:gpgv; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  for attempt in 1 2 3; do
    if apt-get update -qq >&2 &&
      apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; then
      break
    fi
    [ "$attempt" -lt 3 ] || die "installing ${need[*]} with apt-get failed"
    log "apt-get failed (attempt $attempt of 3); retrying in 10 s"
    sleep 10
  done
fi

# --- what is built -----------------------------------------------------------
# Version: [workspace.package] version in Cargo.toml, else proxy/Cargo.toml's.
toml_version() { # FILE SECTION
  awk -v header="[$2]" '
    /^[[:space:]]*\[/ { line = $0; gsub(/[[:space:]]/, "", line); in_section = (line == header); next }
    in_section && /^[[:space:]]*version[[:space:]]*=/ {
      sub(/^[^"]*"/, ""); sub(/".*$/, ""); print; exit
    }' "$1"
}
version=$(toml_version "$root/Cargo.toml" workspace.package)
[ -n "$version" ] || version=$(toml_version "$root/proxy/Cargo.toml" package)
[ -n "$version" ] || die "no version in Cargo.toml [workspace.package] or proxy/Cargo.toml [package]"
tag=${tag:-$version}
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$ ]] || die "not a valid image tag: $tag"

commit=${FERRY_GIT_COMMIT:-}
if [ -z "$commit" ]; then
  if commit=$(git -C "$root" rev-parse HEAD 2>/dev/null); then
    git -C "$root" diff --quiet HEAD -- \
      || log "warning: the work tree has uncommitted changes; the image is labelled with HEAD ($commit)"
  else
    commit=unknown
  fi
fi
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null) \
    || die "no git history for the image's timestamps: set SOURCE_DATE_EPOCH"
fi
[[ "$SOURCE_DATE_EPOCH" =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH is not a number: $SOURCE_DATE_EPOCH"
export SOURCE_DATE_EPOCH
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
source_url=${FERRY_IMAGE_SOURCE:-https://github.com/ferry-mesh/ferry}

if [ -z "$binaries" ]; then
  # The proxy in a cargo run of its own: scripts/release.sh says why.
  log "scripts/release.sh"
  FERRY_GIT_COMMIT=$commit "$root/scripts/release.sh" >&2
  # .cargo/config.toml builds for the host triple by name.
  binaries="${CARGO_TARGET_DIR:-$root/target}/$(rustc -vV | sed -n 's/^host: //p')/release"
fi
[ -d "$binaries" ] || die "no such directory: $binaries"
binaries=$(cd "$binaries" && pwd)
for b in "${bins[@]}"; do
  if [ ! -f "$binaries/$b" ] || [ ! -x "$binaries/$b" ]; then die "$binaries/$b is missing or not executable"; fi
done

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- Debian root filesystem (cached) ------------------------------------------
# The "essential" variant plus these packages is the smallest set that
# works: dpkg, a shell and coreutils (Essential: yes) and iptables,
# ca-certificates with their dependencies. No apt in the image (minbase
# would add apt and ~25 MB). merged-usr: bookworm's layout (/bin -> usr/bin),
# and without the hook init-system-helpers pulls in usrmerge and Perl.
# Documentation, man pages and locales are not unpacked (copyright files are
# kept), apt's lists and caches are removed (mmdebstrap's cleanup), and with
# SOURCE_DATE_EPOCH mmdebstrap clamps times, empties /etc/machine-id and
# drops logs. The host's resolv.conf and hostname are not copied in: the
# container runtime provides both.
suite=bookworm
mirror=${FERRY_IMAGE_MIRROR:-http://deb.debian.org/debian}
security_mirror=${FERRY_IMAGE_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
debs=(iptables iproute2 ca-certificates)
sources=(
  "deb $mirror $suite main"
  "deb $mirror $suite-updates main"
  "deb $security_mirror $suite-security main"
)
# shellcheck disable=SC2016 # the hooks' "$1" is mmdebstrap's, not ours
mmdebstrap_args=(
  --variant=essential
  "--include=$(IFS=,; printf '%s' "${debs[*]}")"
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --aptopt='Acquire::Languages "none"'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
  --dpkgopt='path-exclude=/usr/share/doc-base/*'
  --customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"'
  --customize-hook='if [ -e "$1/etc/machine-id" ]; then : > "$1/etc/machine-id"; fi'
  --customize-hook='rm -rf "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old "$1"/var/log/*'
)
key=$(printf '%s\n' v1 "$suite" "${mmdebstrap_args[@]}" "${sources[@]}" | sha256sum | cut -c1-16)
rootfs_tar="$out/cache/rootfs-$suite-$key.tar"
if [ -s "$rootfs_tar" ]; then
  log "Debian root filesystem: $rootfs_tar (cached)"
else
  mkdir -p "$out/cache"
  log "Debian root filesystem: mmdebstrap $suite (${debs[*]}) from $mirror ..."
  mmlog="$out/cache/rootfs-$suite-$key.log"
  # A mirror that drops a connection should not fail the build: three
  # attempts, a pause between them.
  attempt=1
  until mmdebstrap --mode=root --format=tar "${mmdebstrap_args[@]}" \
      "$suite" "$work/rootfs.tar" "${sources[@]}" >"$mmlog" 2>&1; do
    if [ "$attempt" -ge 3 ]; then
      tail -n 40 "$mmlog" >&2
      die "mmdebstrap failed $attempt times (log: $mmlog)"
    fi
    log "mmdebstrap failed (attempt $attempt of 3); retrying in 10 s"
    rm -f "$work/rootfs.tar"
    attempt=$((attempt + 1))
    sleep 10
  done
  mv "$work/rootfs.tar" "$rootfs_tar"
  log "cached as $rootfs_tar"
fi

# --- OCI image ---------------------------------------------------------------
# A fresh layout every time (no stale blobs, same result for same inputs).
# Two layers, like the Dockerfile: Debian, then the binaries; a new Ferry
# version only changes the second.
layout="$out/oci"
image="$layout:$tag"
bundle="$work/bundle"
rootfs="$bundle/rootfs"
rm -rf "$layout"
umoci init --layout "$layout" >&2
umoci new --image "$image" >&2
umoci unpack --image "$image" "$bundle" >&2
# The image's /dev stays empty (the runtime mounts its own): no device nodes
# in a layer. apt is not installed, so its configuration and the empty
# list/cache directories mmdebstrap worked in are left out too.
tar -C "$rootfs" --numeric-owner --same-owner --xattrs --xattrs-include='*' \
  --exclude='./dev/*' --exclude=./etc/apt --exclude=./var/lib/apt \
  --exclude=./var/cache/apt -xpf "$rootfs_tar"

history=(--history.created "$created" --history.author "scripts/image.sh")
log "layer 1: Debian $suite (${debs[*]})"
umoci repack --image "$image" --refresh-bundle "${history[@]}" \
  --history.created_by "mmdebstrap --variant=essential --include=$(IFS=,; printf '%s' "${debs[*]}") $suite" \
  --history.comment "Debian $suite essential set with ${debs[*]}" "$bundle" >&2

# Debug information stays out of the image (symbols stay: backtraces keep
# their function names); the Dockerfile does the same.
command -v strip >/dev/null || die "strip (binutils) is needed"
for b in "${bins[@]}"; do
  install -o 0 -g 0 -m 0755 "$binaries/$b" "$rootfs/usr/local/bin/$b"
  strip --strip-debug "$rootfs/usr/local/bin/$b"
  touch -h -d "@$SOURCE_DATE_EPOCH" "$rootfs/usr/local/bin/$b"
done
touch -h -d "@$SOURCE_DATE_EPOCH" "$rootfs/usr/local/bin"

# Check the image holds what the proxy runs and that the binaries start
# there (bookworm's glibc, no missing library).
missing=()
for f in /usr/sbin/iptables-nft-restore /usr/sbin/iptables-nft-save \
  /usr/sbin/iptables-legacy-restore /usr/sbin/iptables-legacy-save \
  /usr/sbin/ip6tables-nft-restore /usr/sbin/ip6tables-nft-save /usr/bin/ip \
  /usr/sbin/ip6tables-legacy-restore /usr/sbin/ip6tables-legacy-save \
  /etc/ssl/certs/ca-certificates.crt; do
  [ -e "$rootfs$f" ] || missing+=("$f")
done
for b in "${bins[@]}"; do
  [ -x "$rootfs/usr/local/bin/$b" ] || missing+=("/usr/local/bin/$b")
done
[ ${#missing[@]} -eq 0 ] || die "the image's root filesystem lacks ${missing[*]}"
for b in "${bins[@]}"; do
  if ! v=$(chroot "$rootfs" "/usr/local/bin/$b" --version 2>&1); then
    die "/usr/local/bin/$b does not run in the image: $v"
  fi
  case "$v" in
    *"$commit"*) ;;
    *) log "warning: $b reports '$v', the image is labelled with commit $commit" ;;
  esac
done
for ipt in iptables-nft-restore iptables-legacy-restore; do
  chroot "$rootfs" "/usr/sbin/$ipt" --version >/dev/null 2>&1 || die "/usr/sbin/$ipt does not run in the image"
done

log "layer 2: ${bins[*]} from $binaries"
umoci repack --image "$image" "${history[@]}" \
  --history.created_by "COPY ${bins[*]} /usr/local/bin/" \
  --history.comment "Ferry $version ($commit)" "$bundle" >&2

# Same environment, working directory, command and labels as the Dockerfile.
umoci config --image "$image" --created "$created" "${history[@]}" \
  --history.created_by "config: PATH, WorkingDir /, Cmd ferry-proxy --help, labels" \
  --config.env 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --config.workingdir / \
  --config.cmd ferry-proxy --config.cmd --help \
  --config.label org.opencontainers.image.title=ferry \
  --config.label "org.opencontainers.image.description=Ferry service mesh: ${bins[*]}" \
  --config.label "org.opencontainers.image.source=$source_url" \
  --config.label "org.opencontainers.image.revision=$commit" \
  --config.label "org.opencontainers.image.version=$version" \
  --config.label org.opencontainers.image.licenses=Apache-2.0 >&2
umoci gc --layout "$layout" >&2

digest=$(jq -r --arg tag "$tag" \
  '[.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $tag) | .digest] | if length == 1 then .[0] else empty end' \
  "$layout/index.json")
[[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || die "no single manifest for tag $tag in $layout/index.json"

# One file for skopeo (oci-archive:) or podman load: the layout as a tar,
# entries sorted and with fixed owners, modes and times.
archive="$out/ferry-$tag.oci.tar"
tar -C "$layout" --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 \
  --numeric-owner --mode='u+rwX,go+rX,go-w' --format=gnu -cf "$archive.tmp" .
mv "$archive.tmp" "$archive"
log "$(du -sh "$layout" | cut -f1) in $layout (compressed layers)"

echo "image: $image"
echo "archive: $archive"
echo "digest: $digest"

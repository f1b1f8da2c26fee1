#!/bin/bash
# Runs pjdfstest (its Rust rewrite: `cargo install --locked pjdfstest`) on a read-write
# `vdisk mount` of a fresh ext4 image, as root with -o allow_other (without it FUSE answers
# EACCES to every step run as another user), over the suites issue 19 names; then unmounts and
# requires `e2fsck -fn` to find nothing. The kernel's own ext4 passes the same run (0 failed).
# Usage: scripts/pjdfstest.sh [--quick] [VDISK]   (VDISK defaults to target/release/vdisk)
# --quick runs only the suites that remove and replace files (unlink, open, rename, rmdir).
# Exit status: 0 when no check failed and e2fsck is clean, 1 otherwise, 2 when it cannot run.
set -u
quick=0; if [ "${1:-}" = --quick ]; then quick=1; shift; fi
V=$(realpath -m "${1:-target/release/vdisk}")
SUITES="unlink open rename link mkdir rmdir symlink chmod chown truncate ftruncate utimensat mknod mkfifo"
[ $quick = 1 ] && SUITES="unlink open rename rmdir"
export PATH="$PATH:/usr/sbin:/sbin:$HOME/.cargo/bin"
die() { echo "pjdfstest.sh: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (pjdfstest switches users and makes device nodes)"
[ -x "$V" ] || die "$V: no vdisk binary (cargo build --release -p vdisk-cli)"
command -v pjdfstest >/dev/null || die "pjdfstest is not installed (cargo install --locked pjdfstest)"
for u in nobody daemon bin; do getent passwd $u >/dev/null || die "no user $u"; done

T=$(mktemp -d)
# Other users must reach the mountpoint: mktemp makes the directory 0700.
chmod 755 "$T"
mounted=0
cleanup() {
  [ $mounted = 1 ] && { "$V" umount "$T/mnt" >/dev/null 2>&1 || umount -l "$T/mnt" 2>/dev/null; }
  rm -rf "$T"
}
trap cleanup EXIT
# Users that every Debian system has stand in for pjdfstest's dummy ones. naptime is above the
# kernel's coarse clock tick, so the host's ext4 passes the time checks too.
cat > "$T/pjdfstest.toml" <<'EOF'
[features]
utimensat = {}
utime_now = {}
rename_ctime = {}
[settings]
naptime = 0.02
allow_remount = false
[dummy_auth]
entries = [["nobody", "nogroup"], ["daemon", "daemon"], ["bin", "bin"]]
EOF
truncate -s 256M "$T/img"
mkfs.ext4 -q -F "$T/img" || die "mkfs.ext4 failed"
mkdir "$T/mnt"
"$V" mount -a "$T/img" --format raw -m /dev/sda -o allow_other "$T/mnt" || die "vdisk mount failed"
mounted=1
umask 022
start=$(date +%s)
# shellcheck disable=SC2086
(cd "$T/mnt" && timeout 600 pjdfstest -c "$T/pjdfstest.toml" -p "$T/mnt" $SUITES) > "$T/out" 2>&1
rc=$?
secs=$(( $(date +%s) - start ))
"$V" umount "$T/mnt" || { echo "pjdfstest.sh: vdisk umount failed" >&2; rc=1; }
mounted=0
grep -E 'FAILED$' "$T/out" | sed 's/  */ /g; s/^/pjdfstest.sh: /'
summary=$(grep '^Summary:' "$T/out")
[ -n "$summary" ] || { tail -20 "$T/out"; echo "pjdfstest.sh: pjdfstest did not finish (exit $rc)"; exit 1; }
echo "pjdfstest.sh: $summary (${secs}s)"
e2fsck -fn "$T/img" > "$T/fsck" 2>&1
frc=$?
complaints=$(grep -v -e '^e2fsck [0-9]' -e '^Pass [1-5]' -e "^$T/img: [0-9/]* files" -e '^$' "$T/fsck")
if [ $frc -ne 0 ] || [ -n "$complaints" ]; then
  cat "$T/fsck"
  echo "pjdfstest.sh: e2fsck -fn is not clean afterwards (exit $frc)"
  exit 1
fi
echo "pjdfstest.sh: e2fsck -fn clean"
grep -q '^Summary: 0 failed' <<< "$summary" || exit 1
exit 0

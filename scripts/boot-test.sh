#!/bin/bash
# The boot test of issue 16: a real Debian guest, built from Debian's packages with debootstrap,
# cloned by `vdisk clone` onto a qcow2 overlay with a hostname, a static address, a root password
# and a first-boot command, boots under qemu-system-x86_64 (TCG: no KVM needed) with its own
# kernel and initramfs. The serial console must then show the first-boot command's output (the
# hostname, the address on eth0), and root must log in on the serial getty with the password
# vdisk wrote. It is the one test that proves the guest accepts what vdisk writes.
#
# Usage: scripts/boot-test.sh [image|boot] [VDISK]
#   image  build (or reuse) the cached guest and print its directory: root.raw (a partitionless
#          ext4 image), vmlinuz, initrd.img. cli/tests/debian_guest.rs uses this.
#   boot   (the default) the boot test. VDISK defaults to target/release/vdisk, built if missing.
# Environment: DEBIAN_RELEASE (bookworm), DEBIAN_MIRROR (the host's apt mirror),
#   VDISK_GUEST_CACHE (target/guest-cache), BOOT_TIMEOUT (seconds for the boot, 600).
# The guest is built once per release and package set (8.5 minutes cold on this shared 2-core
# machine at load 20, most of it dpkg configuring and the initramfs), then reused;
# it takes about 350 MB on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

mode=${1:-boot}
RELEASE=${DEBIAN_RELEASE:-bookworm}
# The smallest set that boots with systemd and brings eth0 up from /etc/network/interfaces,
# which is what `vdisk customize --network-static` writes for a Debian guest that has it.
INCLUDE=linux-image-amd64,systemd-sysv,udev,ifupdown,iproute2
# Bumped when the build below changes, so a stale cache is not reused.
BUILD_REV=2
KEY=$(printf '%s\n' "$RELEASE" "$INCLUDE" "$BUILD_REV" | sha256sum | cut -c1-12)
CACHE_ROOT=${VDISK_GUEST_CACHE:-$PWD/target/guest-cache}
CACHE=$CACHE_ROOT/debian-$RELEASE-$KEY

log() { echo "boot-test: $*" >&2; }
die() { log "$*"; exit 1; }

# The Debian mirror apt uses here (deb822 .sources or one-line sources.list), else Debian's CDN.
mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local m
  m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }')
  [ -n "$m" ] || m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }')
  echo "${m:-http://deb.debian.org/debian}"
}

# Builds the guest into $CACHE (under a lock, so a concurrent run waits and then reuses it).
build() {
  mkdir -p "$CACHE_ROOT"
  exec 9> "$CACHE_ROOT/.lock"
  flock 9
  if [ -f "$CACHE/done" ]; then return; fi
  command -v debootstrap >/dev/null || die "debootstrap is not installed (run .ci/run)"
  [ "$(id -u)" = 0 ] || die "building the guest needs root (debootstrap, mkfs.ext4 -d owners)"
  rm -rf "$CACHE" "$CACHE.tmp"
  local t=$CACHE.tmp root=$CACHE.tmp/root start=$SECONDS
  mkdir -p "$t"
  # debootstrap mounts /proc and /sys in the tree; take them down whatever happens.
  trap 'umount -R "'"$root"'/proc" "'"$root"'/sys" 2>/dev/null; rm -rf --one-file-system "'"$t"'"' EXIT
  log "debootstrap $RELEASE from $(mirror) (cached in $CACHE)"
  # In two stages, so that dpkg runs with force-unsafe-io (no fsync per package: this is a
  # throw-away tree that mkfs.ext4 -d copies, and fsync dominates on a busy shared disk).
  if ! debootstrap --foreign --variant=minbase --include="$INCLUDE" "$RELEASE" "$root" \
    "$(mirror)" > "$t/debootstrap.log" 2>&1; then
    tail -20 "$t/debootstrap.log" >&2
    die "debootstrap failed (log above)"
  fi
  log "debootstrap's first stage (download, unpack) took $((SECONDS - start)) s"
  mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
  echo force-unsafe-io > "$root/etc/dpkg/dpkg.cfg.d/unsafe-io"
  if ! chroot "$root" /debootstrap/debootstrap --second-stage >> "$t/debootstrap.log" 2>&1; then
    tail -20 "$t/debootstrap.log" >&2
    die "debootstrap --second-stage failed (log above)"
  fi
  rm "$root/etc/dpkg/dpkg.cfg.d/unsafe-io"
  log "debootstrap took $((SECONDS - start)) s"
  # What a template has that debootstrap does not write: a root entry in fstab, a hostname
  # of its own (debootstrap copies the host's).
  echo '/dev/vda / ext4 errors=remount-ro 0 1' > "$root/etc/fstab"
  echo debian-template > "$root/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\tdebian-template\n' > "$root/etc/hosts"
  # Keep the image small: package archives, docs, and the kernel modules a virtio guest never
  # loads (the initramfs is already built, from the full set).
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
  local kver
  kver=$(basename "$(ls -d "$root"/lib/modules/* | head -1)")
  local mods=$root/lib/modules/$kver/kernel
  rm -rf "$mods"/sound "$mods"/net/{bluetooth,wireless,mac80211} \
    "$mods"/drivers/{gpu,media,infiniband,staging,usb,hid,iio,input,isdn,mtd,bluetooth,hwmon} \
    "$mods"/drivers/{thunderbolt,scsi,md,platform,comedi,target,misc,watchdog} \
    "$mods"/drivers/net/{wireless,ethernet,usb,can}
  chroot "$root" depmod "$kver"
  cp "$root/boot/vmlinuz-$kver" "$t/vmlinuz"
  cp "$root/boot/initrd.img-$kver" "$t/initrd.img"
  local mb
  mb=$(du -sxm "$root" | cut -f1)
  mkfs.ext4 -q -F -L debian-root -d "$root" "$t/root.raw" "$((mb * 13 / 10 + 256))M" >&2
  e2fsck -fn "$t/root.raw" > /dev/null 2>&1 || die "e2fsck of the freshly built guest failed"
  echo "$kver" > "$t/kernel-version"
  cp "$t/debootstrap.log" "$t/build.log"
  rm -rf "$root"
  trap - EXIT
  mv "$t" "$CACHE"
  touch "$CACHE/done"
  log "guest built in $((SECONDS - start)) s: $(du -sh --apparent-size "$CACHE/root.raw" | cut -f1) image, $(du -sh "$CACHE/root.raw" | cut -f1) used"
}

# Waits until the console log holds $1 (fixed text); fails after the deadline, when qemu ended,
# or as soon as the log holds $2 (when given).
wait_for() {
  while ! grep -qF -- "$1" "$W/console.log" 2>/dev/null; do
    if [ -n "${2:-}" ] && grep -qF -- "$2" "$W/console.log"; then
      tail -20 "$W/console.log" >&2; die "\"$2\" on the console while waiting for \"$1\""
    fi
    [ "$SECONDS" -lt "$deadline" ] || { tail -40 "$W/console.log" >&2; die "no \"$1\" on the console within ${BOOT_TIMEOUT}s"; }
    kill -0 "$qpid" 2>/dev/null || { tail -40 "$W/console.log" >&2; die "qemu ended before \"$1\" showed"; }
    sleep 1
  done
}

boot() {
  build
  local VDISK=${1:-target/release/vdisk}
  if [ ! -x "$VDISK" ]; then
    cargo build --release -q -p vdisk-cli --bin vdisk
    VDISK=target/release/vdisk
  fi
  command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is not installed (run .ci/run)"
  W=$(mktemp -d "$CACHE_ROOT/boot.XXXXXX")
  # The console log is kept (target/guest-cache/boot-console.log) for whoever reads a failure.
  trap '[ -n "${qpid:-}" ] && kill "$qpid" 2>/dev/null; cp "$W/console.log" "$CACHE_ROOT/boot-console.log" 2>/dev/null; rm -rf "$W"' EXIT
  local sum0
  sum0=$(stat -c '%s %Y' "$CACHE/root.raw")
  # The first-boot command prints what the test looks for; $((6*7)) keeps the marker out of the
  # script's name, which the runner also prints.
  "$VDISK" clone --format raw "$CACHE/root.raw" "$W/guest.qcow2" \
    --hostname vdisk-boot \
    --network-static eth0=10.0.2.15/24,gw=10.0.2.2,dns=10.0.2.3 \
    --root-password 'password:Boot Test 1' \
    --firstboot-command 'echo FIRSTBOOT-$((6*7)) host=$(hostname); ip -4 addr show dev eth0' \
    > "$W/clone.log" 2>&1 || { cat "$W/clone.log" >&2; die "vdisk clone failed"; }
  sed 's/^/boot-test: clone: /' "$W/clone.log" >&2
  [ "$(stat -c '%s %Y' "$CACHE/root.raw")" = "$sum0" ] || die "vdisk clone wrote the template"
  mkfifo "$W/in"
  local start=$SECONDS
  deadline=$((SECONDS + ${BOOT_TIMEOUT:-600}))
  # panic=-1 with -no-reboot: a kernel panic ends qemu instead of hanging until the deadline.
  timeout "${BOOT_TIMEOUT:-600}" qemu-system-x86_64 -accel tcg -m 512 -smp 1 \
    -display none -monitor none -no-reboot -serial stdio \
    -kernel "$CACHE/vmlinuz" -initrd "$CACHE/initrd.img" \
    -append "root=/dev/vda console=ttyS0 net.ifnames=0 panic=-1" \
    -drive "file=$W/guest.qcow2,format=qcow2,if=virtio" \
    -netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0 \
    < "$W/in" > "$W/console.log" 2>&1 &
  qpid=$!
  exec 3> "$W/in"
  wait_for "FIRSTBOOT-42 host=vdisk-boot"
  log "first-boot command ran after $((SECONDS - start)) s"
  wait_for "inet 10.0.2.15/24"
  wait_for "vdisk-boot login:"
  log "login prompt after $((SECONDS - start)) s"
  printf 'root\r' >&3
  wait_for "Password:"
  printf 'Boot Test 1\r' >&3
  wait_for "root@vdisk-boot:" "Login incorrect"
  printf 'echo LOGIN-$((6*7)) $(id -un)@$(hostname); poweroff\r' >&3
  wait_for "LOGIN-42 root@vdisk-boot"
  local rc=0
  wait "$qpid" || rc=$?
  qpid=""
  [ "$rc" = 0 ] || { tail -40 "$W/console.log" >&2; die "qemu exited with $rc (124: timeout)"; }
  log "powered off after $((SECONDS - start)) s; the console showed:"
  tr -d '\r' < "$W/console.log" | grep -E 'FIRSTBOOT-42|inet 10\.0\.2\.15|login:|LOGIN-42|Running 0001' |
    grep -v '^echo' | sed 's/^/boot-test:   /' >&2
  # After the guest's shutdown, read back with vdisk what the guest wrote to the overlay: the
  # runner's log holds the command's output, and the queue is empty, so it never runs again.
  local fblog left
  fblog=$("$VDISK" cat --format qcow2 -a "$W/guest.qcow2" /root/virt-sysprep-firstboot.log) ||
    die "vdisk cat of the guest's first-boot log failed"
  grep -qF "FIRSTBOOT-42 host=vdisk-boot" <<< "$fblog" || die "first-boot log: $fblog"
  left=$("$VDISK" ls --format qcow2 -a "$W/guest.qcow2" /usr/lib/virt-sysprep/scripts) ||
    die "vdisk ls of the first-boot queue failed"
  [ -z "$left" ] || die "first-boot scripts still queued after the boot: $left"
  log "ok"
}

case $mode in
  image) build; echo "$CACHE" ;;
  boot) boot "${2:-}" ;;
  *) die "usage: scripts/boot-test.sh [image|boot] [VDISK]" ;;
esac

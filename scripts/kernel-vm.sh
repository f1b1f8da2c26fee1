#!/usr/bin/env bash
# A real Linux kernel under qemu, as a test oracle where the host kernel lacks a driver (no vfat
# here) or a test must boot a guest. Software emulation (TCG) is enough: no /dev/kvm needed.
#
#   kernel-vm.sh fetch CACHE [MODULE...]
#       Debian's current linux-image-amd64, fetched with `apt-get download` into CACHE and unpacked
#       there without installing it (no initramfs hooks, host untouched): the kernel and the named
#       modules with everything they depend on. Prints the kernel version directory
#       (CACHE/<version>, holding vmlinuz and lib/modules/<version>/...). Cached: a second call
#       downloads nothing while the package is current.
#   kernel-vm.sh initramfs OUT --run SCRIPT [--kdir DIR] [--module NAME]... [--add SRC:DST]...
#       A newc cpio with busybox-static, the modules (from DIR, as fetch left it) and an /init
#       that mounts proc/sys/dev, loads the modules in dependency order, runs SCRIPT with its
#       standard output on the second serial port (/dev/ttyS1, raw) between the markers
#       VDISK-VM-BEGIN and VDISK-VM-END <exit code>, and powers off.
#   kernel-vm.sh run --kernel K --initrd I --out FILE [--disk IMG[:ro]]... [--timeout S]
#                    [--append ARGS] [--mem MB]
#       Boots; the disks are virtio (/dev/vda, vdb, ... in order). The kernel console goes to
#       FILE.console; what SCRIPT printed (between the markers) to FILE. Exits with SCRIPT's
#       code, or 124 when the guest did not finish within S seconds (default 120; qemu is
#       killed), or 125 when it stopped without the end marker. Any guest works that writes the
#       markers to its second serial port (e.g. a Debian guest booted with its own kernel, initrd
#       and --append 'root=/dev/vda1'). Software emulation unless KERNEL_VM_ACCEL says otherwise
#       (KERNEL_VM_ACCEL=kvm: this machine has a /dev/kvm, but a guest on it hung at boot).
set -euo pipefail

die() {
  echo "kernel-vm: $*" >&2
  exit 1
}

# The module file of NAME below DIR (names compare with - and _ alike, as the kernel does).
mod_file() {
  local dir=$1 want=${2//-/_} f base
  while IFS= read -r f; do
    base=$(basename "$f" .ko)
    [ "${base//-/_}" = "$want" ] && {
      echo "$f"
      return 0
    }
  done < <(find "$dir" -name '*.ko')
  return 1
}

# The modules NAME depends on, from the depends= field of its .modinfo section.
mod_deps() {
  grep -a -o 'depends=[A-Za-z0-9_,-]*' "$1" | head -n1 | cut -d= -f2 | tr ',' ' '
}

cmd_fetch() {
  local cache=${1:?fetch CACHE [MODULE...]}
  shift
  mkdir -p "$cache"
  cache=$(cd "$cache" && pwd)
  # One fetch at a time per cache (tests run in parallel).
  exec 9>"$cache/.lock"
  flock 9
  # The versioned package the metapackage points at (apt-cache needs the lists; refresh once).
  local pkg
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
  if [ -z "$pkg" ]; then
    apt-get update -q >/dev/null
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
  fi
  [ -n "$pkg" ] || die "apt-cache knows no linux-image-amd64"
  local ver=${pkg#linux-image-}
  local kdir=$cache/$ver
  local mods=$kdir/lib/modules/$ver/kernel
  local need=()
  [ -f "$kdir/vmlinuz" ] || need=(vmlinuz)
  local m
  for m in "$@"; do
    [ -d "$mods" ] && mod_file "$mods" "$m" >/dev/null || need+=("$m")
  done
  if ((${#need[@]})); then
    local tmp
    tmp=$(mktemp -d "$cache/dl.XXXXXX")
    # apt-get download as root drops to _apt, which must be able to write here.
    chmod 777 "$tmp"
    if ! (cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>"$tmp/err"); then
      # A superseded security version leaves the mirror: refresh the lists and retry once.
      apt-get update -q >/dev/null
      (cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>"$tmp/err") ||
        die "apt-get download $pkg: $(tail -n1 "$tmp/err")"
    fi
    local deb
    deb=$(ls "$tmp"/*.deb)
    mkdir -p "$kdir"
    # Only the modules asked for and what they depend on (a few hundred kB, not the 400 MB
    # of the whole tree): unpack by name, read their depends=, repeat until closed.
    dpkg-deb -c "$deb" | awk '{print $NF}' | grep -E '\.ko(\.xz|\.zst)?$' >"$tmp/list"
    local want=("$@") have=" " paths=("./boot/vmlinuz-$ver") n f
    while :; do
      for n in "${want[@]}"; do
        n=${n//-/_}
        case $have in *" $n "*) continue ;; esac
        have+="$n "
        f=$(awk -v n="$n" '{b=$0; sub(/.*\//, "", b); sub(/\.ko(\.xz|\.zst)?$/, "", b); gsub(/-/, "_", b); if (b == n) {print; exit}}' "$tmp/list")
        [ -n "$f" ] || die "$pkg has no module $n"
        paths+=("$f")
      done
      want=()
      ((${#paths[@]})) || break
      # Each pass unpacks the whole archive: the kernel comes along with the first one.
      dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$kdir" "${paths[@]}"
      for f in "${paths[@]}"; do
        # Newer Debian kernels compress their modules; busybox's insmod wants them plain.
        case $f in
        *.ko.xz) xz -d -f "$kdir/$f" && f=${f%.xz} ;;
        *.ko.zst) zstd -q -d --rm -f "$kdir/$f" && f=${f%.zst} ;;
        esac
        # shellcheck disable=SC2207
        case $f in *.ko) want+=($(mod_deps "$kdir/$f")) ;; esac
      done
      paths=()
    done
    if [ -f "$kdir/boot/vmlinuz-$ver" ]; then
      mv "$kdir/boot/vmlinuz-$ver" "$kdir/vmlinuz"
      rmdir "$kdir/boot"
    fi
    rm -rf "$tmp"
    # Older versions in the cache are stale once the mirror moved on.
    find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$ver" ! -name 'dl.*' -exec rm -rf {} +
  fi
  for m in "$@"; do
    mod_file "$mods" "$m" >/dev/null || die "$pkg has no module $m"
  done
  echo "$kdir"
}

# Appends NAME and (first) its dependencies to the load order in $order, once each.
order=()
add_mod() {
  local mods=$1 name=${2//-/_} f d o
  for o in "${order[@]}"; do
    [ "$(basename "$o" .ko | tr - _)" = "$name" ] && return 0
  done
  f=$(mod_file "$mods" "$name") || die "no module $name below $mods"
  for d in $(mod_deps "$f"); do
    add_mod "$mods" "$d"
  done
  order+=("$f")
}

cmd_initramfs() {
  local out=${1:?initramfs OUT --run SCRIPT ...}
  shift
  local run="" kdir="" adds=() names=()
  while (($#)); do
    case $1 in
    --run) run=$2; shift 2 ;;
    --kdir) kdir=$2; shift 2 ;;
    --module) names+=("$2"); shift 2 ;;
    --add) adds+=("$2"); shift 2 ;;
    *) die "initramfs: unknown argument $1" ;;
    esac
  done
  [ -f "$run" ] || die "initramfs: --run SCRIPT is required"
  local bb
  bb=$(command -v busybox) || die "busybox (busybox-static) is not installed"
  case "$(ldd "$bb" 2>&1 || true)" in
  *"not a dynamic"* | *"statically linked"*) ;;
  *) die "$bb is not static (install busybox-static)" ;;
  esac
  local root
  root=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$root'" RETURN
  mkdir -p "$root"/{bin,dev,proc,sys,mnt,tmp,lib/modules}
  cp "$bb" "$root/bin/busybox"
  if ((${#names[@]})); then
    [ -n "$kdir" ] || die "initramfs: --module needs --kdir"
    local n f
    for n in "${names[@]}"; do
      add_mod "$kdir/lib/modules" "$n"
    done
    for f in "${order[@]}"; do
      cp "$f" "$root/lib/modules/"
      basename "$f" >>"$root/lib/modules/order"
    done
  fi
  : >>"$root/lib/modules/order"
  cp "$run" "$root/run.sh"
  local a
  for a in "${adds[@]}"; do
    mkdir -p "$root/$(dirname "${a#*:}")"
    cp -r "${a%%:*}" "$root/${a#*:}"
  done
  cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do
  insmod "/lib/modules/$m" || echo "kernel-vm: insmod $m failed"
done
# Wait (bounded) for the virtio disks to appear.
i=0
while [ ! -e /dev/vda ] && [ $i -lt 50 ] && grep -q virtio /proc/modules; do
  sleep 0.1
  i=$((i + 1))
done
stty -F /dev/ttyS1 raw -echo
{
  echo VDISK-VM-BEGIN
  sh /run.sh
  rc=$?
  sync
  echo "VDISK-VM-END $rc"
} >/dev/ttyS1 2>&1
poweroff -f
EOF
  chmod 755 "$root/init" "$root/run.sh"
  (cd "$root" && find . | sort | busybox cpio -o -H newc 2>/dev/null) >"$out"
}

cmd_run() {
  local kernel="" initrd="" out="" timeout=120 append="" mem=256 drives=()
  while (($#)); do
    case $1 in
    --kernel) kernel=$2; shift 2 ;;
    --initrd) initrd=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --append) append=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --disk)
      local img=${2%:ro} ro=""
      [ "$img" != "$2" ] && ro=",readonly=on"
      [ -f "$img" ] || die "no disk image $img"
      drives+=(-drive "file=$img,format=raw,if=virtio$ro")
      shift 2
      ;;
    *) die "run: unknown argument $1" ;;
    esac
  done
  [ -f "$kernel" ] && [ -f "$initrd" ] && [ -n "$out" ] || die "run: --kernel, --initrd and --out are required"
  local accel=tcg
  [ -n "${KERNEL_VM_ACCEL:-}" ] && accel=$KERNEL_VM_ACCEL
  : >"$out"
  local rc=0
  timeout --kill-after=5 "$timeout" qemu-system-x86_64 -machine "q35,accel=$accel" -m "$mem" \
    -nographic -no-reboot -nodefaults -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 loglevel=4 panic=-1 $append" \
    -chardev "file,id=con,path=$out.console" -serial chardev:con \
    -chardev "file,id=res,path=$out.raw" -serial chardev:res \
    "${drives[@]}" </dev/null >/dev/null 2>"$out.qemu" || rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "kernel-vm: the guest did not finish within ${timeout}s; console tail:" >&2
    tail -n 20 "$out.console" >&2
    return 124
  fi
  [ "$rc" = 0 ] || die "qemu exited $rc: $(tail -n 3 "$out.qemu")"
  local end
  end=$(grep -a '^VDISK-VM-END ' "$out.raw" | tail -n1 | cut -d' ' -f2 | tr -d '\r')
  if [ -z "$end" ]; then
    echo "kernel-vm: the guest stopped without the end marker; console tail:" >&2
    tail -n 20 "$out.console" >&2
    return 125
  fi
  sed -n '/^VDISK-VM-BEGIN$/,/^VDISK-VM-END /{/^VDISK-VM-BEGIN$/d;/^VDISK-VM-END /d;p}' "$out.raw" >"$out"
  return "$end"
}

case ${1:-} in
fetch | initramfs | run)
  c=$1
  shift
  "cmd_$c" "$@"
  ;;
*) die "usage: kernel-vm.sh fetch|initramfs|run ... (see the comment at the top)" ;;
esac

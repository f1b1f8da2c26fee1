#!/usr/bin/env bash
# The everyday job, end to end, on images this script makes itself (no image of your own, no root,
# no FUSE): a raw template with an ext4 guest, a qcow2 overlay on it, the overlay's ifcfg-eth0 and
# hostname edited without a VM, the template shown untouched, the overlay flattened, checked and
# snapshotted. Needs mkfs.ext4 and e2fsck (e2fsprogs) for building the template and judging it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
for tool in mkfs.ext4 e2fsck; do
  command -v "$tool" >/dev/null || { echo "demo: $tool not found: apt-get install e2fsprogs" >&2; exit 1; }
done

cargo build --release -q -p vdisk-cli
vdisk() { echo "+ vdisk $*" >&2; "$PWD/target/release/vdisk" "$@"; }

work=$(mktemp -d "${TMPDIR:-/tmp}/vdisk-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT

# A small CentOS-like guest tree, made into the template's filesystem by mkfs.ext4 -d.
root=$work/root
mkdir -p "$root/etc/sysconfig/network-scripts"
printf 'NAME="CentOS Linux"\nVERSION="7 (Core)"\nID="centos"\nVERSION_ID="7"\n' >"$root/etc/os-release"
echo template >"$root/etc/hostname"
printf 'DEVICE=eth0\nBOOTPROTO=static\nIPADDR=192.168.174.10\nPREFIX=24\nONBOOT=yes\n' \
  >"$root/etc/sysconfig/network-scripts/ifcfg-eth0"

vdisk create -q -f raw "$work/template.raw" 64M
mkfs.ext4 -q -F -L root -d "$root" "$work/template.raw"
vdisk create -q -f qcow2 -b "$work/template.raw" -F raw "$work/test02.qcow2"

ifcfg=/etc/sysconfig/network-scripts/ifcfg-eth0
vdisk edit -a "$work/test02.qcow2" -m /dev/sda -e 's/^IPADDR=.*/IPADDR=192.168.174.13/' "$ifcfg"
echo test02 | vdisk write -a "$work/test02.qcow2" -m /dev/sda /etc/hostname
vdisk cat -a "$work/test02.qcow2" -m /dev/sda "$ifcfg" /etc/hostname
echo "--- the template is untouched:" >&2
vdisk cat -a "$work/template.raw" --format raw -m /dev/sda "$ifcfg" /etc/hostname

vdisk info "$work/test02.qcow2"
vdisk convert -p -f qcow2 -O raw "$work/test02.qcow2" "$work/test02.raw"
echo "+ e2fsck -fn test02.raw" >&2
e2fsck -fn "$work/test02.raw" >/dev/null && echo "e2fsck: the flattened guest filesystem is clean"
vdisk snapshot -c os_init "$work/test02.qcow2"
vdisk snapshot -l "$work/test02.qcow2"
vdisk check "$work/test02.qcow2"

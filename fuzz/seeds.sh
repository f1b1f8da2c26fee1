#!/usr/bin/env bash
# Builds the seed corpora in fuzz/corpus/<target>/ from images made by the real tools
# (qemu-img, qemu-io, sfdisk, mkfs.*, pvcreate/vgcfgrestore). Every seed is at most 1 MiB.
# Needs root for the LVM seed (a loop device); the rest runs unprivileged.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
here="$(cd "$(dirname "$0")" && pwd)"
corpus="$here/corpus"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
mkdir -p "$corpus"/{qcow2_open_read,qcow2_snapshot,qcow2_rw,probe_open,partition_table,lvm,detect,guest,ext4_read,ext4_write}

q() { qemu-img "$@" >/dev/null; }
io() { qemu-io -f qcow2 "$@" >/dev/null; }
# put NAME TARGET...: copy ./NAME into each target's corpus (after checking its size).
put() {
  local f="$1"; shift
  local size; size=$(stat -c %s "$f")
  if ((size > 1048576)); then echo "seeds: $f is $size bytes, over 1 MiB" >&2; exit 1; fi
  for t in "$@"; do cp "$f" "$corpus/$t/$(basename "$f")"; done
}

# --- qcow2: versions, cluster sizes, extended L2, refcount widths, compression, snapshots,
# bitmaps, backing files, external data files.
q create -f raw base.raw 256K
qemu-io -f raw -c 'write -P 0x11 0 256K' base.raw >/dev/null
for spec in "v2:compat=0.10,cluster_size=512" "v3-512:cluster_size=512" \
            "v3-4k:cluster_size=4096" "v3-64k:cluster_size=65536" \
            "ext-l2:cluster_size=16384,extended_l2=on" "rc1:cluster_size=4096,refcount_bits=1" \
            "rc64:cluster_size=4096,refcount_bits=64" "lazy:cluster_size=4096,lazy_refcounts=on" \
            "zstd:cluster_size=4096,compression_type=zstd"; do
  name="${spec%%:*}"; opts="${spec#*:}"
  q create -f qcow2 -o "$opts" "$name.qcow2" 1M
  io -c 'write -P 0xaa 0 8K' -c 'write -z 64K 8K' -c 'write -P 0x55 300K 1K' "$name.qcow2"
  put "$name.qcow2" qcow2_open_read probe_open
done
# Compressed clusters, zlib and zstd.
q convert -c -O qcow2 -o cluster_size=4096 base.raw zlib-c.qcow2
q convert -c -O qcow2 -o cluster_size=4096,compression_type=zstd base.raw zstd-c.qcow2
put zlib-c.qcow2 qcow2_open_read
put zstd-c.qcow2 qcow2_open_read
# Backing file with its format, and a backing file without one.
q create -f qcow2 -o cluster_size=4096 -b base.raw -F raw over.qcow2
io -c 'write -P 0x22 4K 4K' over.qcow2
put over.qcow2 qcow2_open_read probe_open
q create -f qcow2 -o cluster_size=4096 -u -b /etc/passwd -F raw noformat.qcow2 64K
# Drop the backing format extension (0xe2792aca), leaving a bare name.
python3 - noformat.qcow2 <<'PY'
import sys
p = sys.argv[1]; d = bytearray(open(p, 'rb').read())
i = d.find(bytes.fromhex('e2792aca'))
d[i:i + 4] = bytes(4)
open(p, 'wb').write(d)
PY
put noformat.qcow2 qcow2_open_read probe_open
# External data file.
q create -f qcow2 -o cluster_size=4096,data_file=data.raw,data_file_raw=on datafile.qcow2 64K
put datafile.qcow2 qcow2_open_read
# Snapshots.
for cs in 512 4096; do
  q create -f qcow2 -o cluster_size=$cs snap$cs.qcow2 128K
  io -c 'write -P 1 0 4K' snap$cs.qcow2
  q snapshot -c first snap$cs.qcow2
  io -c 'write -P 2 0 2K' -c 'write -P 3 64K 4K' snap$cs.qcow2
  q snapshot -c second snap$cs.qcow2
  q resize snap$cs.qcow2 192K
  q snapshot -c third snap$cs.qcow2
  put snap$cs.qcow2 qcow2_open_read qcow2_snapshot
done
# Persistent bitmaps.
q create -f qcow2 -o cluster_size=4096 bitmap.qcow2 256K
q bitmap --add bitmap.qcow2 b0
q bitmap --add -g 65536 bitmap.qcow2 b1
put bitmap.qcow2 qcow2_open_read
# Raw images for probing, one of them with a qcow2 header at the start.
head -c 4096 /dev/urandom > random.raw
head -c 512 over.qcow2 > qcow2-head.raw
put random.raw probe_open
put qcow2-head.raw probe_open

# --- partition tables: MBR with logical partitions, GPT, protective MBR, hybrid.
truncate -s 128K mbr.img
printf 'label: dos\nstart=8, size=40, type=83\nstart=48, size=150, type=5\nstart=56, size=30, type=83\nstart=96, size=40, type=82\n' \
  | sfdisk -q --no-reread --no-tell-kernel mbr.img >/dev/null
put mbr.img partition_table guest detect
truncate -s 128K gpt.img
printf 'label: gpt\nfirst-lba: 34\nstart=34, size=40, name=one\nstart=80, size=100\n' \
  | sfdisk -q --no-reread --no-tell-kernel gpt.img >/dev/null
put gpt.img partition_table guest

# --- filesystems and signatures (heads of bigger images for the big ones).
mkdir -p tree/dir/sub
echo hello > tree/hello.txt
head -c 5000 /dev/urandom > tree/dir/blob
ln -s hello.txt tree/link
ln -s "$(printf 'x%.0s' {1..100})" tree/dir/longlink
for i in $(seq 1 40); do : > "tree/dir/sub/file-with-a-long-name-$i"; done
mkfe() { mkfs.ext4 -q -F -E root_owner=0:0 "$@" >/dev/null 2>&1; }
truncate -s 512K ext4.img && mkfe -b 1024 -N 64 -d tree ext4.img
truncate -s 512K ext4-64.img && mkfe -b 1024 -N 64 -O 64bit,metadata_csum -d tree ext4-64.img
truncate -s 512K ext4-inline.img && mkfe -b 1024 -N 64 -I 256 -O inline_data -d tree ext4-inline.img
truncate -s 512K ext2.img && mkfs.ext2 -q -F -b 1024 -N 64 -d tree ext2.img >/dev/null 2>&1
truncate -s 768K ext3.img && mkfs.ext3 -q -F -b 1024 -N 64 -J size=1 -d tree ext3.img >/dev/null 2>&1 || rm -f ext3.img
truncate -s 512K ext4-htree.img && mkfe -b 1024 -N 64 -d tree ext4-htree.img && (e2fsck -fyD ext4-htree.img >/dev/null 2>&1 || true)
for f in ext4 ext4-64 ext4-inline ext2 ext4-htree ext3; do
  [ -f $f.img ] && put $f.img ext4_read detect guest
done
truncate -s 256K vfat.img && mkfs.vfat -n VFATLBL vfat.img >/dev/null && put vfat.img detect guest
truncate -s 64K swap.img && mkswap -L swp swap.img >/dev/null 2>&1 && put swap.img detect
truncate -s 8M ntfs.img && (mkfs.ntfs -q -F -L nt ntfs.img >/dev/null 2>&1 && head -c 64K ntfs.img > ntfs-head.img && put ntfs-head.img detect || true)
truncate -s 200M btrfs.img && (mkfs.btrfs -q -L bt btrfs.img >/dev/null 2>&1 && head -c 128K btrfs.img > btrfs-head.img && put btrfs-head.img detect || true)
rm -f btrfs.img ntfs.img
# An MBR disk whose first partition holds an ext4 filesystem.
truncate -s 640K disk.img
printf 'label: dos\nstart=64, size=1024, type=83\n' | sfdisk -q --no-reread --no-tell-kernel disk.img >/dev/null
dd if=ext4.img of=disk.img bs=512 seek=64 conv=notrunc status=none
put disk.img guest partition_table

# --- LVM: a real PV made by pvcreate --restorefile + vgcfgrestore on a loop device (its head:
# label and metadata), and the metadata text itself.
cat > meta.vg <<'VG'
contents = "Text Format Volume Group"
version = 1
vg {
	id = "aaaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"
	seqno = 3
	format = "lvm2"
	status = ["RESIZEABLE", "READ", "WRITE"]
	flags = []
	extent_size = 8
	max_lv = 0
	max_pv = 0
	metadata_copies = 0
	physical_volumes {
		pv0 {
			id = "bbbbbb-bbbb-bbbb-bbbb-bbbb-bbbb-bbbbbb"
			device = "LOOPDEV"
			status = ["ALLOCATABLE"]
			flags = []
			dev_size = 8192
			pe_start = 2048
			pe_count = 100
		}
	}
	logical_volumes {
		root {
			id = "cccccc-cccc-cccc-cccc-cccc-cccc-cccccc"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			segment_count = 2
			segment1 {
				start_extent = 0
				extent_count = 10
				type = "striped"
				stripe_count = 1
				stripes = [ "pv0", 0 ]
			}
			segment2 {
				start_extent = 10
				extent_count = 5
				type = "striped"
				stripe_count = 1
				stripes = [ "pv0", 50 ]
			}
		}
		swap {
			id = "dddddd-dddd-dddd-dddd-dddd-dddd-dddddd"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			segment_count = 1
			segment1 {
				start_extent = 0
				extent_count = 20
				type = "striped"
				stripe_count = 1
				stripes = [ "pv0", 20 ]
			}
		}
	}
}
VG
cp meta.vg meta.txt && put meta.txt lvm
if [ "$(id -u)" = 0 ] && command -v pvcreate >/dev/null; then
  truncate -s 4M pv.img
  loop=$(losetup -f --show pv.img)
  mkdir -p lvm-etc
  cat > lvm-etc/lvm.conf <<CONF
devices { filter = [ "a|^$loop\$|", "r|.*|" ] global_filter = [ "a|^$loop\$|", "r|.*|" ] obtain_device_list_from_udev = 0 use_devicesfile = 0 external_device_info_source = "none" hints = "none" }
global { locking_dir = "$work/lock" use_lvmlockd = 0 event_activation = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
backup { backup = 0 archive = 0 }
CONF
  sed "s|LOOPDEV|$loop|" meta.vg > meta-loop.vg
  (export LVM_SYSTEM_DIR="$work/lvm-etc" LVM_SUPPRESS_FD_WARNINGS=1
   pvcreate -ff -y --restorefile meta-loop.vg --uuid bbbbbb-bbbb-bbbb-bbbb-bbbb-bbbb-bbbbbb "$loop" >/dev/null 2>&1
   vgcfgrestore -f meta-loop.vg vg >/dev/null 2>&1) || true
  losetup -d "$loop"
  head -c 8K pv.img > pv-head.img
  put pv-head.img lvm guest detect
  # Two disks for the guest target: selector 1 (two disks), cut after 16 sectors.
  { printf '\x01\x10'; cat pv-head.img; cat mbr.img; } > guest-two.img
  put guest-two.img guest
fi
# The guest target takes one selector byte first: prefix the single-disk seeds with 0.
for f in "$corpus"/guest/*; do
  case "$(basename "$f")" in guest-two.img) continue ;; esac
  { printf '\x00'; cat "$f"; } > "$f.sel" && mv "$f.sel" "$f"
done
# --- the write targets: image seeds with operations appended (8 bytes each, seeded bytes;
# qcow2_rw takes 8 from the tail, ext4_write 16), two tails per image.
ops() {
  python3 -c 'import random, sys
r = random.Random(sys.argv[1])
sys.stdout.buffer.write(bytes(r.randrange(256) for _ in range(int(sys.argv[2]))))' "$1" "$2"
}
for f in "$corpus"/qcow2_open_read/*; do
  for s in 1 2; do { cat "$f"; ops "$(basename "$f")$s" 64; } > "$corpus/qcow2_rw/$(basename "$f").$s"; done
done
for f in "$corpus"/ext4_read/*; do
  for s in 1 2; do { cat "$f"; ops "$(basename "$f")$s" 128; } > "$corpus/ext4_write/$(basename "$f").$s"; done
done
# --- VHD and VDI: empty dynamic disks (their 2 MiB / 1 MiB blocks would pass the 1 MiB
# seed limit; the targets' writes allocate blocks), a small fixed VHD with data.
mkdir -p "$corpus"/{vhd_open_rw,vdi_open_rw}
q create -f raw vsrc.raw 256K
qemu-io -f raw -c 'write -P 0x3c 0 64K' vsrc.raw >/dev/null
q create -f vpc vhd-dynamic.vhd 8M
q create -f vpc -o force_size=on vhd-force.vhd 8M
q convert -f raw -O vpc -o subformat=fixed vsrc.raw vhd-fixed.vhd
put vhd-dynamic.vhd vhd_open_rw
put vhd-force.vhd vhd_open_rw
put vhd-fixed.vhd vhd_open_rw
q create -f vdi vdi-dynamic.vdi 3M
q create -f vdi -o static=on vdi-static.vdi 0
put vdi-dynamic.vdi vdi_open_rw
put vdi-static.vdi vdi_open_rw
# --- VHDX: the target patches its own template image (a crashed log), so seeds are patch
# records (flags, then area, offset u16, length, bytes): the saved regressions, and no patch.
mkdir -p "$corpus"/vhdx_open_rw
cp "$here"/regressions/vhdx_open_rw/* "$corpus"/vhdx_open_rw/
printf '\000' > "$corpus"/vhdx_open_rw/unpatched
printf '\001' > "$corpus"/vhdx_open_rw/unpatched-no-reseal
# --- QED: small clusters so a few tables fit the seed limit; one with data and a zero
# cluster, one over a raw backing file.
mkdir -p "$corpus"/qed_open_rw
q convert -f raw -O qed -o cluster_size=4k,table_size=2 vsrc.raw qed-data.qed
qemu-io -f qed -c 'write -z 128K 8K' qed-data.qed >/dev/null
q create -f qed -o cluster_size=4k,table_size=2 -b vsrc.raw -F raw qed-backing.qed
put qed-data.qed qed_open_rw
put qed-backing.qed qed_open_rw
echo "seeds: $(find "$corpus" -type f | wc -l) files in $corpus"

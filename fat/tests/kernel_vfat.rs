//! The kernel's vfat as the oracle, both ways, in one boot of a real Linux kernel under qemu
//! (scripts/kernel-vm.sh: Debian's kernel, software emulation; this machine's own kernel has
//! no vfat driver).
//!
//! - Our writer -> the kernel: on FAT12, FAT16 and FAT32 images made by mkfs.fat, a fixed
//!   sequence (long names, case variants, 8.3 names that collide, deep directories, a
//!   directory grown past one cluster and shrunk, renames, truncation, set times) and then
//!   the conformance suite's random operations, mirrored in its model. Our reader reopened
//!   must read exactly the model; the kernel, mounting each image read-only with default
//!   options, must show exactly what our reader shows: the same names with their case, kind
//!   and mode, owner, size, blocks, link count, access, modification and change times, and
//!   content (SHA-256).
//! - The kernel -> our reader: in the same boot the kernel writes a tree on three fresh
//!   mkfs.fat images, remounts them read-only and lists them the same way; our reader must
//!   show exactly that.
//!
//! - The kernel extends what our writer made: on copies of our three images it adds files
//!   (with 8.3 names that collide with ours) and directories everywhere, appends, removes
//!   and sets times; our reader must show exactly what the kernel then lists.
//!
//! Afterwards `fsck.fat -n` is clean on all nine images.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fsck_clean, mkfs, open_fat, run};
use sha2::{Digest, Sha256};
use vdisk_fs::{FileKind, FileSystem, FileSystemMut, Ino};
use vdisk_fs_conformance::{self as conf, describe, Kind, MNode, Model, Target};

/// What both sides show of one path: `stat -c '%f %u %g %s %b %X %Y %Z %h'` and the
/// SHA-256 of a file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    /// The whole mode in hex, as `%f` prints it.
    mode: String,
    uid: u32,
    gid: u32,
    size: u64,
    blocks: u64,
    atime: i64,
    mtime: i64,
    ctime: i64,
    nlink: u32,
    sha256: Option<String>,
}

/// A tree: paths as `find .` prints them ("." is the root) to what they show.
type Tree = BTreeMap<String, Stat>;

/// The modules the guest loads: virtio disks, vfat and the code pages its default options
/// name (codepage 437, iocharset ascii, utf8).
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
];

/// The guest's part: list the images we wrote (vda-vdc), then write a tree on the fresh
/// ones (vdd-vdf), remount them and list them.
const GUEST: &str = r#"
dump() {
  echo "DISK $1"
  cd /mnt
  stat -f -c 'STATFS %S %b %f %a %c %d %l' .
  echo STAT
  find . -exec stat -c '%f	%u	%g	%s	%b	%X	%Y	%Z	%h	%n' {} +
  echo SUM
  find . -type f -exec sha256sum {} +
  echo DONE
  cd /
}
for d in vda vdb vdc; do
  mount -t vfat -o ro /dev/$d /mnt || exit 10
  dump $d
  umount /mnt
done
write_tree() {
  local i n s
  mkdir -p "EFI/debian" "deep/a/b/c/d/e/f/g/h/i/j/k/l" "Mixed Case Dir/Sub"
  echo 'set timeout=5' > EFI/debian/grub.cfg
  head -c 100000 /dev/urandom > EFI/debian/shimx64.efi
  for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo "$i" > "Long File Name $i.txt"; done
  for n in lower.txt UPPER.TXT MiXeD.TxT readme README2 .hidden dots.in.name.tar.gz \
      12345678.123 "spaces in name" "ünïcödé" "a+b=c;d,e[f].txt" \
      "a very long name that needs more than two long-name entries to hold it all.bin"; do
    printf '%s' "$n" > "Mixed Case Dir/$n"
  done
  for s in 0 1 511 512 513 2047 2048 2049 4095 4096 4097 65536; do
    head -c $s /dev/urandom > "deep/a/b/c/d/e/f/g/h/i/j/k/l/size $s"
  done
  mkdir big
  i=0
  while [ $i -lt 150 ]; do : > "big/entry with a long name $i"; i=$((i + 1)); done
  i=0
  while [ $i -lt 140 ]; do rm "big/entry with a long name $i"; i=$((i + 1)); done
  touch -d '2001-02-03 04:05:06' EFI/debian/grub.cfg
  touch -d '1999-12-31 23:59:59' "Long File Name 1.txt"
  mv "Long File Name 3.txt" "deep/a/b/Renamed File.TXT"
  # Linux's vfat takes a rename that changes only the case for a no-op: go through a
  # second name.
  mv "Mixed Case Dir/lower.txt" "Mixed Case Dir/tmp"
  mv "Mixed Case Dir/tmp" "Mixed Case Dir/LOWER.txt"
  truncate -s 1000 EFI/debian/shimx64.efi
  chmod 555 "Mixed Case Dir/UPPER.TXT"
  mkdir gone; rmdir gone
}
# The kernel adds to what our writer made: files in every directory (long names, names
# whose 8.3 forms collide with ours), appends, removals, a new directory.
extend() {
  local n d f
  find . -type d | sort > /tmp/dirs
  n=0
  while IFS= read -r d; do
    n=$((n + 1))
    echo "k$n" > "$d/Long File Name added by the kernel $n.txt"
    echo "k$n" > "$d/Long File Name $n.txt.kernel"
    [ $((n % 3)) = 0 ] && mkdir "$d/kernel dir $n"
  done < /tmp/dirs
  find . -type f | sort > /tmp/files
  n=0
  while IFS= read -r f; do
    n=$((n + 1))
    case $((n % 5)) in
    0) rm "$f" ;;
    1) echo appended >> "$f" ;;
    2) touch -d '2010-06-07 08:09:10' "$f" ;;
    3) mv "$f" "$(dirname "$f")/RENAMED.$n" ;;
    4) chmod 555 "$f" ;;
    esac
  done < /tmp/files
  # Directories: some of ours moved into a new one (the kernel rewrites their ".."), the
  # empty ones among others removed (the kernel judges our directories empty or not).
  mkdir "moved here"
  n=0
  sort -r /tmp/dirs | while IFS= read -r d; do
    n=$((n + 1))
    [ "$d" = . ] && continue
    case $((n % 4)) in
    0) mv "$d" "moved here/" 2>/dev/null ;;
    1) rmdir "$d" 2>/dev/null ;;
    esac
  done
  return 0
}
for d in vdg vdh vdi; do
  mount -t vfat /dev/$d /mnt || exit 15
  cd /mnt
  extend || exit 16
  cd /
  umount /mnt || exit 17
  mount -t vfat -o ro /dev/$d /mnt || exit 18
  dump $d
  umount /mnt
done
for d in vdd vde vdf; do
  mount -t vfat /dev/$d /mnt || exit 11
  cd /mnt
  write_tree || exit 12
  cd /
  umount /mnt || exit 13
  mount -t vfat -o ro /dev/$d /mnt || exit 14
  dump $d
  umount /mnt
done
"#;

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// Parses the guest's output into one tree per disk.
fn parse(out: &str) -> BTreeMap<String, Tree> {
    let mut disks = BTreeMap::new();
    let mut lines = out.lines();
    while let Some(l) = lines.next() {
        let Some(disk) = l.strip_prefix("DISK ") else {
            continue;
        };
        let statfs = lines.next().and_then(|l| l.strip_prefix("STATFS "));
        let statfs = statfs.unwrap_or_else(|| panic!("guest output for {disk}: no STATFS"));
        assert_eq!(lines.next(), Some("STAT"), "guest output for {disk}");
        let mut tree = Tree::new();
        tree.insert(STATFS.into(), statfs_line(statfs));
        let mut l = lines.next().expect("guest output ends early");
        while l != "SUM" {
            let f: Vec<&str> = l.splitn(10, '\t').collect();
            assert_eq!(f.len(), 10, "bad stat line {l:?}");
            let n = |i: usize| -> i64 { f[i].parse().unwrap_or_else(|_| panic!("{l:?}")) };
            tree.insert(
                f[9].to_string(),
                Stat {
                    mode: f[0].to_string(),
                    uid: n(1) as u32,
                    gid: n(2) as u32,
                    size: n(3) as u64,
                    blocks: n(4) as u64,
                    atime: n(5),
                    mtime: n(6),
                    ctime: n(7),
                    nlink: n(8) as u32,
                    sha256: None,
                },
            );
            l = lines.next().expect("guest output ends early");
        }
        for l in lines.by_ref() {
            if l == "DONE" {
                break;
            }
            let (h, p) = l.split_at(64);
            let p = p.strip_prefix("  ").expect("sha256sum line");
            tree.get_mut(p)
                .unwrap_or_else(|| panic!("{disk}: sha256sum of {p} that stat did not list"))
                .sha256 = Some(h.to_string());
        }
        disks.insert(disk.to_string(), tree);
    }
    disks
}

/// The tree's key for the filesystem's statfs, held in a [`Stat`]'s fields.
const STATFS: &str = "(statfs)";

/// `stat -f -c '%S %b %f %a %c %d %l'`: block size, blocks, free, available, inodes, free
/// inodes, the longest name.
fn statfs_line(l: &str) -> Stat {
    let f: Vec<u64> = l
        .split(' ')
        .map(|x| x.parse().unwrap_or_else(|_| panic!("statfs line {l:?}")))
        .collect();
    assert_eq!(f.len(), 7, "statfs line {l:?}");
    Stat {
        mode: format!("statfs bsize {}", f[0]),
        uid: 0,
        gid: 0,
        size: f[1],
        blocks: f[2],
        atime: f[3] as i64,
        mtime: f[4] as i64,
        ctime: f[5] as i64,
        nlink: f[6] as u32,
        sha256: None,
    }
}

/// Our reader's view in the same form.
fn our_view(fs: &dyn FileSystem) -> Tree {
    let mut t = Tree::new();
    let s = fs.statfs().unwrap();
    t.insert(
        STATFS.into(),
        statfs_line(&format!(
            "{} {} {} {} {} {} {}",
            s.block_size,
            s.blocks,
            s.blocks_free,
            s.blocks_available,
            s.files,
            s.files_free,
            s.name_max
        )),
    );
    let mut todo: Vec<(String, Ino)> = vec![(".".into(), fs.root_ino())];
    while let Some((p, ino)) = todo.pop() {
        let a = fs.getattr(ino).unwrap();
        let mut sha256 = None;
        if a.kind == FileKind::Dir {
            for e in fs.readdir_all(ino).unwrap() {
                let n = e.name.to_str().expect("UTF-8 name").to_string();
                if n != "." && n != ".." {
                    todo.push((format!("{p}/{n}"), e.ino));
                }
            }
        } else {
            let mut v = vec![0u8; a.size as usize];
            assert_eq!(fs.read(ino, 0, &mut v).unwrap(), v.len(), "{p}: short read");
            sha256 = Some(hex(&Sha256::digest(&v)));
        }
        t.insert(
            p,
            Stat {
                mode: format!("{:x}", a.mode),
                uid: a.uid,
                gid: a.gid,
                size: a.size,
                blocks: a.blocks,
                atime: a.atime.secs,
                mtime: a.mtime.secs,
                ctime: a.ctime.secs,
                nlink: a.nlink,
                sha256,
            },
        );
    }
    t
}

/// Asserts the two trees are equal, naming every path that differs.
fn assert_trees(kernel: &Tree, ours: &Tree, what: &str) {
    let mut diffs = Vec::new();
    for (p, k) in kernel {
        match ours.get(p) {
            None => diffs.push(format!("{p}: the kernel lists it, our reader does not")),
            Some(o) if o != k => diffs.push(format!("{p}:\n  kernel {k:?}\n  ours   {o:?}")),
            Some(_) => {}
        }
    }
    for p in ours.keys().filter(|p| !kernel.contains_key(*p)) {
        diffs.push(format!("{p}: our reader lists it, the kernel does not"));
    }
    assert!(
        diffs.is_empty(),
        "{what}: the kernel and our reader differ at {} of {} paths:\n{}",
        diffs.len(),
        kernel.len(),
        diffs[..diffs.len().min(20)].join("\n")
    );
}

fn file(data: &[u8]) -> MNode {
    MNode {
        kind: Kind::File(data.to_vec()),
        perm: 0o755,
        uid: 0,
        gid: 0,
        xattrs: BTreeMap::new(),
        mtime: None,
    }
}

fn put(t: &conf::Lib, m: &mut Model, p: &str, data: &[u8]) {
    t.create(p, 0o644, 0, 0)
        .unwrap_or_else(|e| panic!("create {p}: errno {e}"));
    if !data.is_empty() {
        t.write(p, 0, data)
            .unwrap_or_else(|e| panic!("write {p}: errno {e}"));
    }
    m.add(p.to_string(), file(data));
}

fn mkdir(t: &conf::Lib, m: &mut Model, p: &str) {
    t.mkdir(p, 0o755, 0, 0)
        .unwrap_or_else(|e| panic!("mkdir {p}: errno {e}"));
    m.add(
        p.to_string(),
        MNode {
            kind: Kind::Dir,
            ..file(b"")
        },
    );
}

fn rename(t: &conf::Lib, m: &mut Model, from: &str, to: &str) {
    t.rename(from, to)
        .unwrap_or_else(|e| panic!("rename {from} {to}: errno {e}"));
    let id = m.names.remove(from).unwrap();
    m.names.insert(to.to_string(), id);
}

/// The fixed part of our writer's sequence: what the random operations rarely reach.
fn fixed_sequence(t: &conf::Lib, m: &mut Model, cs: usize) {
    mkdir(t, m, "EFI");
    mkdir(t, m, "EFI/debian");
    put(t, m, "EFI/debian/grub.cfg", b"set timeout=5\n");
    let mut deep = String::from("deep");
    mkdir(t, m, &deep);
    for d in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"] {
        deep = format!("{deep}/{d}");
        mkdir(t, m, &deep);
    }
    let mut r = conf::Rng(0x5EED);
    let sizes: std::collections::BTreeSet<usize> =
        [0, 1, 511, 512, 513, cs - 1, cs, cs + 1, 3 * cs + 7, 65536].into();
    for s in sizes {
        put(t, m, &format!("{deep}/size {s}"), &r.bytes(s));
    }
    // Twelve names whose 8.3 forms collide (LONGFI~1 ... and then the hashed forms).
    for i in 1..=12 {
        put(
            t,
            m,
            &format!("Long File Name {i}.txt"),
            format!("{i}\n").as_bytes(),
        );
    }
    mkdir(t, m, "Mixed Case Dir");
    let long255: String = (0..255).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    for n in [
        "lower.txt",
        "UPPER.TXT",
        "MiXeD.TxT",
        "readme",
        "README2",
        ".hidden",
        "dots.in.name.tar.gz",
        "12345678.123",
        "spaces in name",
        "ünïcödé",
        "a+b=c;d,e[f].txt",
        "a very long name that needs more than two long-name entries to hold it all.bin",
        long255.as_str(),
    ] {
        put(t, m, &format!("Mixed Case Dir/{n}"), n.as_bytes());
    }
    // A directory grown past one cluster (80 entries of 4 slots each), then mostly emptied.
    mkdir(t, m, "big");
    for i in 0..80 {
        put(t, m, &format!("big/entry with a long name {i}"), b"");
    }
    for i in 0..75 {
        let p = format!("big/entry with a long name {i}");
        t.unlink(&p).unwrap();
        m.names.remove(&p);
    }
    m.gc();
    rename(
        t,
        m,
        "Long File Name 3.txt",
        &format!("{deep}/Renamed File.TXT"),
    );
    // A rename that changes only the case.
    rename(t, m, "Mixed Case Dir/lower.txt", "Mixed Case Dir/LOWER.txt");
    t.set_times("Long File Name 1.txt", 946_684_799).unwrap();
    m.nodes
        .get_mut(&m.names["Long File Name 1.txt"])
        .unwrap()
        .mtime = Some(946_684_799);
    let big = format!("{deep}/size 65536");
    t.truncate(&big, 1000).unwrap();
    if let Kind::File(d) = &mut m.nodes.get_mut(&m.names[&big]).unwrap().kind {
        d.truncate(1000);
    }
    mkdir(t, m, "gone");
    t.rmdir("gone").unwrap();
    m.names.remove("gone");
    m.gc();
}

/// Fills image `img` through our writer; returns the model it must hold.
fn write_ours(img: &Path, bits: u32, seed: u64) -> (Model, String) {
    let fs = open_fat(img, true);
    let caps = fs.capabilities();
    let cs = fs.geometry().cluster_size as usize;
    let bs = u64::from(fs.statfs().unwrap().block_size);
    let mut m = conf::model_from_fs(&fs, &[]);
    let t = conf::Lib(&fs);
    fixed_sequence(&t, &mut m, cs);
    // KERNEL_VFAT_OPS raises the number of random operations for long local runs.
    let ops = std::env::var("KERNEL_VFAT_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let log = conf::run_ops(&t, &mut m, &caps, bs, seed, ops);
    // Write bits taken away (after the random operations, which might remove it): the
    // read-only attribute, which vfat shows as r-x.
    put(&t, &mut m, "Read Only.txt", b"read only\n");
    t.set_owner_mode("Read Only.txt", 0o555, 0, 0).unwrap();
    fs.flush().unwrap();
    drop(fs);
    (m, describe(&format!("FAT{bits} seed {seed}"), &log))
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kernel-vm.sh")
}

#[test]
fn kernel_vfat_both_ways() {
    let started = std::time::Instant::now();
    // The kernel and its modules, fetched once into target/tmp.
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel-vm");
    let kdir = run(Command::new("bash")
        .arg(script())
        .arg("fetch")
        .arg(&cache)
        .args(MODULES));
    let kdir = PathBuf::from(kdir.trim());
    let fetched = started.elapsed();

    let mut dir = tempfile::tempdir().unwrap();
    // KERNEL_VFAT_KEEP=1 leaves the images and the guest's output for a look.
    if std::env::var_os("KERNEL_VFAT_KEEP").is_some() {
        eprintln!("kernel_vfat: keeping {}", dir.path().display());
        dir.disable_cleanup(true);
    }
    let sizes = [(12, 4), (16, 16), (32, 40)];
    // KERNEL_VFAT_SEED picks other random sequences for local runs.
    let seed0: u64 = std::env::var("KERNEL_VFAT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(700);
    let mut ours = Vec::new();
    for (i, (bits, mb)) in sizes.iter().enumerate() {
        let sub = dir.path().join(format!("ours{bits}"));
        std::fs::create_dir(&sub).unwrap();
        let img = mkfs(&sub, *bits, *mb);
        let (m, what) = write_ours(&img, *bits, seed0 + 2 * i as u64);
        fsck_clean(&img, &what);
        let fs = open_fat(&img, false);
        conf::check_reader(&fs, &m, &[], &what);
        ours.push((img, m, what));
    }
    let mut fresh = Vec::new();
    for (bits, mb) in sizes {
        let sub = dir.path().join(format!("kernel{bits}"));
        std::fs::create_dir(&sub).unwrap();
        fresh.push((bits, mkfs(&sub, bits, mb)));
    }

    let guest = dir.path().join("guest.sh");
    std::fs::write(&guest, GUEST).unwrap();
    let initrd = dir.path().join("initrd.cpio");
    let mut c = Command::new("bash");
    c.arg(script())
        .arg("initramfs")
        .arg(&initrd)
        .arg("--run")
        .arg(&guest);
    c.arg("--kdir").arg(&kdir);
    for m in MODULES {
        c.args(["--module", m]);
    }
    run(&mut c);
    let out = dir.path().join("out");
    let mut c = Command::new("bash");
    c.arg(script())
        .arg("run")
        .arg("--kernel")
        .arg(kdir.join("vmlinuz"));
    c.arg("--initrd").arg(&initrd).arg("--out").arg(&out);
    c.args(["--timeout", "240"]);
    for (img, _, _) in &ours {
        c.arg("--disk").arg(format!("{}:ro", img.display()));
    }
    for (_, img) in &fresh {
        c.arg("--disk").arg(img);
    }
    let mut copies = Vec::new();
    for (img, _, _) in &ours {
        let copy = img.with_extension("extended.img");
        run(Command::new("cp")
            .arg("--sparse=always")
            .arg(img)
            .arg(&copy));
        c.arg("--disk").arg(&copy);
        copies.push(copy);
    }
    let booted = std::time::Instant::now();
    let st = c.status().unwrap();
    let boot = booted.elapsed();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let console = std::fs::read_to_string(out.with_extension("console")).unwrap_or_default();
    assert!(
        st.success(),
        "the guest failed ({st}); its output:\n{text}\nconsole tail:\n{}",
        console
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "kernel_vfat: fetch {:.1}s, VM boot and run {:.1}s",
        fetched.as_secs_f64(),
        boot.as_secs_f64()
    );
    let disks = parse(&text);

    // Our writer, as the kernel reads it.
    for ((img, m, what), disk) in ours.iter().zip(["vda", "vdb", "vdc"]) {
        let k = &disks[disk];
        // The kernel lists exactly the model's names, case and all.
        let mut want: Vec<String> = m
            .names
            .keys()
            .map(|p| {
                if p.is_empty() {
                    ".".to_string()
                } else {
                    format!("./{p}")
                }
            })
            .collect();
        want.sort();
        let got: Vec<String> = k.keys().filter(|p| *p != STATFS).cloned().collect();
        assert_eq!(got, want, "{what}: the kernel's listing is not the model's");
        assert_eq!(
            k["./Read Only.txt"].mode, "816d",
            "{what}: our chmod 555 as the kernel shows it"
        );
        let fs = open_fat(img, false);
        assert_trees(k, &our_view(&fs), &format!("our writer, {what}"));
    }
    // The kernel's additions to our images, as our reader reads them.
    for (((copy, _, what), disk), orig) in copies
        .iter()
        .zip(&ours)
        .map(|(c, (_, m, w))| (c, m, w))
        .zip(["vdg", "vdh", "vdi"])
        .zip(["vda", "vdb", "vdc"])
    {
        let k = &disks[disk];
        assert!(
            k.len() > disks[orig].len() + 10,
            "{what}: the kernel added little ({} paths, {} before)",
            k.len(),
            disks[orig].len()
        );
        let what = format!("extended by the kernel, {what}");
        fsck_clean(copy, &what);
        let fs = open_fat(copy, false);
        assert_trees(k, &our_view(&fs), &what);
    }
    // The kernel's writes, as our reader reads them.
    for ((bits, img), disk) in fresh.iter().zip(["vdd", "vde", "vdf"]) {
        let k = &disks[disk];
        for p in [
            "./EFI/debian/grub.cfg",
            "./Mixed Case Dir/ünïcödé",
            "./Mixed Case Dir/MiXeD.TxT",
            "./Mixed Case Dir/LOWER.txt",
            "./deep/a/b/Renamed File.TXT",
            "./Long File Name 12.txt",
            "./big/entry with a long name 149",
            "./Mixed Case Dir/UPPER.TXT",
        ] {
            assert!(k.contains_key(p), "FAT{bits}: the kernel did not write {p}");
        }
        assert_eq!(
            k["./Mixed Case Dir/UPPER.TXT"].mode, "816d",
            "FAT{bits}: chmod 555"
        );
        let what = format!("FAT{bits} written by the kernel");
        fsck_clean(img, &what);
        let fs = open_fat(img, false);
        assert_trees(k, &our_view(&fs), &what);
    }
}

//! Image locking: the bytes vdisk takes, conflicts between vdisk users, and interoperation
//! with qemu-io / qemu-img in both directions.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{helper_process, locked_bytes, qemu_io_holding, run, stderr, wait_for};
use vdisk_block::{BlockDevice, Error, Preallocation};
use vdisk_raw::{OpenOptions, RawFile};

const RW: OpenOptions = OpenOptions {
    read_only: false,
    force_share: false,
};
const RO: OpenOptions = OpenOptions {
    read_only: true,
    force_share: false,
};
const SHARED: OpenOptions = OpenOptions {
    read_only: true,
    force_share: true,
};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn image(dir: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, vec![0x11u8; 64 * 1024]).unwrap();
    path
}

fn set(b: &[u64]) -> BTreeSet<u64> {
    b.iter().copied().collect()
}

fn assert_locked(r: vdisk_block::Result<RawFile>, path: &Path, what: &str) {
    match r {
        Err(e @ Error::Locked { .. }) => {
            assert_eq!(e.path(), Some(path));
            let want = format!("{what} (is another process using the image?)");
            assert_eq!(e.message(), want);
        }
        Err(e) => panic!("expected a lock error, got {e}"),
        Ok(f) => panic!("expected a lock error, opened {f:?}"),
    }
}

/// The bytes each open mode holds, read back from the kernel's lock table.
#[test]
fn lock_bytes_per_mode() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, "bytes.raw");
    assert!(locked_bytes(&path).is_empty());
    let rw = RawFile::open(&path, &RW).unwrap();
    assert_eq!(locked_bytes(&path), set(&[100, 101, 103, 201, 203]));
    drop(rw);
    assert!(
        locked_bytes(&path).is_empty(),
        "dropping releases the locks"
    );
    let ro = RawFile::open(&path, &RO).unwrap();
    assert_eq!(locked_bytes(&path), set(&[100, 201, 203]));
    drop(ro);
    let shared = RawFile::open(&path, &SHARED).unwrap();
    assert_eq!(locked_bytes(&path), set(&[100]));
    drop(shared);
    let created = RawFile::create(&path, 4096, Preallocation::Off).unwrap();
    assert_eq!(locked_bytes(&path), set(&[100, 101, 103, 201, 203]));
    drop(created);
    assert!(locked_bytes(&path).is_empty());
}

#[test]
fn second_writer_in_the_same_process_is_refused() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, "two.raw");
    let first = RawFile::open(&path, &RW).unwrap();
    // OFD locks belong to the open file description, so a second open in this process
    // conflicts just as another process would.
    assert_locked(
        RawFile::open(&path, &RW),
        &path,
        "Failed to get \"write\" lock",
    );
    // A consistent reader cannot open under a writer either...
    assert_locked(
        RawFile::open(&path, &RO),
        &path,
        "Failed to get shared \"write\" lock",
    );
    // ...but a shared reader can, and sees the writer's data.
    let reader = RawFile::open(&path, &SHARED).unwrap();
    first.write_at(b"fresh", 0).unwrap();
    let mut b = [0u8; 5];
    reader.read_at(&mut b, 0).unwrap();
    assert_eq!(&b, b"fresh");
    // create() must not truncate a file someone is writing.
    assert_locked(
        RawFile::create(&path, 512, Preallocation::Off),
        &path,
        "Failed to get \"write\" lock",
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 * 1024);
    drop(first);
    // The refused opens left no locks behind: the writer's are gone, the reader's remain.
    assert_eq!(locked_bytes(&path), set(&[100]));
    let second = RawFile::open(&path, &RW).unwrap();
    drop(second);
    drop(reader);
}

#[test]
fn readers_and_writers() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, "readers.raw");
    // Consistent readers share with each other and with shared readers...
    let r1 = RawFile::open(&path, &RO).unwrap();
    let r2 = RawFile::open(&path, &RO).unwrap();
    let r3 = RawFile::open(&path, &SHARED).unwrap();
    // ...but keep writers out.
    assert_locked(
        RawFile::open(&path, &RW),
        &path,
        "Failed to get \"write\" lock",
    );
    drop((r1, r2));
    // A shared reader does not keep a writer out.
    let w = RawFile::open(&path, &RW).unwrap();
    drop((w, r3));
}

/// Keeps `VDISK_RAW_TEST_PATH` open read-write until killed; run by the test below in a
/// child process.
#[test]
#[ignore = "helper: run as a child process by another_vdisk_process_holds_the_image"]
fn helper_hold_read_write() {
    let path = std::env::var_os("VDISK_RAW_TEST_PATH").expect("helper only");
    let _img = RawFile::open(&path, &RW).unwrap();
    println!("ready");
    std::thread::sleep(std::time::Duration::from_secs(300));
}

#[test]
fn another_vdisk_process_holds_the_image() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, "proc.raw");
    let child = helper_process("helper_hold_read_write", &path);
    assert_eq!(locked_bytes(&path), set(&[100, 101, 103, 201, 203]));
    assert_locked(
        RawFile::open(&path, &RW),
        &path,
        "Failed to get \"write\" lock",
    );
    RawFile::open(&path, &SHARED).unwrap();
    drop(child); // killed: the kernel drops its locks
    wait_for("the helper's locks to go", || {
        locked_bytes(&path).is_empty()
    });
    RawFile::open(&path, &RW).unwrap();
}

/// qemu-io writing the image: vdisk refuses to write it too, and refuses to read it
/// consistently, exactly as qemu itself would (a VM, `qemu-img convert`).
#[test]
fn qemu_io_writer_blocks_vdisk() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, "qemu-rw.raw");
    // qemu-io read-write holds consistent-read and write, and shares everything.
    let _q = qemu_io_holding(&path, &[], &[100, 101]);
    assert_locked(
        RawFile::open(&path, &RW),
        &path,
        "Failed to get shared \"write\" lock",
    );
    assert_locked(
        RawFile::open(&path, &RO),
        &path,
        "Failed to get shared \"write\" lock",
    );
    let r = RawFile::open(&path, &SHARED).unwrap();
    assert_eq!(r.size(), 64 * 1024);
    // The failed opens released what they took; only qemu-io's bytes and our reader's 100.
    assert_eq!(locked_bytes(&path), set(&[100, 101]));
    // For comparison: qemu-img convert (a consistent reader) fails the same way.
    let out = run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            s(&path),
            s(&dir.path().join("copy.raw")),
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Failed to get shared \"write\" lock"));
}

#[test]
fn qemu_io_reader_allows_vdisk_writer() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, "qemu-ro.raw");
    let _q = qemu_io_holding(&path, &["-r"], &[100]);
    let w = RawFile::open(&path, &RW).unwrap();
    w.write_at(b"x", 0).unwrap();
}

/// vdisk writing the image: qemu refuses to write it, as it would refuse against a VM, and
/// `qemu-img info` still works, as it does against a VM.
#[test]
fn vdisk_writer_blocks_qemu() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, "vdisk-rw.raw");
    let _w = RawFile::open(&path, &RW).unwrap();

    let out = run("qemu-io", &["-f", "raw", "-c", "write 0 512", s(&path)]);
    assert!(!out.status.success(), "qemu-io wrote an image vdisk holds");
    let msg = stderr(&out);
    assert!(
        msg.contains(&format!(
            "Failed to get \"write\" lock\nIs another process using the image [{}]?",
            path.display()
        )),
        "{msg}"
    );

    let out = run("qemu-img", &["resize", "-f", "raw", s(&path), "1M"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Failed to get \"write\" lock"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 * 1024);

    let copy = dir.path().join("copy.raw");
    let out = run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", s(&path), s(&copy)],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Failed to get shared \"write\" lock"),
        "{}",
        stderr(&out)
    );

    // Readers that share: info (takes no locks at all), -U, qemu-io -r.
    let out = run("qemu-img", &["info", "-f", "raw", s(&path)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-f",
            "raw",
            "-O",
            "raw",
            s(&path),
            s(&copy),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read 0 512", s(&path)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn vdisk_reader_blocks_qemu_writer_unless_shared() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, "vdisk-ro.raw");
    let r = RawFile::open(&path, &RO).unwrap();
    let out = run("qemu-io", &["-f", "raw", "-c", "write 0 512", s(&path)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Failed to get \"write\" lock"),
        "{}",
        stderr(&out)
    );
    drop(r);

    let _r = RawFile::open(&path, &SHARED).unwrap();
    let out = run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x77 0 512", s(&path)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&path).unwrap()[..512], [0x77; 512]);
}

/// qemu checks "consistent read" even with -U; so do we. Nobody in qemu-img or qemu-io
/// refuses to share it, so hold the byte by hand as a block job's target would.
#[test]
fn force_share_still_needs_consistent_read() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, "noread.raw");
    let holder = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import fcntl,os,struct,sys,time\n\
             fd=os.open(sys.argv[1],os.O_RDONLY)\n\
             fcntl.fcntl(fd,37,struct.pack('hhqqi',fcntl.F_RDLCK,0,200,1,0))\n\
             time.sleep(120)",
        )
        .arg(&path)
        .spawn()
        .unwrap();
    let _holder = common::Killed(holder);
    wait_for("the byte-200 holder", || locked_bytes(&path) == set(&[200]));
    assert_locked(
        RawFile::open(&path, &SHARED),
        &path,
        "Failed to get \"consistent read\" lock",
    );
    let out = run(
        "qemu-io",
        &["-r", "-U", "-f", "raw", "-c", "quit", s(&path)],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Failed to get \"consistent read\" lock"));
}

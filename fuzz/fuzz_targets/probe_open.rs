//! Probing and opening by name through the library: the bytes are written to a file in
//! /dev/shm and opened probed, as raw and as qcow2, with backing files ignored or refused
//! (following them would let the input name any host file), then mapped and read.
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vdisk::{BackingPolicy, Format, OpenOptions};
use vdisk_fuzz::{walk_image, Knobs};

fn scratch() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vdisk-fuzz-{}", std::process::id()));
        let shm = PathBuf::from("/dev/shm");
        let base = if shm.is_dir() { shm } else { dir };
        base.join(format!("vdisk-fuzz-probe-{}.img", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let probed = Format::probe(data);
    assert!(matches!(probed, Format::Raw | Format::Qcow2));
    let path = scratch();
    std::fs::write(path, data).expect("write scratch image");
    let mut k = Knobs::new(data);
    for format in [None, Some(Format::Raw), Some(Format::Qcow2)] {
        for backing in [BackingPolicy::Ignore, BackingPolicy::Refuse] {
            let opts = OpenOptions {
                format,
                backing,
                ..OpenOptions::default()
            };
            let Ok(img) = vdisk::open(path, &opts) else {
                continue;
            };
            if format == Some(Format::Raw) {
                assert_eq!(img.format, Format::Raw, "-f raw was second-guessed");
                assert!(!img.probed);
            }
            if format.is_none() {
                assert!(img.probed);
                assert_eq!(img.format, probed);
            }
            let _ = vdisk::info::image_info(&img);
            let mut budget = 1 << 20;
            walk_image(&*img.image(), &mut k, &mut budget);
        }
    }
});

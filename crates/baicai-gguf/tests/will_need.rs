//! `will_need` is advisory: on any slice (mapped file, heap, empty, unaligned at either end) it
//! returns, and the bytes read afterwards are the file's.

use std::path::Path;

#[test]
fn will_need_leaves_mapped_and_heap_bytes_unchanged() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("baicai-gguf-will-need");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data.bin");
    // Three and a bit pages of 4 KiB, and more than one 2 MiB huge page.
    for len in [3 * 4096 + 100, (2 << 20) + 12345] {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: the file is private to this test and not modified while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        for (a, b) in [
            (0, len),
            (1, len),
            (4095, 4097),
            (len - 1, len),
            (17, 17),
            (100, len - 3),
        ] {
            baicai_gguf::will_need(&map[a..b]);
            assert_eq!(&map[a..b], &bytes[a..b], "range {a}..{b} of {len}");
        }
        baicai_gguf::will_need(&bytes[5..]);
        baicai_gguf::will_need(&[]);
        assert_eq!(&map[..], &bytes[..]);
    }
}

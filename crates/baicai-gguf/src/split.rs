//! Split models: `<prefix>-00001-of-0000N.gguf` … `<prefix>-0000N-of-0000N.gguf`, as llama.cpp's
//! `gguf-split` writes them. Each part is a complete GGUF file holding some of the tensors; the
//! first holds the model's metadata, and every part carries `split.no` (0-based),
//! `split.count` and `split.tensors.count`.

use std::path::{Path, PathBuf};

use crate::{parse_named, Bytes, Gguf, GgufError, Parsed, Residency, Value};

/// Key holding the 0-based index of this part.
pub const KEY_SPLIT_NO: &str = "split.no";
/// Key holding the number of parts.
pub const KEY_SPLIT_COUNT: &str = "split.count";
/// Key holding the number of tensors over all parts.
pub const KEY_SPLIT_TENSORS_COUNT: &str = "split.tensors.count";

/// The file name of part `no` (1-based) of `count` for `prefix`, as llama.cpp spells it:
/// `<prefix>-00002-of-00003.gguf`.
pub fn split_file_name(prefix: &str, no: u32, count: u32) -> String {
    format!("{prefix}-{no:05}-of-{count:05}.gguf")
}

/// Splits a file name of the form `<prefix>-NNNNN-of-MMMMM.gguf` (five digits each) into
/// `(prefix, part number (1-based), part count)`; `None` for any other name or for part numbers
/// outside `1..=count`.
pub fn split_name_parts(file_name: &str) -> Option<(&str, u32, u32)> {
    let stem = file_name.strip_suffix(".gguf")?;
    // "-NNNNN-of-MMMMM" is 15 bytes, all ASCII.
    let tail_at = stem.len().checked_sub(15)?;
    if !stem.is_char_boundary(tail_at) {
        return None;
    }
    let (prefix, tail) = stem.split_at(tail_at);
    let b = tail.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    if b[0] != b'-' || &b[6..10] != b"-of-" || !digits(&b[1..6]) || !digits(&b[10..15]) {
        return None;
    }
    let no: u32 = tail[1..6].parse().ok()?;
    let count: u32 = tail[10..15].parse().ok()?;
    (no >= 1 && no <= count).then_some((prefix, no, count))
}

fn format_err(path: &Path, what: String) -> GgufError {
    GgufError::Format {
        path: path.display().to_string(),
        offset: 0,
        what,
    }
}

/// Memory-maps and parses one file; with [`Residency::Resident`], then reads it into memory.
fn open_one(path: &Path, residency: Residency) -> Result<(PathBuf, Bytes, Parsed), GgufError> {
    let io = |source| GgufError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and private to this process. Like every mmap-based model
    // loader (llama.cpp included) we rely on the file not being truncated or rewritten while it
    // is open; that is documented on `Gguf::open`, and the parser never trusts the contents.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let parsed = parse_named(&map, &path.display().to_string())?;
    // Ask for 2 MiB mappings (transparent huge pages, `madvise` mode): where the page cache holds
    // the file in 2 MiB folios (Linux 6.x reads ext4/xfs files into large folios) the kernel then
    // maps them whole, and weights stream with a fraction of the TLB misses of 4 KiB pages, which
    // the hardware prefetchers stop at (DeepSeek-V2-Lite Q4_K_M generated ~15% faster on the
    // development machine). A refused hint changes nothing.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    let bytes = match residency {
        Residency::Mapped => Bytes::Mapped(map),
        Residency::Resident => Bytes::Resident(read_resident(&file, map.len()).map_err(io)?),
    };
    Ok((path.to_path_buf(), bytes, parsed))
}

/// Reads the `len`-byte `file` into an anonymous mapping on 2 MiB pages where the OS grants
/// them (the hint failing is not an error: the memory then has normal pages). Most of the time
/// goes to the kernel zeroing the fresh pages, so each core reads a share.
fn read_resident(file: &std::fs::File, len: usize) -> std::io::Result<memmap2::Mmap> {
    let mut mem = memmap2::MmapMut::map_anon(len.max(1))?;
    #[cfg(target_os = "linux")]
    let _ = mem.advise(memmap2::Advice::HugePage);
    // One contiguous share per core, each read with one positioned read.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = len.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = mem[..len]
            .chunks_mut(share)
            .enumerate()
            .map(|(i, part)| {
                s.spawn(move || {
                    read_at(file, part, (i * share) as u64).map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!("reading bytes {}.. into memory: {e}", i * share),
                        )
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })?;
    mem.make_read_only()
}

/// Fills `buf` from `file` at `offset`.
#[cfg(unix)]
fn read_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

/// Fills `buf` from `file` at `offset`.
#[cfg(windows)]
fn read_at(file: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(file, buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// A `split.*` key of a parsed part as an integer, if present.
fn split_key(path: &Path, parsed: &Parsed, key: &str) -> Result<Option<u64>, GgufError> {
    match parsed.metadata.get(key) {
        None => Ok(None),
        Some(v) => v.to_u64().map(Some).ok_or_else(|| {
            format_err(
                path,
                format!("metadata '{key}' = {v:?} is not a non-negative integer"),
            )
        }),
    }
}

pub(crate) fn open(path: &Path, residency: Residency) -> Result<Gguf, GgufError> {
    let name_parts = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(split_name_parts);
    let Some((prefix, _, count)) = name_parts else {
        let part = open_one(path, residency)?;
        if let Some(n) = split_key(path, &part.2, KEY_SPLIT_COUNT)? {
            if n > 1 {
                return Err(format_err(
                    path,
                    format!(
                        "'{KEY_SPLIT_COUNT}' is {n}: this is one part of a split model, but its name does not \
                         follow <prefix>-00001-of-{n:05}.gguf, so the other parts cannot be found"
                    ),
                ));
            }
        }
        return Gguf::from_parts(vec![part]);
    };

    let dir = path.parent().unwrap_or(Path::new(""));
    let mut parts = Vec::with_capacity(count as usize);
    for no in 1..=count {
        let part_path = dir.join(split_file_name(prefix, no, count));
        if !part_path.exists() {
            return Err(GgufError::Io {
                path: part_path.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "part {no} of {count} of split model '{}' is missing",
                        path.display()
                    ),
                ),
            });
        }
        let part = open_one(&part_path, residency)?;
        check_part(&part_path, &part.2, no, count)?;
        parts.push(part);
    }
    let total: u64 = parts.iter().map(|p| p.2.tensors.len() as u64).sum();
    let first_path = parts[0].0.clone();
    if let Some(expected) = split_key(&first_path, &parts[0].2, KEY_SPLIT_TENSORS_COUNT)? {
        if expected != total {
            return Err(format_err(
                &first_path,
                format!("'{KEY_SPLIT_TENSORS_COUNT}' is {expected} but the {count} parts hold {total} tensors"),
            ));
        }
    }
    Gguf::from_parts(parts)
}

/// Checks that part `no` of `count` says so about itself.
fn check_part(path: &Path, parsed: &Parsed, no: u32, count: u32) -> Result<(), GgufError> {
    match split_key(path, parsed, KEY_SPLIT_COUNT)? {
        Some(n) if n == u64::from(count) => {}
        // A lone file named `-00001-of-00001` needs no split keys.
        None if count == 1 => {}
        found => {
            return Err(format_err(
                path,
                format!("'{KEY_SPLIT_COUNT}' is {found:?} but the file name says {count} parts"),
            ))
        }
    }
    if let Some(n) = split_key(path, parsed, KEY_SPLIT_NO)? {
        if n != u64::from(no - 1) {
            return Err(format_err(
                path,
                format!(
                    "'{KEY_SPLIT_NO}' is {n} but the file name says part {no} (split.no {})",
                    no - 1
                ),
            ));
        }
    }
    Ok(())
}

/// The `split.*` metadata of part `no` (0-based) of `count`, with the types llama.cpp's
/// `gguf-split` writes (u16, u16, i32).
pub fn split_metadata(no: u16, count: u16, total_tensors: i32) -> Vec<(String, Value)> {
    vec![
        (KEY_SPLIT_NO.to_string(), Value::U16(no)),
        (KEY_SPLIT_COUNT.to_string(), Value::U16(count)),
        (
            KEY_SPLIT_TENSORS_COUNT.to_string(),
            Value::I32(total_tensors),
        ),
    ]
}

//! Split models written as llama.cpp's `gguf-split` lays them out, read back as one.

use std::path::{Path, PathBuf};

use baicai_gguf::{
    split_file_name, split_metadata, split_name_parts, GgmlType, Gguf, GgufError, GgufWriter,
    Residency, TensorSpec, Value,
};

/// A fresh directory for one test.
fn test_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("baicai-gguf-split")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Bytes of tensor `i`: distinct per tensor so that mix-ups show.
fn tensor_bytes(i: usize, n: usize) -> Vec<u8> {
    (0..n).map(|j| (i * 7 + j) as u8).collect()
}

/// Writes `count` parts of `prefix` in `dir`; part `p` holds tensors `2p` and `2p+1`, and the
/// first part also the model metadata. `count_key` overrides `split.count` in every part.
fn write_split(dir: &Path, prefix: &str, count: u16, count_key: u16) -> Vec<PathBuf> {
    let total = 2 * i32::from(count);
    (0..count)
        .map(|p| {
            let mut md = split_metadata(p, count_key, total);
            if p == 0 {
                md.insert(
                    0,
                    ("general.architecture".into(), Value::String("tiny".into())),
                );
                md.push(("tiny.block_count".into(), Value::U32(3)));
            }
            let specs: Vec<TensorSpec> = (0..2)
                .map(|k| {
                    let i = 2 * p as usize + k;
                    TensorSpec::new(
                        format!("blk.{i}.weight"),
                        &[8, (i + 1) as u64],
                        GgmlType::F32,
                    )
                })
                .collect();
            let path = dir.join(split_file_name(prefix, u32::from(p) + 1, u32::from(count)));
            let mut w = GgufWriter::create(&path, &md, &specs).unwrap();
            for (k, s) in specs.iter().enumerate() {
                let i = 2 * p as usize + k;
                w.write_tensor_data(&s.name, &tensor_bytes(i, 32 * (i + 1)))
                    .unwrap();
            }
            w.finish().unwrap();
            path
        })
        .collect()
}

fn check_merged(g: &Gguf, parts: &[PathBuf]) {
    assert_eq!(
        g.paths(),
        parts.iter().map(PathBuf::as_path).collect::<Vec<_>>()
    );
    assert_eq!(g.require_str("general.architecture").unwrap(), "tiny");
    assert_eq!(g.require_u64("tiny.block_count").unwrap(), 3);
    assert_eq!(g.tensors().len(), 6);
    for (i, t) in g.tensors().iter().enumerate() {
        assert_eq!(t.name, format!("blk.{i}.weight"));
        assert_eq!(t.file_index, i / 2);
        assert_eq!(
            g.tensor_data(t),
            &tensor_bytes(i, 32 * (i + 1))[..],
            "{}",
            t.name
        );
    }
    let size: u64 = parts
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(g.file_size(), size);
}

#[test]
fn three_parts_open_from_any_part() {
    let dir = test_dir("three");
    let parts = write_split(&dir, "model", 3, 3);
    for p in &parts {
        check_merged(&Gguf::open(p).unwrap(), &parts);
    }
}

#[test]
fn resident_parts_hold_the_same_bytes_as_mapped_ones() {
    let dir = test_dir("resident");
    let parts = write_split(&dir, "model", 3, 3);
    let mapped = Gguf::open(&parts[0]).unwrap();
    let resident = Gguf::open_with(&parts[0], Residency::Resident).unwrap();
    assert_eq!(mapped.residency(), Residency::Mapped);
    assert_eq!(resident.residency(), Residency::Resident);
    check_merged(&resident, &parts);
    assert_eq!(resident.file_size(), mapped.file_size());
    for t in mapped.tensors() {
        let r = resident.tensor(&t.name).unwrap();
        assert_eq!(resident.tensor_data(r), mapped.tensor_data(t), "{}", t.name);
    }
}

#[test]
fn missing_part_is_named() {
    let dir = test_dir("missing");
    let parts = write_split(&dir, "model", 3, 3);
    std::fs::remove_file(&parts[1]).unwrap();
    let Err(GgufError::Io { path, source }) = Gguf::open(&parts[0]) else {
        panic!("expected an I/O error")
    };
    assert!(path.ends_with("model-00002-of-00003.gguf"), "{path}");
    assert!(source.to_string().contains("part 2 of 3"), "{source}");
}

#[test]
fn split_count_disagreeing_with_the_name_is_rejected() {
    let dir = test_dir("disagree");
    let parts = write_split(&dir, "model", 2, 3);
    let e = Gguf::open(&parts[0]).unwrap_err().to_string();
    assert!(
        e.contains("'split.count' is Some(3) but the file name says 2 parts"),
        "{e}"
    );
}

#[test]
fn a_part_renamed_out_of_the_pattern_is_rejected() {
    let dir = test_dir("renamed");
    let parts = write_split(&dir, "model", 2, 2);
    let lone = dir.join("lone.gguf");
    std::fs::rename(&parts[0], &lone).unwrap();
    let e = Gguf::open(&lone).unwrap_err().to_string();
    assert!(e.contains("'split.count' is 2"), "{e}");
}

#[test]
fn single_files_named_like_part_one_of_one_open() {
    let dir = test_dir("one");
    let parts = write_split(&dir, "m", 1, 1);
    let g = Gguf::open(&parts[0]).unwrap();
    assert_eq!(g.tensors().len(), 2);
}

#[test]
fn split_names_parse_strictly() {
    assert_eq!(
        split_name_parts("a-b-00002-of-00003.gguf"),
        Some(("a-b", 2, 3))
    );
    assert_eq!(split_file_name("x", 1, 12), "x-00001-of-00012.gguf");
    for bad in [
        "a-00004-of-00003.gguf",
        "a-00000-of-00003.gguf",
        "a-0001-of-00003.gguf",
        "a-00001-of-00003.bin",
        "-00001-of-0000x.gguf",
        "é-00001-of-00001.gguf.x",
    ] {
        assert_eq!(split_name_parts(bad), None, "{bad}");
    }
}

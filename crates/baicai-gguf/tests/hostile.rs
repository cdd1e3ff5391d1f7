//! Truncated, corrupt and hostile files: each gets an error naming the field, never a panic or
//! an allocation sized by an unchecked length.

use baicai_gguf::{parse, write_to_vec, GgmlType, GgufError, TensorSpec, Value};

/// Builds GGUF bytes by hand, field by field, so that any field can hold a hostile value.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, tensors: u64, kvs: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(tensors).u64(kvs);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    /// A key with a u32 value.
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(4).u32(v)
    }
    /// A tensor info.
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to 32 bytes and appends `data_len` bytes of tensor data.
    fn data(&mut self, data_len: usize) -> Vec<u8> {
        let mut v = self.0.clone();
        v.resize(v.len().next_multiple_of(32) + data_len, 0);
        v
    }
}

fn format_error(bytes: &[u8]) -> (u64, String) {
    match parse(bytes) {
        Err(GgufError::Format { offset, what, .. }) => (offset, what),
        other => panic!("expected a format error, got {other:?}"),
    }
}

fn assert_error_contains(bytes: &[u8], needle: &str) -> u64 {
    let (offset, what) = format_error(bytes);
    assert!(
        what.contains(needle),
        "error '{what}' does not contain '{needle}'"
    );
    offset
}

/// A small valid file: several value types, an array of strings, three tensors.
fn small_valid_file() -> Vec<u8> {
    let md = [
        ("general.architecture", Value::String("tiny".into())),
        ("tiny.block_count", Value::U32(2)),
        ("tiny.eps", Value::F32(1e-5)),
        (
            "tokenizer.tokens",
            Value::Array(vec![Value::String("a".into()), Value::String("bc".into())]),
        ),
        (
            "tiny.nested",
            Value::Array(vec![Value::Array(vec![Value::I16(-1)])]),
        ),
        ("tiny.flag", Value::Bool(true)),
    ];
    let a = [1u8; 16];
    let q = [2u8; 34 * 2];
    let b = [3u8; 5];
    write_to_vec(
        &md,
        &[
            (TensorSpec::new("a", &[4], GgmlType::F32), &a[..]),
            (TensorSpec::new("q", &[32, 2], GgmlType::Q8_0), &q[..]),
            (TensorSpec::new("b", &[5], GgmlType::I8), &b[..]),
        ],
    )
    .unwrap()
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error() {
    let file = small_valid_file();
    let p = parse(&file).unwrap();
    let end_of_data = p
        .tensors
        .iter()
        .map(|t| p.data_offset + t.offset + t.n_bytes)
        .max()
        .unwrap() as usize;
    for len in 0..end_of_data {
        assert!(parse(&file[..len]).is_err(), "prefix of {len} bytes parsed");
    }
    // Trailing padding after the last tensor is optional, as in llama.cpp.
    for len in end_of_data..=file.len() {
        assert_eq!(parse(&file[..len]).unwrap().tensors, p.tensors);
    }
}

#[test]
fn every_single_byte_corruption_is_handled_without_panic() {
    let file = small_valid_file();
    for i in 0..file.len() {
        for x in [0x01, 0x80, 0xff] {
            let mut f = file.clone();
            f[i] ^= x;
            let _ = parse(&f);
        }
    }
}

#[test]
fn bad_magic_is_rejected() {
    let mut f = small_valid_file();
    f[0] = b'X';
    assert_error_contains(&f, "not a GGUF file");
    assert_error_contains(b"GGU", "magic needs 4 bytes");
}

#[test]
fn huge_string_length_is_rejected_before_allocation() {
    let f = Raw::header(3, 0, 1).str("k").u32(8).u64(u64::MAX).data(0);
    let offset = assert_error_contains(
        &f,
        "metadata key 0 ('k'): string length 18446744073709551615 exceeds the",
    );
    assert_eq!(offset, 24 + 9 + 4);
    let f = Raw::header(3, 0, 1)
        .u64(u64::MAX - 3)
        .bytes(&[0; 16])
        .data(0);
    assert_error_contains(
        &f,
        "metadata key 0: key length 18446744073709551612 exceeds",
    );
}

#[test]
fn huge_array_count_is_rejected_before_allocation() {
    // 2^61 u32 elements would need 2^63 bytes.
    let f = Raw::header(3, 0, 1)
        .str("arr")
        .u32(9)
        .u32(4)
        .u64(1 << 61)
        .data(64);
    let offset = assert_error_contains(
        &f,
        "metadata key 0 ('arr'): array count 2305843009213693952",
    );
    assert_eq!(offset, 24 + 11 + 4 + 4);
    // The count multiplied by the element size overflows u64.
    let f = Raw::header(3, 0, 1)
        .str("arr")
        .u32(9)
        .u32(12)
        .u64(u64::MAX / 2)
        .data(64);
    assert_error_contains(&f, "array count");
    // An array of strings needs at least 8 bytes per element.
    let f = Raw::header(3, 0, 1)
        .str("arr")
        .u32(9)
        .u32(8)
        .u64(5)
        .bytes(&[0; 32])
        .0
        .clone();
    assert_error_contains(&f, "array count 5 needs at least 8 bytes each");
}

#[test]
fn huge_counts_in_the_header_are_rejected() {
    let f = Raw::header(3, u64::MAX, 0).data(0);
    assert_error_contains(&f, "header: tensor_count 18446744073709551615");
    let f = Raw::header(3, 0, 1 << 40).data(0);
    assert_error_contains(&f, "header: kv_count 1099511627776");
}

#[test]
fn deeply_nested_arrays_are_rejected() {
    let mut r = Raw::header(3, 0, 1);
    r.str("deep").u32(9);
    for _ in 0..20 {
        r.u32(9).u64(1);
    }
    r.u32(0).u64(0);
    assert_error_contains(
        &r.data(0),
        "metadata key 0 ('deep'): arrays nest deeper than 8",
    );
}

#[test]
fn unknown_value_types_are_rejected() {
    let f = Raw::header(3, 0, 1).str("k").u32(13).u32(0).data(0);
    assert_error_contains(&f, "metadata key 0 ('k'): value type id 13 is unknown");
    let f = Raw::header(3, 0, 1).str("k").u32(9).u32(77).u64(0).data(0);
    assert_error_contains(&f, "array element type id 77 is unknown");
    let f = Raw::header(3, 0, 1).str("k").u32(7).bytes(&[2]).data(0);
    assert_error_contains(&f, "bool value 2 is neither 0 nor 1");
}

#[test]
fn invalid_utf8_is_an_error_not_lossy() {
    let f = Raw::header(3, 0, 1)
        .u64(2)
        .bytes(&[0xc3, 0x28])
        .u32(0)
        .bytes(&[0])
        .data(0);
    assert_error_contains(&f, "metadata key 0: key is not valid UTF-8");
    let f = Raw::header(3, 1, 0)
        .u64(1)
        .bytes(&[0xff])
        .u32(1)
        .u64(1)
        .u32(0)
        .u64(0)
        .data(4);
    assert_error_contains(&f, "tensor info 0: name is not valid UTF-8");
}

#[test]
fn duplicate_keys_and_tensor_names_are_rejected() {
    let f = Raw::header(3, 0, 2).kv_u32("k", 1).kv_u32("k", 2).data(0);
    assert_error_contains(&f, "metadata key 1 ('k'): duplicate key");
    let f = Raw::header(3, 2, 0)
        .tensor("t", &[1], 0, 0)
        .tensor("t", &[1], 0, 32)
        .data(64);
    assert_error_contains(&f, "tensor info 1 ('t'): duplicate tensor name");
}

#[test]
fn bad_alignment_is_rejected() {
    for a in [0, 3, 48] {
        let f = Raw::header(3, 0, 1).kv_u32("general.alignment", a).data(0);
        assert_error_contains(&f, "'general.alignment'");
    }
    let f = Raw::header(3, 0, 1)
        .str("general.alignment")
        .u32(10)
        .u64(32)
        .data(0);
    assert_error_contains(&f, "'general.alignment' = U64(32)");
    let mut f = Raw::header(3, 1, 1)
        .kv_u32("general.alignment", 64)
        .tensor("t", &[8], 0, 0)
        .0
        .clone();
    f.resize(128 + 32, 0);
    let p = parse(&f).unwrap();
    assert_eq!((p.alignment, p.data_offset), (64, 128));
}

#[test]
fn too_many_dimensions_are_rejected() {
    let f = Raw::header(3, 1, 0)
        .tensor("blk.0.attn_q.weight", &[1; 9], 0, 0)
        .data(64);
    let offset = assert_error_contains(
        &f,
        "tensor info 0 ('blk.0.attn_q.weight'): n_dims 9 exceeds 4",
    );
    assert_eq!(offset, 24 + 8 + 19);
}

#[test]
fn unknown_ggml_type_is_rejected() {
    let f = Raw::header(3, 1, 0).tensor("t", &[1], 99, 0).data(64);
    assert_error_contains(&f, "tensor info 0 ('t'): ggml type id 99 is unknown");
    let f = Raw::header(3, 1, 0).tensor("t", &[1], 4, 0).data(64);
    assert_error_contains(&f, "ggml type id 4 is unknown");
}

#[test]
fn dimension_overflow_is_rejected() {
    let f = Raw::header(3, 1, 0)
        .tensor("t", &[1 << 32, 1 << 32], 0, 0)
        .data(64);
    assert_error_contains(
        &f,
        "tensor info 0 ('t'): element count of shape [4294967296, 4294967296] overflows u64",
    );
    let f = Raw::header(3, 1, 0).tensor("t", &[1 << 62], 0, 0).data(64);
    assert_error_contains(
        &f,
        "byte size of shape [4611686018427387904] as F32 overflows u64",
    );
    let f = Raw::header(3, 1, 0).tensor("t", &[u64::MAX], 0, 0).data(64);
    assert_error_contains(&f, "dims[0] = 18446744073709551615 exceeds i64::MAX");
    let f = Raw::header(3, 1, 0).tensor("t", &[100], 12, 0).data(1024);
    assert_error_contains(
        &f,
        "dims[0] = 100 is not a multiple of the Q4_K block length 256",
    );
}

#[test]
fn tensor_data_outside_the_file_is_rejected() {
    let f = Raw::header(3, 1, 0).tensor("t", &[8], 0, 0).data(31);
    assert_error_contains(
        &f,
        "tensor info 0 ('t'): data at offset 0 + 32 bytes lies outside the 31-byte data section",
    );
    let f = Raw::header(3, 1, 0)
        .tensor("t", &[8], 0, u64::MAX - 31)
        .data(64);
    assert_error_contains(&f, "lies outside the 64-byte data section");
    // Infos that end where the file ends leave no room for the data section.
    let f = Raw::header(3, 1, 0).tensor("t", &[8], 0, 0).0.clone();
    assert_error_contains(&f, "past the end of the file");
}

#[test]
fn misaligned_tensor_offset_is_rejected() {
    let f = Raw::header(3, 1, 0).tensor("t", &[8], 0, 4).data(64);
    let offset = assert_error_contains(
        &f,
        "tensor info 0 ('t'): offset 4 is not a multiple of the alignment 32",
    );
    assert_eq!(offset, 24 + 9 + 4 + 8 + 4);
}

#[test]
fn overlapping_tensors_are_rejected() {
    let f = Raw::header(3, 2, 0)
        .tensor("a", &[16], 0, 0)
        .tensor("b", &[8], 0, 32)
        .data(128);
    assert_error_contains(
        &f,
        "tensor 'a' (offset 0, 64 bytes) overlaps tensor 'b' (offset 32)",
    );
}

#[test]
fn zero_dimension_tensors_are_accepted() {
    let f = Raw::header(3, 2, 0)
        .tensor("scalar", &[], 0, 0)
        .tensor("empty", &[0, 7], 12, 32)
        .data(32);
    let p = parse(&f).unwrap();
    assert_eq!(p.tensors[0].n_bytes, 4);
    assert_eq!(p.tensors[1].n_bytes, 0);
}

#[test]
fn metadata_value_count_is_bounded() {
    // 2^24 + 1 u8 elements: few bytes each in the file, 32 bytes each in memory.
    let n = baicai_gguf::MAX_METADATA_VALUES + 1;
    let f = Raw::header(3, 0, 1)
        .str("big")
        .u32(9)
        .u32(0)
        .u64(n)
        .bytes(&vec![0; n as usize])
        .data(0);
    assert_error_contains(
        &f,
        "metadata key 0 ('big'): array count 16777217 takes the metadata past 16777216 values",
    );
}

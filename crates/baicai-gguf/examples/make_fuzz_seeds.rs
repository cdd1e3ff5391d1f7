//! Writes the seed corpus for the `gguf_parse` fuzz target: a few tiny valid files made with
//! [`GgufWriter`], and truncated and corrupted copies of them.
//!
//! `cargo run --release -p baicai-gguf --example make_fuzz_seeds -- fuzz/corpus/gguf_parse`

use std::path::Path;

use baicai_gguf::{parse, write_to_vec, GgmlType, GgufError, GgufWriter, TensorSpec, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: make_fuzz_seeds <output dir>")?;
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir)?;
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes);

    let metadata = write_to_vec(&every_value_type(), &[])?;
    write("valid_metadata_all_types", &metadata)?;
    let tensors = tiny_model()?;
    write("valid_tiny_model", &tensors)?;
    let none: [(&str, Value); 0] = [];
    let v2 = GgufWriter::begin_with_version(
        Vec::new(),
        2,
        &[("general.alignment", Value::U32(64))],
        &[],
    )?;
    write("valid_v2_align64", &v2.finish()?)?;
    write("valid_empty", &write_to_vec(&none, &[])?)?;

    // Truncations at the end of the header, inside the metadata, inside the tensor infos and
    // inside the data.
    let p = parse(&tensors)?;
    for (name, len) in [
        ("truncated_header", 24),
        ("truncated_metadata", 24 + (p.data_offset as usize - 24) / 3),
        ("truncated_infos", p.data_offset as usize - 20),
        ("truncated_data", tensors.len() - 40),
    ] {
        write(name, &tensors[..len])?;
    }
    // Corruptions: a flipped version, a huge tensor count, and a byte flipped every 37 bytes.
    let mut v1 = tensors.clone();
    v1[4] = 1;
    write("corrupt_version_1", &v1)?;
    let mut huge = tensors.clone();
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    write("corrupt_tensor_count", &huge)?;
    let mut flipped = tensors.clone();
    for b in flipped.iter_mut().step_by(37) {
        *b ^= 0x5a;
    }
    write("corrupt_flipped_bytes", &flipped)?;
    Ok(())
}

fn every_value_type() -> Vec<(String, Value)> {
    let s = |x: &str| Value::String(x.to_string());
    [
        ("general.architecture", s("tiny")),
        ("a.u8", Value::U8(1)),
        ("a.i8", Value::I8(-1)),
        ("a.u16", Value::U16(2)),
        ("a.i16", Value::I16(-2)),
        ("a.u32", Value::U32(3)),
        ("a.i32", Value::I32(-3)),
        ("a.f32", Value::F32(0.5)),
        ("a.bool", Value::Bool(true)),
        ("a.u64", Value::U64(4)),
        ("a.i64", Value::I64(-4)),
        ("a.f64", Value::F64(0.25)),
        ("a.strings", Value::Array(vec![s("<s>"), s("é"), s("")])),
        (
            "a.floats",
            Value::Array(vec![Value::F32(1.0), Value::F32(-1.0)]),
        ),
        (
            "a.nested",
            Value::Array(vec![
                Value::Array(vec![Value::I32(1)]),
                Value::Array(vec![s("x")]),
            ]),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn tiny_model() -> Result<Vec<u8>, GgufError> {
    let md = [
        ("general.architecture", Value::String("tiny".into())),
        ("tiny.block_count", Value::U32(1)),
    ];
    let specs = [
        TensorSpec::new("token_embd.weight", &[8, 4], GgmlType::F16),
        TensorSpec::new("blk.0.attn_q.weight", &[256, 1], GgmlType::Q4_K),
        TensorSpec::new("blk.0.ffn_down.weight", &[32, 2], GgmlType::Q8_0),
        TensorSpec::new("output_norm.weight", &[8], GgmlType::F32),
    ];
    let data: Vec<Vec<u8>> = specs
        .iter()
        .map(|s| vec![0x11; s.ggml_type.tensor_bytes(&s.shape).unwrap_or(0) as usize])
        .collect();
    let pairs: Vec<(TensorSpec, &[u8])> = specs
        .iter()
        .cloned()
        .zip(data.iter().map(Vec::as_slice))
        .collect();
    write_to_vec(&md, &pairs)
}

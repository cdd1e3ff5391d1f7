//! Reads a file written by gguf-py (llama.cpp's Python writer): an independent writer checks
//! the reader. The fixture is made by `tests/fixtures/make_gguf_py_fixture.py`.

use baicai_gguf::{GgmlType, Gguf, Value};

#[test]
fn reads_a_file_written_by_gguf_py() {
    let bytes = include_bytes!("fixtures/gguf_py_tiny.bin").to_vec();
    let g = Gguf::from_bytes(bytes).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.require_str("general.architecture").unwrap(), "tiny");
    assert_eq!(g.get("tiny.block_count"), Some(&Value::U32(2)));
    assert_eq!(
        g.require_f32("tiny.attention.layer_norm_rms_epsilon")
            .unwrap(),
        1e-6
    );
    assert_eq!(g.get_bool("tiny.flag").unwrap(), Some(true));
    assert_eq!(g.get("tiny.i8"), Some(&Value::I8(-5)));
    assert_eq!(g.require_u64("tiny.u64").unwrap(), 1 << 40);
    assert_eq!(g.get("tiny.f64"), Some(&Value::F64(0.125)));
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap(),
        Some(vec!["<s>", "hé", "世界"])
    );
    assert_eq!(g.get_i64_array("tiny.ints").unwrap(), Some(vec![1, -2, 3]));

    let names: Vec<&str> = g.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["token_embd.weight", "norm.weight", "blk.0.ffn_down.weight"]
    );
    let embd = g.tensor("token_embd.weight").unwrap();
    // numpy shape (3, 4) is ggml shape [4, 3].
    assert_eq!(
        (embd.ggml_type, embd.shape.as_slice()),
        (GgmlType::F32, &[4u64, 3][..])
    );
    let values: Vec<f32> = g
        .tensor_data(embd)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(values, (0..12).map(|i| i as f32).collect::<Vec<_>>());
    let norm = g.tensor("norm.weight").unwrap();
    assert_eq!((norm.ggml_type, norm.n_bytes), (GgmlType::F16, 8));
    let q = g.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!(
        (q.ggml_type, q.shape.as_slice(), q.n_bytes),
        (GgmlType::Q8_0, &[32u64, 2][..], 68)
    );
    assert!(g
        .tensor_data(q)
        .chunks_exact(34)
        .all(|b| b[2..].iter().all(|&x| x == 7)));
}

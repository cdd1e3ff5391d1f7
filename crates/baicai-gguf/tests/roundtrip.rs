//! Writer → reader round trips.

use baicai_gguf::{parse, write_to_vec, GgmlType, Gguf, GgufError, GgufWriter, TensorSpec, Value};

fn all_value_types() -> Vec<(String, Value)> {
    let kv = |k: &str, v: Value| (k.to_string(), v);
    vec![
        kv("t.u8", Value::U8(200)),
        kv("t.i8", Value::I8(-100)),
        kv("t.u16", Value::U16(60000)),
        kv("t.i16", Value::I16(-30000)),
        kv("t.u32", Value::U32(4_000_000_000)),
        kv("t.i32", Value::I32(-2_000_000_000)),
        kv("t.f32", Value::F32(1.5e-3)),
        kv("t.bool", Value::Bool(true)),
        kv("t.string", Value::String("héllo, 世界".into())),
        kv("t.u64", Value::U64(u64::MAX)),
        kv("t.i64", Value::I64(i64::MIN)),
        kv("t.f64", Value::F64(-2.25e300)),
        kv("t.empty_string", Value::String(String::new())),
        kv("t.array_u8", Value::Array(vec![Value::U8(1), Value::U8(2)])),
        kv(
            "t.array_i32",
            Value::Array(vec![Value::I32(-1), Value::I32(7)]),
        ),
        kv(
            "t.array_f32",
            Value::Array(vec![Value::F32(0.5), Value::F32(-3.0)]),
        ),
        kv(
            "t.array_bool",
            Value::Array(vec![Value::Bool(false), Value::Bool(true)]),
        ),
        kv(
            "t.array_string",
            Value::Array(vec![Value::String("a".into()), Value::String("".into())]),
        ),
        kv("t.array_u64", Value::Array(vec![Value::U64(1 << 40)])),
        kv("t.array_i64", Value::Array(vec![Value::I64(-(1 << 40))])),
        kv("t.array_f64", Value::Array(vec![Value::F64(0.1)])),
        kv("t.array_u16", Value::Array(vec![Value::U16(9)])),
        kv("t.array_i16", Value::Array(vec![Value::I16(-9)])),
        kv("t.array_i8", Value::Array(vec![Value::I8(-9)])),
        kv("t.array_u32", Value::Array(vec![Value::U32(9)])),
        kv("t.array_empty", Value::Array(vec![])),
        kv(
            "t.array_nested",
            Value::Array(vec![
                Value::Array(vec![Value::U32(1), Value::U32(2)]),
                Value::Array(vec![Value::String("x".into())]),
                Value::Array(vec![Value::Array(vec![Value::F64(1.0)])]),
            ]),
        ),
    ]
}

#[test]
fn every_value_type_round_trips() {
    let md = all_value_types();
    let bytes = write_to_vec(&md, &[]).unwrap();
    let g = Gguf::from_bytes(bytes).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.metadata().len(), md.len());
    for (k, v) in &md {
        assert_eq!(g.get(k), Some(v), "{k}");
    }
    let order: Vec<&str> = g
        .metadata_keys_in_file_order()
        .iter()
        .map(String::as_str)
        .collect();
    let want: Vec<&str> = md.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(order, want);
}

#[test]
fn typed_accessors_convert_and_reject() {
    let g = Gguf::from_bytes(write_to_vec(&all_value_types(), &[]).unwrap()).unwrap();
    assert_eq!(g.get_u64("t.u8").unwrap(), Some(200));
    assert_eq!(g.get_u64("t.u64").unwrap(), Some(u64::MAX));
    assert!(matches!(
        g.get_u64("t.i8"),
        Err(GgufError::WrongType { found: "i8", .. })
    ));
    assert!(matches!(
        g.get_u64("t.string"),
        Err(GgufError::WrongType { .. })
    ));
    assert_eq!(g.get_u64("t.missing").unwrap(), None);
    assert!(matches!(
        g.require_u64("t.missing"),
        Err(GgufError::MissingKey { .. })
    ));
    assert_eq!(g.get_f32("t.f32").unwrap(), Some(1.5e-3));
    assert_eq!(g.get_f32("t.u16").unwrap(), Some(60000.0));
    assert_eq!(g.get_bool("t.bool").unwrap(), Some(true));
    assert_eq!(g.require_str("t.string").unwrap(), "héllo, 世界");
    assert_eq!(
        g.get_str_array("t.array_string").unwrap(),
        Some(vec!["a", ""])
    );
    assert_eq!(
        g.get_f32_array("t.array_i32").unwrap(),
        Some(vec![-1.0, 7.0])
    );
    assert_eq!(g.get_i64_array("t.array_u64").unwrap(), Some(vec![1 << 40]));
    assert_eq!(g.get_i64_array("t.array_empty").unwrap(), Some(vec![]));
    let e = g.get_i64_array("t.array_string").unwrap_err();
    assert_eq!(
        e.to_string(),
        "metadata key 't.array_string' has type array of string, expected array of i64"
    );
    assert!(g.get_str_array("t.u8").is_err());
}

#[test]
fn tensors_round_trip_with_alignment_and_chunked_writes() {
    let specs = [
        TensorSpec::new("a", &[3], GgmlType::F32),
        TensorSpec::new("empty", &[0, 4], GgmlType::F16),
        TensorSpec::new("q", &[64, 2], GgmlType::Q8_0),
        TensorSpec::new("b", &[5, 1, 1, 2], GgmlType::I8),
    ];
    let data: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (0..s.ggml_type.tensor_bytes(&s.shape).unwrap())
                .map(|j| (i * 31 + j as usize) as u8)
                .collect()
        })
        .collect();
    let md = [("general.alignment", Value::U32(64))];
    let mut w = GgufWriter::begin(Vec::new(), &md, &specs).unwrap();
    w.write_tensor_data("a", &data[0]).unwrap();
    // Chunks of one tensor, and the empty tensor needs no call.
    let (q1, q2) = data[2].split_at(50);
    w.write_tensor_data("q", q1).unwrap();
    assert!(w.write_tensor_data("b", &data[3]).is_err(), "out of order");
    w.write_tensor_data("q", q2).unwrap();
    w.write_tensor_data("b", &data[3]).unwrap();
    let bytes = w.finish().unwrap();

    let p = parse(&bytes).unwrap();
    assert_eq!(p.alignment, 64);
    assert_eq!(p.data_offset % 64, 0);
    let g = Gguf::from_bytes(bytes).unwrap();
    for (s, d) in specs.iter().zip(&data) {
        let t = g.tensor(&s.name).unwrap();
        assert_eq!((&t.shape, t.ggml_type), (&s.shape, s.ggml_type));
        assert_eq!(t.offset % 64, 0);
        assert_eq!(g.tensor_data(t), &d[..], "{}", s.name);
    }
    assert_eq!(
        g.tensors()
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "empty", "q", "b"]
    );
}

#[test]
fn writer_rejects_what_a_reader_would_reject() {
    let t = |s: &[u64], ty| TensorSpec::new("t", s, ty);
    let none: [(&str, Value); 0] = [];
    assert!(GgufWriter::begin(Vec::new(), &none, &[t(&[100], GgmlType::Q4_K)]).is_err());
    assert!(GgufWriter::begin(Vec::new(), &none, &[t(&[1, 1, 1, 1, 1], GgmlType::F32)]).is_err());
    assert!(GgufWriter::begin(
        Vec::new(),
        &none,
        &[t(&[1], GgmlType::F32), t(&[1], GgmlType::F32)]
    )
    .is_err());
    let dup = [("k", Value::U8(1)), ("k", Value::U8(2))];
    assert!(GgufWriter::begin(Vec::new(), &dup, &[]).is_err());
    let mixed = [("k", Value::Array(vec![Value::U8(1), Value::I8(2)]))];
    assert!(GgufWriter::begin(Vec::new(), &mixed, &[]).is_err());
    let align = [("general.alignment", Value::U32(3))];
    assert!(GgufWriter::begin(Vec::new(), &align, &[]).is_err());
    let w = GgufWriter::begin(Vec::new(), &none, &[t(&[2], GgmlType::F32)]).unwrap();
    let e = w.finish().unwrap_err().to_string();
    assert!(e.contains("tensor 't' has 0 of its 8 bytes written"), "{e}");
}

#[test]
fn version_2_is_read_and_version_1_is_rejected() {
    let none: [(&str, Value); 0] = [];
    let v2 = GgufWriter::begin_with_version(Vec::new(), 2, &[("x", Value::U8(1))], &[])
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(parse(&v2).unwrap().version, 2);
    let v1 = GgufWriter::begin_with_version(Vec::new(), 1, &none, &[])
        .unwrap()
        .finish()
        .unwrap();
    let e = parse(&v1).unwrap_err().to_string();
    assert!(e.contains("version 1 is not supported"), "{e}");
    let v4 = GgufWriter::begin_with_version(Vec::new(), 4, &none, &[])
        .unwrap()
        .finish()
        .unwrap();
    assert!(parse(&v4).unwrap_err().to_string().contains("version 4"));
}

//! Legacy formats against the `gguf` Python package: dequantization of random and real model
//! blocks, and Q8_0/BF16/F16 quantization, bit for bit. Fixture: `tests/data/legacy_gguf.json`,
//! made by `tools/fixtures_legacy.py`.

mod fixture;

use baicai_kernels::dispatch::{dequant_fn, quant_fn, Isa};
use baicai_kernels::DType;
use fixture::{f32s, hex};

fn dtype(name: &str) -> DType {
    *DType::ALL
        .iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("unknown type {name}"))
}

fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    if Isa::detect() == Isa::Avx2 {
        v.push(Isa::Avx2);
    }
    v
}

#[test]
fn dequantization_matches_gguf_py_bit_for_bit() {
    let fx = fixture::load("legacy_gguf.json");
    let cases = fx["dequantize"].as_array().unwrap();
    let mut real = 0;
    for case in cases {
        let (source, t) = (
            case["source"].as_str().unwrap(),
            dtype(case["type"].as_str().unwrap()),
        );
        let n = case["n"].as_u64().unwrap() as usize;
        let bytes = hex(case["bytes"].as_str().unwrap());
        let want = f32s(case["values"].as_str().unwrap());
        assert_eq!(want.len(), n);
        real += usize::from(source != "random");
        for isa in isas() {
            let mut got = vec![f32::NAN; n];
            dequant_fn(t, isa)(&bytes, &mut got);
            if let Some(i) = (0..n).find(|&i| got[i] != want[i]) {
                panic!(
                    "{} {source} {isa:?}: first difference at value {i} (block {}): got {} want {}",
                    t.name(),
                    i / t.block_len(),
                    got[i],
                    want[i]
                );
            }
        }
    }
    assert!(real >= 2, "the fixture should hold real Q5_0 and Q8_0 rows");
}

#[test]
fn quantization_matches_gguf_py_bit_for_bit() {
    let fx = fixture::load("legacy_gguf.json");
    for case in fx["quantize"].as_array().unwrap() {
        let t = dtype(case["type"].as_str().unwrap());
        let x = f32s(case["input"].as_str().unwrap());
        let want = hex(case["bytes"].as_str().unwrap());
        for isa in isas() {
            let mut got = vec![0u8; t.row_bytes(x.len()).unwrap()];
            quant_fn(t, isa)(&x, &mut got);
            if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
                panic!(
                    "{} {isa:?} (input amax {}): first differing byte {i} (block {}): got {:#04x} want {:#04x}",
                    t.name(),
                    x.iter().fold(0.0f32, |m, v| m.max(v.abs())),
                    i / t.block_bytes(),
                    got[i],
                    want[i]
                );
            }
        }
    }
}

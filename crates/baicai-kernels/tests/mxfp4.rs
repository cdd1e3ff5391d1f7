//! MXFP4 against its references: dequantization against gguf-py bit for bit (extreme scales
//! included), the checkpoints' packed form repacked as llama.cpp's converter does and
//! dequantized to transformers' values, and dot products over blocks of every extreme scale
//! without a panic. Fixture: `tests/data/mxfp4.json`, made by `tools/fixtures_mxfp4.py`. (The SIMD
//! paths against the scalar reference: `legacy_kernels.rs` and `matmul.rs`, which cover MXFP4
//! with the other 32-value formats.)

mod fixture;

use baicai_kernels::dispatch::{dequant_fn, dot_fn, quant_fn, tile_fns, Isa};
use baicai_kernels::quant::mxfp4::{repack_mxfp4, BlockMXFP4};
use baicai_kernels::DType;
use fixture::{f32s, hex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    if Isa::detect() == Isa::Avx2 {
        v.push(Isa::Avx2);
    }
    v
}

fn dequant(isa: Isa, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n];
    dequant_fn(DType::MXFP4, isa)(bytes, &mut out);
    out
}

/// Panics at the first value whose bits differ (or, with `signed_zeros: false`, whose value
/// differs: `-0.0 == 0.0`), naming the block and its scale byte.
fn assert_values(label: &str, bytes: &[u8], got: &[f32], want: &[f32], signed_zeros: bool) {
    assert_eq!(got.len(), want.len(), "{label}: lengths");
    let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (!signed_zeros && a == b);
    if let Some(i) = (0..got.len()).find(|&i| !same(got[i], want[i])) {
        let b = i / 32;
        panic!(
            "{label}: first difference at value {i} (block {b}, e = {}): got {} want {}",
            bytes[b * 17],
            got[i],
            want[i]
        );
    }
}

#[test]
fn dequantization_matches_gguf_py_bit_for_bit_at_every_scale_byte() {
    let fx = fixture::load("mxfp4.json");
    let cases = fx["gguf"].as_array().unwrap();
    assert!(cases.iter().any(|c| c["name"] == "every_scale"));
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let n = case["n"].as_u64().unwrap() as usize;
        let bytes = hex(case["bytes"].as_str().unwrap());
        let want = f32s(case["values"].as_str().unwrap());
        for isa in isas() {
            let got = dequant(isa, &bytes, n);
            assert_values(&format!("{name} {isa:?}"), &bytes, &got, &want, true);
        }
    }
}

#[test]
fn extreme_scales_give_subnormals_and_infinities_as_ggml() {
    // Code 1 is the doubled value 1, code 7 is 12.
    let block = |e: u8| {
        let mut b = [0u8; 17];
        b[0] = e;
        b[1] = 0x71;
        b
    };
    let values = |e: u8| dequant(Isa::Scalar, &block(e), 32);
    assert_eq!(values(0)[0], 2f32.powi(-128));
    assert_eq!(values(1)[0], 2f32.powi(-127));
    assert_eq!(values(128)[..2], [1.0, 0.0]);
    assert_eq!(values(128)[16], 12.0);
    assert_eq!(values(252)[16], 12.0 * 2f32.powi(124));
    assert_eq!(values(253)[16], f32::INFINITY);
    // ggml does not treat 255 as NaN: the half scale is 2^127, zero codes stay zero.
    assert_eq!(values(255)[..2], [2f32.powi(127), 0.0]);
    assert_eq!(values(255)[16], f32::INFINITY);
}

#[test]
fn checkpoint_repack_equals_the_llamacpp_converter_bytes() {
    let fx = fixture::load("mxfp4.json");
    let c = &fx["checkpoint"];
    let blocks = hex(c["blocks"].as_str().unwrap());
    let scales = hex(c["scales"].as_str().unwrap());
    let want = hex(c["gguf_bytes"].as_str().unwrap());
    let got = repack_mxfp4(&blocks, &scales);
    assert_eq!(got.len(), want.len());
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "first differing byte {i} (block {}, byte {}): got {:#04x} want {:#04x}",
            i / 17,
            i % 17,
            got[i],
            want[i]
        );
    }
}

#[test]
fn repacked_checkpoint_dequantizes_to_the_transformers_values() {
    let fx = fixture::load("mxfp4.json");
    let c = &fx["checkpoint"];
    let shape = ["experts", "rows", "cols"].map(|k| c[k].as_u64().unwrap() as usize);
    let n = shape.iter().product();
    let packed = repack_mxfp4(
        &hex(c["blocks"].as_str().unwrap()),
        &hex(c["scales"].as_str().unwrap()),
    );
    let transformers = f32s(c["values"].as_str().unwrap());
    let gguf_py = f32s(c["gguf_values"].as_str().unwrap());
    for isa in isas() {
        let got = dequant(isa, &packed, n);
        // transformers' code 8 is -0.0 where ggml's is +0.0; otherwise the same bits.
        assert_values(
            &format!("transformers {isa:?}"),
            &packed,
            &got,
            &transformers,
            false,
        );
        assert_values(&format!("gguf-py {isa:?}"), &packed, &got, &gguf_py, true);
    }
}

#[test]
fn repack_keeps_groups_in_order() {
    // Two groups: the second block must come from the second 16 bytes and scale.
    let packed: Vec<u8> = (0..32).map(|i| i as u8).collect();
    let out = repack_mxfp4(&packed, &[3, 4]);
    let blocks = baicai_kernels::quant::as_blocks::<BlockMXFP4>(&out);
    assert_eq!([blocks[0].e, blocks[1].e], [3, 4]);
    let p1: [u8; 16] = packed[16..].try_into().unwrap();
    assert_eq!(blocks[1], BlockMXFP4::from_packed(4, &p1));
}

#[test]
#[should_panic(expected = "expected 16 per scale")]
fn repack_rejects_packed_bytes_that_do_not_match_the_scales() {
    repack_mxfp4(&[0; 32], &[3]);
}

/// Dot products (scalar, SIMD, register tiles) over blocks with the extreme scale bytes never
/// panic; where no sum can overflow (e ≤ 240: 128 values of at most `12 * 2^112`, activations
/// below 1) they are finite and the SIMD paths agree with the scalar reference.
#[test]
fn dots_over_extreme_scales_never_panic() {
    let mut rng = StdRng::seed_from_u64(0xe8);
    let n = 128;
    let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let mut a = vec![0u8; DType::Q8_0.row_bytes(n).unwrap()];
    quant_fn(DType::Q8_0, Isa::Scalar)(&x, &mut a);
    for e in [0u8, 1, 2, 127, 240, 252, 253, 254, 255] {
        let mut w = vec![0u8; DType::MXFP4.row_bytes(n).unwrap()];
        rng.fill(&mut w[..]);
        for b in w.chunks_exact_mut(17) {
            b[0] = e;
        }
        let scalar = dot_fn(DType::MXFP4, Isa::Scalar)(n, &w, &a);
        let simd = dot_fn(DType::MXFP4, Isa::detect())(n, &w, &a);
        if let Some(tiles) = tile_fns(DType::MXFP4, Isa::detect()) {
            let t = (tiles.tile)(n, [&w, &w], [&a, &a, &a, &a]);
            assert_eq!(t[1][3].to_bits(), simd.to_bits(), "e = {e}");
        }
        if e <= 240 {
            assert!(scalar.is_finite() && simd.is_finite(), "e = {e}");
            let tol = 1e-5 * scalar.abs() + f32::MIN_POSITIVE;
            assert!((scalar - simd).abs() <= tol, "e = {e}: {scalar} vs {simd}");
        }
    }
}

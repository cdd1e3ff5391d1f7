//! K-quant kernels: AVX2 against the scalar references, the scalar dot products against f64 sums
//! of dequantized values, dequantization against gguf-py (fixture from tools/fixtures_kquants.py),
//! and Q8_K quantization against ggml's algorithm.

mod tile_check;

use baicai_kernels::dispatch::{dequant_fn, dot_fn, quant_fn, Isa};
use baicai_kernels::dtype::{DType, QK_K};
use baicai_kernels::quant::kquants::{
    as_blocks, as_blocks_mut, dequantize_row_q8k, quantize_row_q8k, BlockIq4Xs, BlockQ2K, BlockQ3K,
    BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K,
};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The weight types with a dot product against Q8_K.
const WEIGHT_TYPES: [DType; 6] = [
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::IQ4_XS,
];

/// Row lengths: one block, two, and the FFN width of Qwen2.5-0.5B (19 blocks).
const LENGTHS: [usize; 4] = [256, 512, 4864, 8192];

fn avx2() -> bool {
    let ok = Isa::detect() == Isa::Avx2;
    if !ok {
        eprintln!("skipping: this CPU lacks avx2/fma/f16c");
    }
    ok
}

/// A finite, moderate f16 scale: ±[1e-3, 1], log-uniform.
fn random_scale(rng: &mut StdRng) -> [u8; 2] {
    let mag = 10f32.powf(rng.gen_range(-3.0..0.0));
    let sign = if rng.gen::<bool>() { 1.0 } else { -1.0 };
    f16::from_f32(sign * mag).to_bits().to_le_bytes()
}

/// `n` values of `dtype` as random bytes with finite scales.
fn random_weights(rng: &mut StdRng, dtype: DType, n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; dtype.row_bytes(n).unwrap()];
    rng.fill(&mut bytes[..]);
    match dtype {
        DType::Q2_K => as_blocks_mut::<BlockQ2K>(&mut bytes)
            .iter_mut()
            .for_each(|b| {
                b.d = random_scale(rng);
                b.dmin = random_scale(rng);
            }),
        DType::Q3_K => as_blocks_mut::<BlockQ3K>(&mut bytes)
            .iter_mut()
            .for_each(|b| b.d = random_scale(rng)),
        DType::Q4_K => as_blocks_mut::<BlockQ4K>(&mut bytes)
            .iter_mut()
            .for_each(|b| {
                b.d = random_scale(rng);
                b.dmin = random_scale(rng);
            }),
        DType::Q5_K => as_blocks_mut::<BlockQ5K>(&mut bytes)
            .iter_mut()
            .for_each(|b| {
                b.d = random_scale(rng);
                b.dmin = random_scale(rng);
            }),
        DType::Q6_K => as_blocks_mut::<BlockQ6K>(&mut bytes)
            .iter_mut()
            .for_each(|b| b.d = random_scale(rng)),
        DType::IQ4_XS => as_blocks_mut::<BlockIq4Xs>(&mut bytes)
            .iter_mut()
            .for_each(|b| b.d = random_scale(rng)),
        _ => unreachable!("{dtype:?}"),
    }
    bytes
}

/// Random activations: a bell-ish bulk, occasional outliers, a random overall magnitude, and
/// now and then an all-zero block.
fn random_activations(rng: &mut StdRng, n: usize) -> Vec<f32> {
    let scale = 10f32.powf(rng.gen_range(-3.0..2.0));
    let mut x: Vec<f32> = (0..n)
        .map(|_| {
            let bulk: f32 = (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum();
            let outlier = if rng.gen_ratio(1, 64) {
                rng.gen_range(-20.0..20.0)
            } else {
                0.0
            };
            scale * (bulk + outlier)
        })
        .collect();
    if n > QK_K && rng.gen_ratio(1, 4) {
        x[..QK_K].fill(0.0);
    }
    x
}

fn quantize_q8k(x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; DType::Q8_K.row_bytes(x.len()).unwrap()];
    quantize_row_q8k(x, &mut out);
    out
}

/// Q8_K bytes with raw random values over the full i8 range (−128 included: `maddubs` must not
/// saturate) and consistent `bsums`.
fn raw_q8k(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; DType::Q8_K.row_bytes(n).unwrap()];
    for b in as_blocks_mut::<BlockQ8K>(&mut bytes) {
        b.d = (10f32.powf(rng.gen_range(-4.0..0.0))).to_le_bytes();
        rng.fill(&mut b.qs[..]);
        for (s, q) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = q.iter().map(|&v| i16::from(v)).sum::<i16>().to_le_bytes();
        }
    }
    bytes
}

fn dequant(dtype: DType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    dequant_fn(dtype, Isa::Scalar)(bytes, &mut out);
    out
}

/// `Σ |w_i a_i|` in f64, the scale against which dot-product errors are measured.
fn magnitude(dtype: DType, w: &[u8], a: &[u8], n: usize) -> f64 {
    let (w, a) = (dequant(dtype, w, n), dequant(DType::Q8_K, a, n));
    w.iter()
        .zip(&a)
        .map(|(&w, &a)| (f64::from(w) * f64::from(a)).abs())
        .sum()
}

#[test]
fn avx2_dot_products_match_scalar_references() {
    if !avx2() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(1);
    for dtype in WEIGHT_TYPES {
        let (scalar, simd) = (dot_fn(dtype, Isa::Scalar), dot_fn(dtype, Isa::Avx2));
        for n in LENGTHS {
            for trial in 0..40 {
                let w = random_weights(&mut rng, dtype, n);
                // IQ4_XS goes through sign/abs, defined for activations in [-127, 127] only,
                // which is what the quantizer produces; the others also see raw bytes.
                let a = if dtype == DType::IQ4_XS || trial % 2 == 0 {
                    quantize_q8k(&random_activations(&mut rng, n))
                } else {
                    raw_q8k(&mut rng, n)
                };
                let (want, got) = (scalar(n, &w, &a), simd(n, &w, &a));
                let tol = 1e-6 * magnitude(dtype, &w, &a, n) + 1e-30;
                assert!(
                    (f64::from(want) - f64::from(got)).abs() <= tol,
                    "{} n={n} trial {trial}: scalar {want} avx2 {got} (tolerance {tol})",
                    dtype.name()
                );
            }
        }
    }
}

#[test]
fn register_tiles_equal_the_dot_product_bit_for_bit() {
    use baicai_kernels::dispatch::tile_fns;
    use baicai_kernels::kernel::{COLS_MAX, TILE_ROWS};
    if !avx2() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(0x711e);
    for dtype in WEIGHT_TYPES {
        let Some(tiles) = tile_fns(dtype, Isa::Avx2) else {
            continue;
        };
        let dot = dot_fn(dtype, Isa::Avx2);
        for n in LENGTHS {
            // More rows and tokens than a tile takes, for the small-batch kernels (19 rows: sets
            // with whole groups of 8 and rows left over).
            let w: Vec<Vec<u8>> = (0..TILE_ROWS + 17)
                .map(|_| random_weights(&mut rng, dtype, n))
                .collect();
            // Raw activations too: -128 must not saturate differently in a tile.
            let a: Vec<Vec<u8>> = (0..COLS_MAX)
                .map(|t| match t % 2 {
                    0 => quantize_q8k(&random_activations(&mut rng, n)),
                    _ => raw_q8k(&mut rng, n),
                })
                .collect();
            // The pair meets a raw activation row (index 1).
            tile_check::check_tiles(tiles, dot, n, &w, &a, 1, &format!("{} n={n}", dtype.name()));
        }
    }
}

#[test]
fn scalar_dot_products_equal_f64_sum_of_dequantized_values() {
    let mut rng = StdRng::seed_from_u64(2);
    for dtype in WEIGHT_TYPES {
        let dot = dot_fn(dtype, Isa::Scalar);
        for n in LENGTHS {
            for trial in 0..10 {
                let w = random_weights(&mut rng, dtype, n);
                let a = quantize_q8k(&random_activations(&mut rng, n));
                let (wf, af) = (dequant(dtype, &w, n), dequant(DType::Q8_K, &a, n));
                let want: f64 = wf
                    .iter()
                    .zip(&af)
                    .map(|(&w, &a)| f64::from(w) * f64::from(a))
                    .sum();
                let got = f64::from(dot(n, &w, &a));
                // f32 dequantization rounds each value (and d*sc*q - dmin*m can cancel), the
                // dot product rounds per block: both are within a few ulps of the magnitude.
                let tol = 1e-5 * magnitude(dtype, &w, &a, n) + 1e-30;
                assert!(
                    (want - got).abs() <= tol,
                    "{} n={n} trial {trial}: f64 sum {want} dot {got} (tolerance {tol})",
                    dtype.name()
                );
            }
        }
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn dtype_named(name: &str) -> DType {
    DType::ALL
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("type {name}"))
}

/// gguf-py computes in float32 with the same operations in the same order (`d*sc` first, then
/// `*q`, then `- dmin*m`), and neither side fuses multiply-adds, so the values match bit for bit.
#[test]
fn dequantization_matches_gguf_py_bit_for_bit() {
    let text = include_str!("data/kquants_dequant.json");
    let doc: serde_json::Value = serde_json::from_str(text).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    let mut types_seen = std::collections::HashSet::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let dtype = dtype_named(case["type"].as_str().unwrap());
        let n = case["n"].as_u64().unwrap() as usize;
        let bytes = unhex(case["bytes"].as_str().unwrap());
        let want: Vec<f32> = unhex(case["values_f32le"].as_str().unwrap())
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(want.len(), n, "{name}");
        for isa in [Isa::Scalar, Isa::detect()] {
            let mut got = vec![0f32; n];
            dequant_fn(dtype, isa)(&bytes, &mut got);
            if let Some(i) = (0..n).find(|&i| got[i].to_bits() != want[i].to_bits()) {
                panic!(
                    "{name} ({isa:?}): first difference at value {i} (block {}): gguf-py {} baicai {}",
                    i / QK_K,
                    want[i],
                    got[i]
                );
            }
        }
        types_seen.insert(dtype);
    }
    assert_eq!(types_seen.len(), 7, "fixture covers all seven types");
}

#[test]
fn blocks_parse_from_unaligned_byte_slices() {
    let mut rng = StdRng::seed_from_u64(3);
    let n = 1024;
    for dtype in WEIGHT_TYPES {
        let w = random_weights(&mut rng, dtype, n);
        let a = quantize_q8k(&random_activations(&mut rng, n));
        // Shift both rows by one byte inside a larger buffer, as an mmap offset would.
        let shifted = |v: &[u8]| [&[0u8][..], v].concat();
        let (w1, a1) = (shifted(&w), shifted(&a));
        assert_eq!(
            dequant(dtype, &w, n),
            dequant(dtype, &w1[1..], n),
            "{}",
            dtype.name()
        );
        for isa in [Isa::Scalar, Isa::detect()] {
            let dot = dot_fn(dtype, isa);
            assert_eq!(
                dot(n, &w, &a),
                dot(n, &w1[1..], &a1[1..]),
                "{} {isa:?}",
                dtype.name()
            );
        }
    }
}

/// Hand-worked blocks for ggml's `quantize_row_q8_K_ref`: the first value of largest magnitude
/// keeps its sign and maps to -127; rounding is half to even; an all-zero block is all zero.
#[test]
fn q8k_quantization_follows_ggml_algorithm_on_known_inputs() {
    let mut x = vec![0f32; 3 * QK_K];
    // Block 0: max |x| = 2 first reached by -2, so iscale = -127 / -2 = 63.5.
    let b0 = &mut x[..QK_K];
    let inputs = [
        1.0,
        0.5,
        0.25,
        1.0 / 128.0,
        -1.0,
        1.5,
        -1.5,
        -2.0,
        2.0,
        3.0 / 127.0,
    ];
    b0[..inputs.len()].copy_from_slice(&inputs);
    // 63.5 → 64 and -63.5 → -64 (ties to even), 31.75 → 32, 15.875 → 16, 0.496 → 0,
    // 95.25 → 95, 2 → 127, 1.5 (3/127 * 63.5) → 2.
    let expect0: [i8; 10] = [64, 32, 16, 0, -64, 95, -95, -127, 127, 2];
    // Block 1: all zero. Block 2: max |x| = 4 first reached by +4, so iscale = -31.75.
    let b2 = &mut x[2 * QK_K..];
    b2[..6].copy_from_slice(&[4.0, -4.0, 1.0, 0.5, 2.0, -2.0]);
    let expect2: [i8; 6] = [-127, 127, -32, -16, -64, 64];

    let isas: &[Isa] = if Isa::detect() == Isa::Avx2 {
        &[Isa::Scalar, Isa::Avx2]
    } else {
        &[Isa::Scalar]
    };
    for &isa in isas {
        let mut out = vec![0xAAu8; DType::Q8_K.row_bytes(x.len()).unwrap()];
        quant_fn(DType::Q8_K, isa)(&x, &mut out);
        let blocks = as_blocks::<BlockQ8K>(&out);

        let mut want0 = [0i8; QK_K];
        want0[..10].copy_from_slice(&expect0);
        assert_eq!(blocks[0].qs, want0, "{isa:?}");
        assert_eq!(
            blocks[0].d().to_bits(),
            (1.0f32 / 63.5).to_bits(),
            "{isa:?}"
        );
        let s0: i16 = expect0.iter().map(|&v| i16::from(v)).sum();
        assert_eq!(blocks[0].bsum(0), s0, "{isa:?}");
        assert!((1..16).all(|j| blocks[0].bsum(j) == 0), "{isa:?}");

        assert_eq!(blocks[1].d(), 0.0, "{isa:?}");
        assert!(blocks[1].qs.iter().all(|&q| q == 0), "{isa:?}");
        assert!((0..16).all(|j| blocks[1].bsum(j) == 0), "{isa:?}");

        let mut want2 = [0i8; QK_K];
        want2[..6].copy_from_slice(&expect2);
        assert_eq!(blocks[2].qs, want2, "{isa:?}");
        assert_eq!(
            blocks[2].d().to_bits(),
            (1.0f32 / -31.75).to_bits(),
            "{isa:?}"
        );
        assert_eq!(blocks[2].bsum(0), -127 + 127 - 32 - 16 - 64 + 64, "{isa:?}");
    }
}

#[test]
fn q8k_round_trip_error_is_at_most_half_a_step() {
    let mut rng = StdRng::seed_from_u64(4);
    for n in LENGTHS {
        for _ in 0..20 {
            let x = random_activations(&mut rng, n);
            let q = quantize_q8k(&x);
            let back = dequant(DType::Q8_K, &q, n);
            for (b, (xs, ys)) in x
                .chunks_exact(QK_K)
                .zip(back.chunks_exact(QK_K))
                .enumerate()
            {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                // Half a step, plus the f32 rounding of x * iscale and of d * q.
                let bound = amax / 127.0 / 2.0 * (1.0 + 1e-5);
                for (i, (&x, &y)) in xs.iter().zip(ys).enumerate() {
                    assert!(
                        (x - y).abs() <= bound,
                        "n={n} block {b} value {i}: {x} came back as {y} (bound {bound})"
                    );
                }
            }
            for blk in as_blocks::<BlockQ8K>(&q) {
                assert!(
                    blk.qs.iter().all(|&v| v >= -127),
                    "values stay in [-127, 127]"
                );
                for j in 0..16 {
                    let s: i16 = blk.qs[16 * j..16 * j + 16]
                        .iter()
                        .map(|&v| i16::from(v))
                        .sum();
                    assert_eq!(blk.bsum(j), s);
                }
            }
        }
    }
}

#[test]
fn avx2_q8k_quantization_is_bit_identical_to_scalar() {
    if !avx2() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(5);
    let simd = quant_fn(DType::Q8_K, Isa::Avx2);
    for n in LENGTHS {
        for trial in 0..50 {
            let mut x = random_activations(&mut rng, n);
            if trial % 5 == 0 {
                // Exact halves after scaling, and a tie for the largest magnitude.
                x.iter_mut().for_each(|v| *v = (*v * 4.0).round() / 4.0);
                x[1] = -x.iter().fold(0f32, |m, v| m.max(v.abs()));
                x[0] = -x[1];
            }
            let want = quantize_q8k(&x);
            let mut got = vec![0u8; want.len()];
            simd(&x, &mut got);
            if let Some(i) = (0..want.len()).find(|&i| want[i] != got[i]) {
                panic!(
                    "n={n} trial {trial}: first differing byte {i}: scalar {} avx2 {}",
                    want[i], got[i]
                );
            }
        }
    }
}

#[test]
fn dispatch_serves_every_k_type() {
    let n = 512;
    let mut rng = StdRng::seed_from_u64(6);
    let a = quantize_q8k(&random_activations(&mut rng, n));
    for dtype in WEIGHT_TYPES {
        let w = random_weights(&mut rng, dtype, n);
        let want = dot_fn(dtype, Isa::Scalar)(n, &w, &a);
        let got = baicai_kernels::vec_dot(dtype, n, &w, &a);
        let tol = 1e-6 * magnitude(dtype, &w, &a, n) + 1e-30;
        assert!(
            (f64::from(want) - f64::from(got)).abs() <= tol,
            "{}",
            dtype.name()
        );
    }
    let mut out = vec![0f32; n];
    dequantize_row_q8k(&a, &mut out);
    let mut via = vec![0f32; n];
    baicai_kernels::dequantize_row(DType::Q8_K, &a, &mut via);
    assert_eq!(out, via);
}

//! Legacy-format kernels: every AVX2 path against its scalar reference, the scalar dots against an
//! f64 oracle over dequantized values, and the Q8 quantizers against their error bound.

mod tile_check;

use baicai_kernels::dispatch::{dequant_fn, dot_fn, quant_fn, Isa};
use baicai_kernels::dtype::QK_K;
use baicai_kernels::DType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The legacy and float types (every one has a dot product).
fn weight_types() -> impl Iterator<Item = DType> {
    DType::ALL.into_iter().filter(|t| t.block_len() != QK_K)
}

/// Byte offsets of the f16 fields (scales, minimums) in one block.
fn f16_fields(dtype: DType) -> &'static [usize] {
    match dtype {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 | DType::IQ4_NL => &[0],
        DType::Q4_1 | DType::Q5_1 | DType::Q8_1 => &[0, 2],
        _ => &[],
    }
}

/// Random weights: random code bytes, finite moderate f16 scales (or random moderate floats).
fn random_weights(rng: &mut StdRng, dtype: DType, n: usize) -> Vec<u8> {
    let f = |rng: &mut StdRng| rng.gen_range(-2.0f32..2.0);
    match dtype {
        DType::F32 => (0..n).flat_map(|_| f(rng).to_le_bytes()).collect(),
        DType::F16 => (0..n)
            .flat_map(|_| half::f16::from_f32(f(rng)).to_le_bytes())
            .collect(),
        DType::BF16 => (0..n)
            .flat_map(|_| half::bf16::from_f32(f(rng)).to_le_bytes())
            .collect(),
        _ => {
            let mut bytes = vec![0u8; dtype.row_bytes(n).unwrap()];
            rng.fill(&mut bytes[..]);
            for block in bytes.chunks_exact_mut(dtype.block_bytes()) {
                for &o in f16_fields(dtype) {
                    let v = half::f16::from_f32(rng.gen_range(-0.05f32..0.05));
                    block[o..o + 2].copy_from_slice(&v.to_le_bytes());
                }
                if dtype == DType::MXFP4 {
                    // An E8M0 scale of 2^-10 ..= 2^2 (extreme ones: tests/mxfp4.rs).
                    block[0] = rng.gen_range(118..=130);
                }
            }
            bytes
        }
    }
}

/// Random activations, quantized (scalar reference) into `dtype`'s vec-dot type.
fn random_activations(rng: &mut StdRng, dtype: DType, n: usize) -> Vec<u8> {
    let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let vt = dtype.vec_dot_type();
    let mut a = vec![0u8; vt.row_bytes(n).unwrap()];
    quant_fn(vt, Isa::Scalar)(&x, &mut a);
    a
}

fn lengths(dtype: DType) -> Vec<usize> {
    let mut v = vec![32, 64, 96, 288, 896, 4864];
    if dtype.block_len() == 1 {
        v.extend([1, 7, 33, 100]);
    }
    v
}

fn avx2() -> bool {
    if Isa::detect() == Isa::Avx2 {
        true
    } else {
        eprintln!("skipping: this CPU has no AVX2+FMA+F16C");
        false
    }
}

fn dequant(dtype: DType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n];
    dequant_fn(dtype, Isa::Scalar)(bytes, &mut out);
    out
}

/// The f64 dot of the dequantized operands and the sum of |products| (the error scale).
fn oracle(dtype: DType, n: usize, w: &[u8], a: &[u8]) -> (f64, f64) {
    let wf = dequant(dtype, w, n);
    let af = dequant(dtype.vec_dot_type(), a, n);
    let dot = wf.iter().zip(&af).map(|(&x, &y)| x as f64 * y as f64).sum();
    let mag = wf
        .iter()
        .zip(&af)
        .map(|(&x, &y)| (x as f64 * y as f64).abs())
        .sum();
    (dot, mag)
}

/// For the offset formats, `sum |m * s|`: the dot uses the f16-rounded `s` of the activation
/// block instead of summing the dequantized values, an error of up to 2^-11 of that term.
fn offset_magnitude(dtype: DType, w: &[u8], a: &[u8]) -> f64 {
    if !matches!(dtype, DType::Q4_1 | DType::Q5_1) {
        return 0.0;
    }
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f64();
    w.chunks_exact(dtype.block_bytes())
        .zip(a.chunks_exact(DType::Q8_1.block_bytes()))
        .map(|(x, y)| (f16(&x[2..]) * f16(&y[2..])).abs())
        .sum()
}

#[test]
fn avx2_dot_matches_scalar_reference_for_every_legacy_type() {
    if !avx2() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(0x001e_6ac1);
    for dtype in weight_types() {
        let scalar = dot_fn(dtype, Isa::Scalar);
        let simd = dot_fn(dtype, Isa::Avx2);
        for n in lengths(dtype) {
            for trial in 0..20 {
                let w = random_weights(&mut rng, dtype, n);
                let a = random_activations(&mut rng, dtype, n);
                let (r, s) = (scalar(n, &w, &a), simd(n, &w, &a));
                let (_, mag) = oracle(dtype, n, &w, &a);
                let tol = 1e-5 * (mag + offset_magnitude(dtype, &w, &a)) + 1e-6;
                assert!(
                    ((r - s) as f64).abs() <= tol,
                    "{} n={n} trial {trial}: scalar {r} avx2 {s} (tol {tol})",
                    dtype.name()
                );
            }
        }
    }
}

#[test]
fn scalar_dot_matches_f64_sum_of_dequantized_values() {
    let mut rng = StdRng::seed_from_u64(0xd07);
    for dtype in weight_types() {
        let dot = dot_fn(dtype, Isa::Scalar);
        for n in lengths(dtype) {
            for trial in 0..10 {
                let w = random_weights(&mut rng, dtype, n);
                let a = random_activations(&mut rng, dtype, n);
                let got = dot(n, &w, &a) as f64;
                let (want, mag) = oracle(dtype, n, &w, &a);
                let tol = 1e-5 * mag + 1e-3 * offset_magnitude(dtype, &w, &a) + 1e-6;
                assert!(
                    (got - want).abs() <= tol,
                    "{} n={n} trial {trial}: dot {got} f64 oracle {want} (tol {tol})",
                    dtype.name()
                );
            }
        }
    }
}

/// Activation rows that exercise the quantizers' edge cases: zeros, ties at .5 after scaling,
/// tiny and huge magnitudes, a lone maximum.
fn quantizer_inputs(rng: &mut StdRng) -> Vec<Vec<f32>> {
    let mut rows = vec![
        vec![0.0; 64],
        (0..64).map(|i| (i as f32 - 32.0) * 0.5).collect(),
        (0..64).map(|i| (i % 7) as f32 * 1e-30).collect(),
        (0..64).map(|i| (i as f32 - 30.0) * 1e4).collect(),
        (0..64).map(|i| if i == 5 { -3.0 } else { 0.1 }).collect(),
        // With amax = 127, id = 1 and values k + 0.5 tie exactly.
        (0..64)
            .map(|i| {
                if i % 32 == 0 {
                    127.0
                } else {
                    (i as f32 - 40.0) + 0.5
                }
            })
            .collect(),
    ];
    for n in [32, 96, 896, 4864] {
        rows.push((0..n).map(|_| rng.gen_range(-3.0f32..3.0)).collect());
    }
    rows
}

#[test]
fn avx2_quantizers_match_scalar_bit_for_bit() {
    if !avx2() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(0x9a);
    for vt in [
        DType::Q8_0,
        DType::Q8_1,
        DType::F16,
        DType::F32,
        DType::BF16,
    ] {
        for x in quantizer_inputs(&mut rng) {
            let len = vt.row_bytes(x.len()).unwrap();
            let (mut r, mut s) = (vec![0u8; len], vec![0u8; len]);
            quant_fn(vt, Isa::Scalar)(&x, &mut r);
            quant_fn(vt, Isa::Avx2)(&x, &mut s);
            if let Some(i) = (0..len).find(|&i| r[i] != s[i]) {
                panic!(
                    "{} n={}: first differing byte {i}: scalar {:#04x} avx2 {:#04x}",
                    vt.name(),
                    x.len(),
                    r[i],
                    s[i]
                );
            }
        }
    }
}

#[test]
fn q8_quantizers_round_half_away_from_zero() {
    // amax = 127 gives d = 1 exactly, so each code is roundf(x).
    let mut x = vec![0.0f32; 32];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = -2.5;
    x[3] = 0.5;
    x[4] = -0.49999997;
    for isa in [Isa::Scalar, Isa::detect()] {
        let mut q = vec![0u8; 34];
        quant_fn(DType::Q8_0, isa)(&x, &mut q);
        assert_eq!(&q[..2], &half::f16::from_f32(1.0).to_le_bytes());
        let codes: Vec<i8> = q[2..7].iter().map(|&b| b as i8).collect();
        assert_eq!(codes, [127, 3, -3, 1, 0], "{isa:?}");
    }
}

#[test]
fn q8_roundtrip_error_within_half_a_step() {
    let mut rng = StdRng::seed_from_u64(0x51);
    for vt in [DType::Q8_0, DType::Q8_1] {
        for x in quantizer_inputs(&mut rng) {
            let mut q = vec![0u8; vt.row_bytes(x.len()).unwrap()];
            quant_fn(vt, Isa::detect())(&x, &mut q);
            let y = dequant(vt, &q, x.len());
            for (b, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                let d = xs.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
                // Half a step, plus the f16 rounding of d (relative 2^-11, or half the smallest
                // subnormal 2^-25 when d underflows) applied to codes up to 127.
                let bound = 0.5 * d + 127.0 * (d * 2f32.powi(-11)).max(2f32.powi(-25));
                for (j, (&a, &b2)) in xs.iter().zip(ys).enumerate() {
                    assert!(
                        (a - b2).abs() <= bound,
                        "{} block {b} value {j}: {a} → {b2} (bound {bound})",
                        vt.name()
                    );
                }
            }
        }
    }
}

#[test]
fn q8_1_sum_field_is_scale_times_code_sum() {
    let mut rng = StdRng::seed_from_u64(0x81);
    let x: Vec<f32> = (0..256).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let mut q = vec![0u8; DType::Q8_1.row_bytes(256).unwrap()];
    quant_fn(DType::Q8_1, Isa::Scalar)(&x, &mut q);
    for (b, xs) in q.chunks_exact(36).zip(x.chunks(32)) {
        let d = xs.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
        let sum: i32 = b[4..].iter().map(|&c| c as i8 as i32).sum();
        assert_eq!(&b[2..4], &half::f16::from_f32(sum as f32 * d).to_le_bytes());
    }
}

#[test]
fn bf16_conversion_rounds_to_nearest_even_and_quiets_nans() {
    let cases: [(u32, u16); 6] = [
        (0x3f80_0000, 0x3f80),
        (0x3f80_8000, 0x3f80), // tie, even stays
        (0x3f81_8000, 0x3f82), // tie, odd rounds up
        (0x3f80_8001, 0x3f81),
        (0x7f80_0001, 0x7fc0), // signalling NaN → quiet
        (0xff80_0000, 0xff80), // -inf
    ];
    for (bits, want) in cases {
        let mut out = [0u8; 2];
        quant_fn(DType::BF16, Isa::Scalar)(&[f32::from_bits(bits)], &mut out);
        assert_eq!(u16::from_le_bytes(out), want, "{bits:#010x}");
    }
}

#[test]
fn block_views_accept_any_offset() {
    // Weights come from a memory map at arbitrary offsets: the kernels must not assume alignment.
    let mut rng = StdRng::seed_from_u64(7);
    let n = 256;
    for dtype in weight_types() {
        let w = random_weights(&mut rng, dtype, n);
        let a = random_activations(&mut rng, dtype, n);
        for shift in 1..4 {
            let mut buf = vec![0u8; shift];
            buf.extend_from_slice(&w);
            let mut abuf = vec![0u8; shift];
            abuf.extend_from_slice(&a);
            for isa in [Isa::Scalar, Isa::detect()] {
                let got = dot_fn(dtype, isa)(n, &buf[shift..], &abuf[shift..]);
                let r = dot_fn(dtype, isa)(n, &w, &a);
                assert_eq!(got, r, "{} {isa:?} shift {shift}", dtype.name());
            }
        }
    }
}

#[test]
#[should_panic(expected = "need")]
fn short_weight_slice_panics() {
    let a = vec![0u8; 34];
    dot_fn(DType::Q5_0, Isa::detect())(32, &[0u8; 21], &a);
}

#[test]
fn register_tiles_equal_the_dot_product_bit_for_bit() {
    use baicai_kernels::dispatch::tile_fns;
    use baicai_kernels::kernel::{COLS_MAX, TILE_ROWS};
    let mut rng = StdRng::seed_from_u64(0x711e);
    for dtype in weight_types() {
        let Some(tiles) = tile_fns(dtype, Isa::detect()) else {
            continue;
        };
        let dot = dot_fn(dtype, Isa::detect());
        for n in [32, 64, 96, 896] {
            // More rows and tokens than a tile takes, for the small-batch kernels (19 rows: sets
            // with whole groups of 8 and rows left over).
            let w: Vec<Vec<u8>> = (0..TILE_ROWS + 17)
                .map(|_| random_weights(&mut rng, dtype, n))
                .collect();
            let a: Vec<Vec<u8>> = (0..COLS_MAX)
                .map(|_| random_activations(&mut rng, dtype, n))
                .collect();
            tile_check::check_tiles(tiles, dot, n, &w, &a, 0, &format!("{} n={n}", dtype.name()));
        }
    }
}

/// On CPUs with AVX-512 VNNI the dispatched dot products are the VNNI ones: they must equal the
/// AVX2 kernels bit for bit (elsewhere both sides are the AVX2 kernel). The AVX2 two-row decode
/// tiles, which AVX-512 machines do not dispatch, are checked against the AVX2 dots here too.
#[test]
fn dispatched_dots_and_avx2_pairs_equal_the_avx2_dots_bit_for_bit() {
    use baicai_kernels::kernel::PairFn;
    use baicai_kernels::simd::avx2_legacy as avx2;
    if !avx2() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(0x512);
    let kernels: [(DType, baicai_kernels::dispatch::DotFn, PairFn); 5] = [
        (
            DType::Q4_0,
            avx2::dot_q4_0_q8_0,
            avx2::tile_sym::<avx2::Q4_0, 2, 1>,
        ),
        (
            DType::Q5_0,
            avx2::dot_q5_0_q8_0,
            avx2::tile_sym::<avx2::Q5_0, 2, 1>,
        ),
        (
            DType::Q8_0,
            avx2::dot_q8_0_q8_0,
            avx2::tile_sym::<avx2::Q8_0, 2, 1>,
        ),
        (
            DType::IQ4_NL,
            avx2::dot_iq4_nl_q8_0,
            avx2::tile_sym::<avx2::IQ4_NL, 2, 1>,
        ),
        (
            DType::MXFP4,
            avx2::dot_mxfp4_q8_0,
            avx2::tile_sym::<avx2::MXFP4, 2, 1>,
        ),
    ];
    for (dtype, want, pair) in kernels {
        let dot = dot_fn(dtype, Isa::detect());
        for n in lengths(dtype) {
            let w = [0, 1].map(|_| random_weights(&mut rng, dtype, n));
            let a = random_activations(&mut rng, dtype, n);
            let (got, want0) = (dot(n, &w[0], &a), want(n, &w[0], &a));
            assert_eq!(got.to_bits(), want0.to_bits(), "{} n={n}", dtype.name());
            let label = format!("{} n={n} AVX2", dtype.name());
            tile_check::check_pair(pair, want, n, [&w[0], &w[1]], &a, &label);
        }
    }
}

//! `matmul` against a naive f64 reference, and its batch invariance.

mod common;

use baicai_kernels::dispatch::{dequant_fn, quant_fn, Isa};
use baicai_kernels::{matmul, matmul_batch, matmul_many, DType, MatJob, Weight};
use common::{case, random_weights, run, types, weight};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// f64 reference: dequantized weights times activations quantized and dequantized exactly as
/// `matmul` sees them. Returns the values and the sums of |products| (error scales).
fn reference(w: &Weight, x: &[f32], n_tokens: usize) -> (Vec<f64>, Vec<f64>) {
    let (rows, cols) = (w.rows, w.cols);
    let mut wf = vec![0.0f32; rows * cols];
    dequant_fn(w.dtype, Isa::Scalar)(w.data, &mut wf);
    let vt = w.dtype.vec_dot_type();
    let mut q = vec![0u8; vt.row_bytes(n_tokens * cols).unwrap()];
    quant_fn(vt, Isa::Scalar)(x, &mut q);
    let mut xf = vec![0.0f32; n_tokens * cols];
    dequant_fn(vt, Isa::Scalar)(&q, &mut xf);
    let mut out = vec![0.0; n_tokens * rows];
    let mut mag = vec![0.0; n_tokens * rows];
    for t in 0..n_tokens {
        for r in 0..rows {
            let (wr, xr) = (&wf[r * cols..][..cols], &xf[t * cols..][..cols]);
            out[t * rows + r] = wr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum();
            mag[t * rows + r] = wr
                .iter()
                .zip(xr)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
        }
    }
    (out, mag)
}

/// Whether `a` and `b` hold the same floats bit for bit.
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn matmul_matches_naive_f64_reference() {
    let mut rng = StdRng::seed_from_u64(0x3a7);
    let shapes = [
        (1, 32, 1),
        (17, 64, 3),
        (100, 96, 1),
        (64, 256, 70),
        (33, 896, 5),
        (300, 64, 2),
    ];
    for dtype in types() {
        for &(rows, cols, n_tokens) in &shapes {
            let (data, x) = case(&mut rng, dtype, rows, cols, n_tokens);
            let w = weight(dtype, &data, rows, cols);
            let got = run(&w, &x, n_tokens);
            let (want, mag) = reference(&w, &x, n_tokens);
            // The offset formats use each activation block's f16-rounded sum: allow 2^-10 of a
            // generous bound on that term (|m| ≤ 0.05, |s| ≤ 32).
            let offset = if matches!(dtype, DType::Q4_1 | DType::Q5_1) {
                0.05 * 32.0
            } else {
                0.0
            };
            for i in 0..got.len() {
                let tol = 1e-5 * mag[i] + 1e-3 * offset * (cols / 32) as f64 + 1e-6;
                assert!(
                    (got[i] as f64 - want[i]).abs() <= tol,
                    "{} [{rows}, {cols}] × {n_tokens} tokens: element [t={}, r={}] = {} vs {} (tol {tol})",
                    dtype.name(),
                    i / rows,
                    i % rows,
                    got[i],
                    want[i]
                );
            }
        }
    }
}

#[test]
fn matmul_is_batch_invariant_bit_for_bit() {
    common::check_batch_invariance();
}

#[test]
fn matmul_many_equals_separate_matmuls_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(0x3a11);
    let cols = 512;
    // Q5_0 and Q8_0 share Q8_0 activations, Q4_K and Q6_K take Q8_K: both quantized once.
    let shapes = [
        (DType::Q5_0, 96),
        (DType::Q4_K, 40),
        (DType::Q8_0, 33),
        (DType::Q6_K, 0),
    ];
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|&(dtype, rows)| random_weights(&mut rng, dtype, rows, cols))
        .collect();
    let ws: Vec<Weight> = shapes
        .iter()
        .zip(&data)
        .map(|(&(dtype, rows), data)| Weight {
            packed: false,
            dtype,
            data,
            rows,
            cols,
        })
        .collect();
    for n_tokens in [1, 3, 70] {
        let x: Vec<f32> = (0..n_tokens * cols)
            .map(|_| rng.gen_range(-1.0f32..1.0))
            .collect();
        let mut outs: Vec<Vec<f32>> = ws
            .iter()
            .map(|w| vec![f32::NAN; n_tokens * w.rows])
            .collect();
        let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
        matmul_many(&ws, &x, n_tokens, &mut views);
        for (w, got) in ws.iter().zip(&outs) {
            let want = run(w, &x, n_tokens);
            let same = same_bits(got, &want);
            assert!(
                same,
                "{} × {n_tokens} tokens differs from matmul",
                w.dtype.name()
            );
        }
    }
}

#[test]
fn matmul_batch_equals_separate_matmuls_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(0xba7c);
    // (type, rows, cols, input): jobs 0/1 and 3/4 share an input (quantized once per vec-dot
    // type), the others have their own, of other lengths and token counts, one with no tokens.
    let specs = [
        (DType::Q4_K, 48, 256, 0),
        (DType::Q4_K, 40, 256, 0),
        (DType::Q8_0, 256, 96, 1),
        (DType::Q5_0, 24, 512, 2),
        (DType::Q6_K, 16, 512, 2),
        (DType::F16, 7, 64, 3),
        (DType::Q8_0, 0, 64, 3),
        (DType::Q4_0, 33, 64, 4),
    ];
    for n_tokens in [1, 5, 70] {
        // Inputs: (cols, tokens); input 4 has no tokens.
        let inputs = [(256, n_tokens), (96, n_tokens), (512, 1), (64, 3), (64, 0)];
        let xs: Vec<Vec<f32>> = inputs
            .iter()
            .map(|&(c, n)| (0..c * n).map(|_| rng.gen_range(-1.0f32..1.0)).collect())
            .collect();
        let data: Vec<Vec<u8>> = specs
            .iter()
            .map(|&(t, r, c, _)| random_weights(&mut rng, t, r, c))
            .collect();
        let ws: Vec<Weight> = specs
            .iter()
            .zip(&data)
            .map(|(&(dtype, rows, cols, _), data)| Weight {
                packed: false,
                dtype,
                data,
                rows,
                cols,
            })
            .collect();
        let mut outs: Vec<Vec<f32>> = specs
            .iter()
            .map(|&(_, r, _, i)| vec![f32::NAN; r * inputs[i].1])
            .collect();
        let mut jobs: Vec<MatJob> = specs
            .iter()
            .zip(&ws)
            .zip(outs.iter_mut())
            .map(|((&(.., i), w), out)| MatJob {
                w: *w,
                x: &xs[i],
                n_tokens: inputs[i].1,
                out,
            })
            .collect();
        matmul_batch(&mut jobs);
        for ((w, &(.., i)), got) in ws.iter().zip(&specs).zip(&outs) {
            let want = run(w, &xs[i], inputs[i].1);
            assert_eq!(got.len(), want.len());
            let same = same_bits(got, &want);
            assert!(
                same,
                "{} job on input {i} differs from matmul",
                w.dtype.name()
            );
        }
    }
}

/// A decode region of one-token matrices large enough that its tasks are cut into shrinking
/// pieces (whole matrices first, smaller ones toward the end): every row is computed once, as
/// the f64 reference says, and bit for bit the same whatever the number of threads.
#[test]
fn decode_region_split_covers_every_row_on_any_thread_count() {
    let mut rng = StdRng::seed_from_u64(0xd1ce);
    let specs = [
        (DType::Q4_K, 700, 1024),
        (DType::Q8_0, 1501, 512),
        (DType::Q6_K, 333, 768),
        (DType::Q5_0, 64, 256),
        (DType::Q8_0, 997, 512),
    ];
    let xs: Vec<Vec<f32>> = specs
        .iter()
        .map(|&(_, _, c)| (0..c).map(|_| rng.gen_range(-1.0f32..1.0)).collect())
        .collect();
    let data: Vec<Vec<u8>> = specs
        .iter()
        .map(|&(t, r, c)| random_weights(&mut rng, t, r, c))
        .collect();
    let ws: Vec<Weight> = specs
        .iter()
        .zip(&data)
        .map(|(&(t, r, c), d)| weight(t, d, r, c))
        .collect();
    let region = |threads: usize| -> Vec<Vec<f32>> {
        let mut outs: Vec<Vec<f32>> = specs.iter().map(|&(_, r, _)| vec![f32::NAN; r]).collect();
        let mut jobs: Vec<MatJob> = ws
            .iter()
            .zip(&xs)
            .zip(outs.iter_mut())
            .map(|((w, x), out)| MatJob {
                w: *w,
                x,
                n_tokens: 1,
                out,
            })
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| matmul_batch(&mut jobs));
        drop(jobs);
        outs
    };
    let one = region(1);
    for ((w, x), got) in ws.iter().zip(&xs).zip(&one) {
        let (want, mag) = reference(w, x, 1);
        for (r, (&g, (&v, &m))) in got.iter().zip(want.iter().zip(&mag)).enumerate() {
            assert!(
                (g as f64 - v).abs() <= 1e-5 * m + 1e-6,
                "{} [{}, {}] row {r}: {g} vs {v}",
                w.dtype.name(),
                w.rows,
                w.cols
            );
        }
    }
    for threads in [2, 3, 4] {
        let got = region(threads);
        for ((w, a), b) in ws.iter().zip(&one).zip(&got) {
            assert!(
                same_bits(a, b),
                "{} [{}, {}]: 1 vs {threads} threads",
                w.dtype.name(),
                w.rows,
                w.cols
            );
        }
    }
}

#[test]
fn matmul_is_independent_of_thread_count() {
    let mut rng = StdRng::seed_from_u64(0x7d);
    let (rows, cols, n_tokens) = (200, 256, 9);
    for dtype in [
        DType::Q5_0,
        DType::Q8_0,
        DType::F16,
        DType::Q4_K,
        DType::Q6_K,
        DType::MXFP4,
    ] {
        let (data, x) = case(&mut rng, dtype, rows, cols, n_tokens);
        let w = Weight {
            packed: false,
            dtype,
            data: &data,
            rows,
            cols,
        };
        let results: Vec<Vec<u32>> = [1, 2, 3]
            .iter()
            .map(|&threads| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| run(&w, &x, n_tokens))
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            })
            .collect();
        assert_eq!(results[0], results[1], "{} 1 vs 2 threads", dtype.name());
        assert_eq!(results[0], results[2], "{} 1 vs 3 threads", dtype.name());
    }
}

#[test]
fn matmul_accepts_unaligned_weight_bytes() {
    let mut rng = StdRng::seed_from_u64(0xa1);
    let (rows, cols) = (8, 64);
    let data = random_weights(&mut rng, DType::Q8_0, rows, cols);
    let mut shifted = vec![0u8; 3];
    shifted.extend_from_slice(&data);
    let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let a = run(
        &Weight {
            packed: false,
            dtype: DType::Q8_0,
            data: &data,
            rows,
            cols,
        },
        &x,
        1,
    );
    let b = run(
        &Weight {
            packed: false,
            dtype: DType::Q8_0,
            data: &shifted[3..],
            rows,
            cols,
        },
        &x,
        1,
    );
    assert_eq!(a, b);
}

#[test]
#[should_panic(expected = "out must be")]
fn matmul_rejects_wrong_output_shape() {
    let data = vec![0u8; 34 * 2];
    let w = Weight {
        packed: false,
        dtype: DType::Q8_0,
        data: &data,
        rows: 2,
        cols: 32,
    };
    matmul(&w, &[0.0; 32], 1, &mut [0.0; 3]);
}

#[test]
#[should_panic(expected = "not whole")]
fn matmul_rejects_partial_blocks() {
    let data = vec![0u8; 64];
    let w = Weight {
        packed: false,
        dtype: DType::Q8_0,
        data: &data,
        rows: 1,
        cols: 16,
    };
    matmul(&w, &[0.0; 16], 1, &mut [0.0; 1]);
}

#[test]
fn matmul_handles_empty_shapes() {
    let w = Weight {
        packed: false,
        dtype: DType::Q8_0,
        data: &[],
        rows: 3,
        cols: 0,
    };
    let mut out = [f32::NAN; 6];
    matmul(&w, &[], 2, &mut out);
    assert_eq!(out, [0.0; 6]);
    let w = Weight {
        packed: false,
        dtype: DType::Q8_0,
        data: &[],
        rows: 0,
        cols: 32,
    };
    matmul(&w, &[0.0; 64], 2, &mut []);
    let w = Weight {
        packed: false,
        dtype: DType::Q8_0,
        data: &[0; 34],
        rows: 1,
        cols: 32,
    };
    matmul(&w, &[], 0, &mut []);
}

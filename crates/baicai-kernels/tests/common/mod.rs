//! Helpers shared by the matmul test binaries.

use baicai_kernels::dispatch::{quant_fn, Isa};
use baicai_kernels::dtype::QK_K;
use baicai_kernels::{matmul, DType, Weight};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The legacy and float types (the K-quants have their own tests).
pub fn types() -> impl Iterator<Item = DType> {
    DType::ALL.into_iter().filter(|t| t.block_len() != QK_K)
}

/// The `[rows, cols]` weight of `dtype` over `data`.
pub fn weight(dtype: DType, data: &[u8], rows: usize, cols: usize) -> Weight<'_> {
    Weight {
        packed: false,
        dtype,
        data,
        rows,
        cols,
    }
}

/// Random weights and activations for a `[rows, cols]` × `n_tokens` case.
pub fn case(
    rng: &mut StdRng,
    dtype: DType,
    rows: usize,
    cols: usize,
    n_tokens: usize,
) -> (Vec<u8>, Vec<f32>) {
    let data = random_weights(rng, dtype, rows, cols);
    let x = (0..n_tokens * cols)
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect();
    (data, x)
}

/// Random `rows × cols` weights of `dtype`: quantizable types get random code bytes with moderate
/// f16 (MXFP4: E8M0) scales/minimums, float types random moderate values.
pub fn random_weights(rng: &mut StdRng, dtype: DType, rows: usize, cols: usize) -> Vec<u8> {
    let n = rows * cols;
    let mut bytes = vec![0u8; dtype.row_bytes(n).unwrap()];
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => {
            let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            quant_fn(dtype, Isa::Scalar)(&x, &mut bytes);
        }
        _ => {
            rng.fill(&mut bytes[..]);
            let fields: &[usize] = match dtype {
                DType::Q4_1 | DType::Q5_1 | DType::Q8_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
                DType::Q6_K => &[208],
                DType::Q3_K => &[108],
                DType::Q2_K => &[80, 82],
                _ => &[0],
            };
            for block in bytes.chunks_exact_mut(dtype.block_bytes()) {
                if dtype == DType::MXFP4 {
                    // An E8M0 scale byte, 2^-10 ..= 2^-4, rather than an f16.
                    block[0] = rng.gen_range(118..=124);
                    continue;
                }
                for &o in fields {
                    let v = half::f16::from_f32(rng.gen_range(-0.05f32..0.05));
                    block[o..o + 2].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    bytes
}

pub fn run(w: &Weight, x: &[f32], n_tokens: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n_tokens * w.rows];
    matmul(w, x, n_tokens, &mut out);
    out
}

/// Shapes for the batch-invariance tests: row counts off the tile sizes, token counts below,
/// at and across the task and tile sizes.
pub fn invariance_cases() -> impl Iterator<Item = (DType, usize, usize, usize)> {
    // Small batches (2 to 16 tokens: the small-batch kernels, 13 in two groups) and a prompt.
    let legacy = types().flat_map(|t| {
        [
            (t, 71, 128, 2),
            (t, 71, 128, 7),
            (t, 33, 64, 13),
            (t, 40, 96, 130),
        ]
    });
    // The K-quants and IQ4_XS, all with register tiles (the legacy Q4_1, Q5_1 have none).
    let k = [
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::IQ4_XS,
        DType::Q2_K,
    ]
    .into_iter()
    .flat_map(|t| [(t, 70, 512, 3), (t, 69, 256, 8), (t, 37, 256, 130)]);
    legacy.chain(k)
}

/// Every token of a batch gives the same outputs, bit for bit, as the token alone (decode), over
/// [`invariance_cases`].
pub fn check_batch_invariance() {
    let mut rng = StdRng::seed_from_u64(0xba7c);
    for (dtype, rows, cols, n_tokens) in invariance_cases() {
        let (data, x) = case(&mut rng, dtype, rows, cols, n_tokens);
        let w = weight(dtype, &data, rows, cols);
        let batched = run(&w, &x, n_tokens);
        for t in 0..n_tokens {
            let alone = run(&w, &x[t * cols..][..cols], 1);
            let row = &batched[t * rows..][..rows];
            if let Some(r) = (0..rows).find(|&r| row[r].to_bits() != alone[r].to_bits()) {
                panic!(
                    "{} token {t} of {n_tokens}: first difference at row {r}: batched {} alone {}",
                    dtype.name(),
                    row[r],
                    alone[r]
                );
            }
        }
    }
}

//! Weights packed in groups of 8 interleaved rows: the layout round-trips, the SIMD kernels equal
//! the scalar reference bit for bit (AVX-512 VNNI, then AVX2: this binary's one test turns the
//! AVX-512 kernels off half way, so nothing else in the process sees the switch), the reference
//! agrees with the plain dot product to float rounding, and matmul over packed weights is batch
//! invariant.

#[allow(dead_code)]
mod common;

use baicai_kernels::dispatch::{dot_fn, packed_fn, quant_fn, Isa};
use baicai_kernels::kernel::{ActBlock, PACK_ROWS};
use baicai_kernels::quant::packed::{act_blocks, dot_packed_ref, pack, unpack_row};
use baicai_kernels::{DType, Weight};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TYPES: [DType; 8] = [
    DType::Q8_0,
    DType::Q5_0,
    DType::Q4_0,
    DType::IQ4_NL,
    DType::MXFP4,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

/// Activation rows of `cols` values for `n` random tokens in the vec-dot type of `dtype`, with
/// their side data (Q8_0 only).
fn activations(
    rng: &mut StdRng,
    dtype: DType,
    cols: usize,
    n: usize,
) -> (Vec<u8>, usize, Vec<ActBlock>) {
    let at = dtype.vec_dot_type();
    let a_row = at.row_bytes(cols).unwrap();
    let mut a = vec![0u8; n * a_row];
    for row in a.chunks_exact_mut(a_row) {
        let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
        quant_fn(at, Isa::Scalar)(&x, row);
    }
    let mut aux = Vec::new();
    if at == DType::Q8_0 {
        act_blocks(&a, a_row, n, cols / 32, &mut aux);
    }
    (a, a_row, aux)
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Packing, the kernels against the reference, and matmul, on the ISA now active.
fn check_all(label: &str) {
    let mut rng = StdRng::seed_from_u64(17);
    for dtype in TYPES {
        let shapes: &[(usize, usize)] = if dtype.block_len() == 32 {
            &[(8, 32), (16, 96), (24, 896), (8, 64 * 32)]
        } else {
            &[(8, 256), (16, 768), (8, 4096)]
        };
        for &(rows, cols) in shapes {
            let data = common::random_weights(&mut rng, dtype, rows, cols);
            let packed = pack(dtype, &data, rows, cols).expect("packable");
            assert_eq!(packed.len(), data.len());
            let row_bytes = dtype.row_bytes(cols).unwrap();
            for r in 0..rows {
                let mut row = Vec::new();
                unpack_row(dtype, &packed, cols, r, &mut row);
                assert_eq!(
                    row,
                    data[r * row_bytes..(r + 1) * row_bytes],
                    "{dtype:?} row {r}"
                );
            }
            let nb = cols / dtype.block_len();
            let (a, a_row, aux) = activations(&mut rng, dtype, cols, 8);
            let f = packed_fn(dtype, Isa::Avx2).expect("a packed kernel");
            let plain = dot_fn(dtype, Isa::Scalar);
            for g in 0..rows / PACK_ROWS {
                let group = &packed[g * PACK_ROWS * row_bytes..][..PACK_ROWS * row_bytes];
                for n in 1..=8 {
                    let mut want = vec![[0.0f32; PACK_ROWS]; n];
                    dot_packed_ref(dtype, nb, group, &a, a_row, &mut want);
                    let mut got = vec![[f32::NAN; PACK_ROWS]; n];
                    f(nb, group, &a, a_row, &aux, n, &mut got);
                    assert!(
                        same_bits(want.as_flattened(), got.as_flattened()),
                        "{label} {dtype:?} [{rows}, {cols}] group {g} × {n} tokens: {got:?} != {want:?}"
                    );
                    // The reference computes the same dot product as the plain one.
                    for (t, w) in want.iter().enumerate() {
                        for (i, &v) in w.iter().enumerate() {
                            let r = g * PACK_ROWS + i;
                            let p = plain(
                                cols,
                                &data[r * row_bytes..(r + 1) * row_bytes],
                                &a[t * a_row..(t + 1) * a_row],
                            );
                            assert!(
                                (v - p).abs() <= 1e-4 * (1.0 + p.abs()),
                                "{dtype:?} row {r} token {t}: packed {v} plain {p}"
                            );
                        }
                    }
                }
            }
        }
        // Matmul: every token count gives each token the bits it gets alone.
        let (rows, cols) = (48, 256);
        let data = common::random_weights(&mut rng, dtype, rows, cols);
        let packed = pack(dtype, &data, rows, cols).unwrap();
        let w = Weight {
            dtype,
            data: &packed,
            rows,
            cols,
            packed: true,
        };
        let max = 70;
        let x: Vec<f32> = (0..max * cols)
            .map(|_| rng.gen_range(-1.0f32..1.0))
            .collect();
        let alone: Vec<Vec<f32>> = (0..max)
            .map(|t| common::run(&w, &x[t * cols..(t + 1) * cols], 1))
            .collect();
        for n in [2, 3, 7, 8, 9, 13, 16, 17, 64, 70] {
            let out = common::run(&w, &x[..n * cols], n);
            for (t, want) in alone.iter().take(n).enumerate() {
                assert!(
                    same_bits(&out[t * rows..(t + 1) * rows], want),
                    "{label} {dtype:?}: token {t} of {n} differs from alone"
                );
            }
        }
        // And the single token equals the scalar reference.
        let at = dtype.vec_dot_type();
        let a_row = at.row_bytes(cols).unwrap();
        let mut a = vec![0u8; a_row];
        quant_fn(at, Isa::Avx2)(&x[..cols], &mut a);
        let row_bytes = dtype.row_bytes(cols).unwrap();
        for g in 0..rows / PACK_ROWS {
            let mut want = [[0.0f32; PACK_ROWS]; 1];
            let group = &packed[g * PACK_ROWS * row_bytes..][..PACK_ROWS * row_bytes];
            dot_packed_ref(dtype, cols / dtype.block_len(), group, &a, a_row, &mut want);
            assert!(same_bits(
                &want[0],
                &alone[0][g * PACK_ROWS..(g + 1) * PACK_ROWS]
            ));
        }
    }
}

#[test]
fn packed_kernels_equal_the_scalar_reference_and_matmul_is_batch_invariant() {
    check_all("AVX-512");
    baicai_kernels::dispatch::disable_avx512();
    check_all("AVX2");
}

#[test]
fn pack_refuses_what_it_cannot_pack() {
    let data = vec![0u8; 34 * 12];
    assert!(pack(DType::Q8_0, &data, 12, 32).is_none(), "12 rows");
    assert!(pack(DType::Q4_K, &data, 8, 256).is_none(), "no layout");
    assert!(
        pack(DType::Q8_0, &data[..10], 8, 32).is_none(),
        "short data"
    );
}

/// MXFP4's E8M0 scales at the edges (the two subnormals `e` = 0, 1 and the smallest normals),
/// which random weights do not reach: the kernels decode them as the reference does.
#[test]
fn packed_mxfp4_decodes_extreme_scales_as_the_reference() {
    let mut rng = StdRng::seed_from_u64(3);
    let (rows, cols) = (8, 32 * 8);
    let mut data = common::random_weights(&mut rng, DType::MXFP4, rows, cols);
    // Row r's blocks all take the r-th scale (8 blocks a row), so rows 0 and 1 are subnormal.
    for (i, block) in data.chunks_exact_mut(17).enumerate() {
        block[0] = [0, 1, 2, 3, 126, 127, 128, 133][i / 8];
    }
    let packed = pack(DType::MXFP4, &data, rows, cols).unwrap();
    let (a, a_row, aux) = activations(&mut rng, DType::MXFP4, cols, 3);
    let f = packed_fn(DType::MXFP4, Isa::Avx2).unwrap();
    let mut want = vec![[0.0f32; PACK_ROWS]; 3];
    dot_packed_ref(DType::MXFP4, cols / 32, &packed, &a, a_row, &mut want);
    let mut got = vec![[f32::NAN; PACK_ROWS]; 3];
    f(cols / 32, &packed, &a, a_row, &aux, 3, &mut got);
    assert!(
        same_bits(want.as_flattened(), got.as_flattened()),
        "{got:?} != {want:?}"
    );
    assert!(
        want[0][0] != 0.0 && want[0][0].abs() < 1e-30,
        "{}",
        want[0][0]
    );
}

//! Weights repacked once at load into groups of [`PACK_ROWS`] interleaved rows, the layout the
//! packed kernels read linearly (llama.cpp's CPU repack and ik_llama.cpp's `-rtr` do the same
//! with layouts of their own; this one is ours).
//!
//! A packed matrix holds its rows in groups of 8 (the row count must be a multiple of 8). A
//! group is its rows' blocks side by side, block by block: group block `b` holds block `b` of
//! each of the 8 rows, laid out so that one 32-byte register holds four consecutive values of
//! every row, row `r` in 32-bit lane `r`. A dot-product instruction then adds four products per
//! lane with one activation word broadcast to all lanes, so the eight rows' sums build up in one
//! register, and a block's float step (scale, convert, fused multiply-add) is paid once per eight
//! rows instead of once per row. A packed matrix has exactly as many bytes as the original, and
//! row `r` of a group starting at row `8g` begins at the same byte offset as it did unpacked
//! when `r = 0`, so slices of whole groups (one expert of a stacked tensor) stay slices.
//!
//! The formats, each group block 8 times the original block:
//! - **Q8_0** (272 bytes): the 8 rows' f16 scales (16 bytes), then 8 registers of 32 bytes;
//!   register `k` holds values `4k .. 4k+4` of every row as unsigned codes `q + 128`.
//! - **Q5_0** (176 bytes): the 8 scales, then 4 registers of nibbles (register `s`, bytes
//!   `4r .. 4r+4`: the original `qs[4s .. 4s+4]` of row `r`, so the low nibbles are values
//!   `4s ..` and the high nibbles values `16+4s ..`), then 8 masks of 32 bits: mask `k` has bit
//!   `4r + i` set where value `4k + i` of row `r` has its fifth bit. Register `k` of the decoded
//!   block (values `4k .. 4k+4`, unsigned codes `q + 16`) is the low (`k < 4`) or high nibbles
//!   of nibble register `k mod 4`, plus 16 where mask `k` says.
//!
//! - **Q4_0**, **IQ4_NL** (144 bytes): the 8 scales, then 4 registers of nibbles laid out as
//!   Q5_0's; register `k` is the low (`k < 4`) or high nibbles of nibble register `k mod 4`:
//!   Q4_0's unsigned codes `q + 8`, IQ4_NL's table indices (its kernels look the values up and
//!   shift them to unsigned codes `v + 128`).
//! - **MXFP4** (136 bytes): the 8 rows' E8M0 scale bytes, then 4 nibble registers as Q4_0's
//!   (indices into the doubled E2M1 table; codes `v + 128`).
//! - **Q4_K** (1152 bytes): the 8 rows' `d` (16 bytes) and `dmin` (16 bytes), their 12 scale
//!   bytes transposed (byte `8i + r` is scale byte `i` of row `r`: 96 bytes), then for each
//!   chunk `c` of 64 values 8 registers of nibbles: register `s`, bytes `4r .. 4r+4`, is the
//!   original `qs[32c + 4s ..][..4]` of row `r` (low nibbles values `64c + 4s ..` of sub-block
//!   `2c`, high nibbles values `64c + 32 + 4s ..` of sub-block `2c + 1`).
//! - **Q5_K** (1408 bytes): Q4_K's layout (from the nibbles of `qs`), each chunk `c`'s 8 nibble
//!   registers followed by two masks of 32 bits per register `s` (the kernel reads the block in
//!   order): bit `4r + i` of the first is the fifth bit of the low nibble's value `64c + 4s + i`
//!   of row `r`, of the second the high nibble's.
//! - **Q6_K** (1680 bytes): the 8 `d` (16 bytes), the 16 scales transposed (byte `8j + r`: 128
//!   bytes), then per sub-block `j` of 16 values three registers, in the order the kernel reads
//!   them: two of nibbles (byte `4r + i` of the first: the low four bits of the unsigned code
//!   `q + 32` of value `16j + i` of row `r` in its low nibble and of value `16j + 4 + i` in its
//!   high nibble; the second likewise for values `16j + 8 + i` and `16j + 12 + i`), and one of
//!   high bits (byte `4r + i`, bits `2kk .. 2kk+2`: the top two bits of the code of value
//!   `16j + 4kk + i`).
//!
//! The numerics ([`dot_packed_ref`]) are the natural ones and the same on every path (decode,
//! small batches, prompts): per block the exact integer sum `isum` of codes times activation
//! codes, then `acc = fma(d_w · d_a, isum, acc)` in block order, from 0. So each packed kernel
//! equals this scalar reference bit for bit, and a request's output does not depend on what else
//! shares its pass.

use crate::dtype::DType;
pub use crate::kernel::PACK_ROWS;
use crate::quant::kquants::{scales_mins_k4, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
use crate::quant::legacy::{fives, nibbles, BlockIQ4_NL, BlockQ4_0, BlockQ5_0, BlockQ8_0};
use crate::quant::mxfp4::BlockMXFP4;
use crate::quant::tables::KVALUES_IQ4NL;
use crate::quant::{as_blocks, f16_le};

/// Whether `dtype` has a packed layout.
pub fn packable(dtype: DType) -> bool {
    use DType::*;
    matches!(
        dtype,
        Q8_0 | Q5_0 | Q4_0 | IQ4_NL | MXFP4 | Q4_K | Q5_K | Q6_K
    )
}

/// Bytes of a block of one row (the format's own block).
fn block_bytes(dtype: DType) -> usize {
    dtype.block_bytes()
}

/// Packs `rows` rows of `cols` values of `dtype` (row-major, `data` holding at least all of
/// them) into groups of [`PACK_ROWS`]. `None` where the format has no packed layout, `rows` is
/// not a multiple of [`PACK_ROWS`] or `cols` not of the block length.
pub fn pack(dtype: DType, data: &[u8], rows: usize, cols: usize) -> Option<Vec<u8>> {
    let row_bytes = dtype.row_bytes(cols)?;
    let data = data.get(..rows.checked_mul(row_bytes)?)?;
    let mut out = vec![0u8; data.len()];
    pack_into(dtype, data, cols, &mut out)?;
    Some(out)
}

/// [`pack`] of the whole groups of rows in `src` (rows of `cols` values) into `dst` (as long):
/// a caller may pack a large tensor a slice of groups at a time. `None` (and `dst` untouched)
/// where the format has no packed layout, `cols` is not whole blocks, or `src` is not whole
/// groups of rows or differs from `dst` in length.
pub fn pack_into(dtype: DType, src: &[u8], cols: usize, dst: &mut [u8]) -> Option<()> {
    let row_bytes = dtype.row_bytes(cols)?;
    let group = PACK_ROWS * row_bytes;
    if !packable(dtype) || group == 0 || !src.len().is_multiple_of(group) || src.len() != dst.len()
    {
        return None;
    }
    let bb = block_bytes(dtype);
    let nb = row_bytes / bb;
    let gb = PACK_ROWS * bb;
    for (src, dst) in src.chunks_exact(group).zip(dst.chunks_exact_mut(group)) {
        for b in 0..nb {
            let blocks: [&[u8]; PACK_ROWS] =
                std::array::from_fn(|r| &src[r * row_bytes + b * bb..][..bb]);
            pack_block(dtype, blocks, &mut dst[b * gb..][..gb]);
        }
    }
    Some(())
}

/// One group block from the 8 rows' blocks.
fn pack_block(dtype: DType, x: [&[u8]; PACK_ROWS], out: &mut [u8]) {
    for (r, x) in x.iter().enumerate() {
        out[2 * r..2 * r + 2].copy_from_slice(&x[..2]);
    }
    match dtype {
        DType::Q8_0 => {
            for (r, x) in x.iter().enumerate() {
                for k in 0..8 {
                    let w = u32::from_le_bytes(x[2 + 4 * k..][..4].try_into().expect("4"));
                    out[16 + 32 * k + 4 * r..][..4]
                        .copy_from_slice(&(w ^ 0x8080_8080).to_le_bytes());
                }
            }
        }
        DType::Q5_0 => {
            let mut masks = [0u32; 8];
            for (r, x) in x.iter().enumerate() {
                let qh = u32::from_le_bytes([x[2], x[3], x[4], x[5]]);
                for s in 0..4 {
                    out[16 + 32 * s + 4 * r..][..4].copy_from_slice(&x[6 + 4 * s..][..4]);
                }
                for (k, m) in masks.iter_mut().enumerate() {
                    for i in 0..4 {
                        *m |= ((qh >> (4 * k + i)) & 1) << (4 * r + i);
                    }
                }
            }
            for (k, m) in masks.iter().enumerate() {
                out[144 + 4 * k..][..4].copy_from_slice(&m.to_le_bytes());
            }
        }
        DType::Q4_0 | DType::IQ4_NL => {
            for (r, x) in x.iter().enumerate() {
                for s in 0..4 {
                    out[16 + 32 * s + 4 * r..][..4].copy_from_slice(&x[2 + 4 * s..][..4]);
                }
            }
        }
        DType::MXFP4 => {
            // One scale byte per row: the loop above wrote two, which the nibbles overwrite.
            for (r, x) in x.iter().enumerate() {
                out[r] = x[0];
                for s in 0..4 {
                    out[8 + 32 * s + 4 * r..][..4].copy_from_slice(&x[1 + 4 * s..][..4]);
                }
            }
        }
        DType::Q4_K | DType::Q5_K => {
            // Q5_K: the fifth bits between the scales and the nibbles.
            let (qs, chunk) = if dtype == DType::Q5_K {
                (48, 320)
            } else {
                (16, 256)
            };
            for (r, x) in x.iter().enumerate() {
                out[16 + 2 * r..][..2].copy_from_slice(&x[2..4]);
                for i in 0..12 {
                    out[32 + 8 * i + r] = x[4 + i];
                }
                for c in 0..4 {
                    for st in 0..8 {
                        out[128 + chunk * c + 32 * st + 4 * r..][..4]
                            .copy_from_slice(&x[qs + 32 * c + 4 * st..][..4]);
                    }
                }
            }
            if dtype == DType::Q5_K {
                for c in 0..4 {
                    for st in 0..8 {
                        let (mut lo, mut hi) = (0u32, 0u32);
                        for (r, x) in x.iter().enumerate() {
                            for i in 0..4 {
                                let h = u32::from(x[16 + 4 * st + i]);
                                lo |= ((h >> (2 * c)) & 1) << (4 * r + i);
                                hi |= ((h >> (2 * c + 1)) & 1) << (4 * r + i);
                            }
                        }
                        let m = 128 + 320 * c + 256 + 8 * st;
                        out[m..m + 4].copy_from_slice(&lo.to_le_bytes());
                        out[m + 4..m + 8].copy_from_slice(&hi.to_le_bytes());
                    }
                }
            }
        }
        DType::Q6_K => {
            // Q6_K's f16 `d` is last in its block, not first: the loop above copied the first
            // two bytes of `ql`, which the scales' place below does not use.
            for (r, x) in x.iter().enumerate() {
                let blk: &BlockQ6K = &as_blocks::<BlockQ6K>(x)[0];
                out[2 * r..2 * r + 2].copy_from_slice(&blk.d);
                for j in 0..16 {
                    out[16 + 8 * j + r] = blk.scales[j] as u8;
                }
                let u = blk.levels().map(|q| (q + 32) as u8);
                for j in 0..16 {
                    let sb = 144 + 96 * j + 4 * r;
                    for i in 0..4 {
                        let v = |kk: usize| u[4 * (4 * j + kk) + i];
                        out[sb + i] = (v(0) & 0xf) | ((v(1) & 0xf) << 4);
                        out[sb + 32 + i] = (v(2) & 0xf) | ((v(3) & 0xf) << 4);
                        out[sb + 64 + i] = (0..4).map(|kk| (v(kk) >> 4) << (2 * kk)).sum();
                    }
                }
            }
        }
        _ => unreachable!("pack checks the format"),
    }
}

/// Row `r` of a packed matrix (`data` its groups, rows of `cols` values) in the format's own
/// row layout, appended to `out`: embedding lookups and slices that cut a group.
///
/// # Panics
/// If the format has no packed layout, `cols` is not whole blocks or `data` holds no row `r`.
pub fn unpack_row(dtype: DType, data: &[u8], cols: usize, r: usize, out: &mut Vec<u8>) {
    assert!(packable(dtype), "{} has no packed layout", dtype.name());
    let row_bytes = dtype.row_bytes(cols).expect("whole blocks");
    let bb = block_bytes(dtype);
    let (g, i) = (r / PACK_ROWS, r % PACK_ROWS);
    let group = &data[g * PACK_ROWS * row_bytes..][..PACK_ROWS * row_bytes];
    for gb in group.chunks_exact(PACK_ROWS * bb) {
        let start = out.len();
        out.extend_from_slice(&gb[2 * i..2 * i + 2]);
        match dtype {
            DType::Q8_0 => {
                for k in 0..8 {
                    out.extend(gb[16 + 32 * k + 4 * i..][..4].iter().map(|&u| u ^ 0x80));
                }
            }
            DType::Q5_0 => {
                let mut qh = 0u32;
                for k in 0..8 {
                    let m = u32::from_le_bytes(gb[144 + 4 * k..][..4].try_into().expect("4"));
                    qh |= ((m >> (4 * i)) & 0xf) << (4 * k);
                }
                out.extend_from_slice(&qh.to_le_bytes());
                for s in 0..4 {
                    out.extend_from_slice(&gb[16 + 32 * s + 4 * i..][..4]);
                }
            }
            DType::Q4_0 | DType::IQ4_NL => {
                for s in 0..4 {
                    out.extend_from_slice(&gb[16 + 32 * s + 4 * i..][..4]);
                }
            }
            DType::MXFP4 => {
                out.truncate(start);
                out.push(gb[i]);
                for s in 0..4 {
                    out.extend_from_slice(&gb[8 + 32 * s + 4 * i..][..4]);
                }
            }
            DType::Q4_K | DType::Q5_K => {
                out.extend_from_slice(&gb[16 + 2 * i..][..2]);
                out.extend((0..12).map(|k| gb[32 + 8 * k + i]));
                if dtype == DType::Q5_K {
                    let mut qh = [0u8; 32];
                    for c in 0..4 {
                        for st in 0..8 {
                            let m = 128 + 320 * c + 256 + 8 * st;
                            let lo = u32::from_le_bytes(gb[m..m + 4].try_into().expect("4"));
                            let hi = u32::from_le_bytes(gb[m + 4..m + 8].try_into().expect("4"));
                            for k in 0..4 {
                                let bit = |w: u32| ((w >> (4 * i + k)) & 1) as u8;
                                qh[4 * st + k] |= (bit(lo) << (2 * c)) | (bit(hi) << (2 * c + 1));
                            }
                        }
                    }
                    out.extend_from_slice(&qh);
                }
                let chunk = if dtype == DType::Q5_K { 320 } else { 256 };
                for c in 0..4 {
                    for st in 0..8 {
                        out.extend_from_slice(&gb[128 + chunk * c + 32 * st + 4 * i..][..4]);
                    }
                }
            }
            DType::Q6_K => {
                // `d` went first above; Q6_K keeps it last.
                out.truncate(start);
                let mut u = [0u8; 256];
                for j in 0..16 {
                    let sb = 144 + 96 * j + 4 * i;
                    for k in 0..4 {
                        let (a, b, h) = (gb[sb + k], gb[sb + 32 + k], gb[sb + 64 + k]);
                        let nib = [a & 0xf, a >> 4, b & 0xf, b >> 4];
                        for (kk, n) in nib.iter().enumerate() {
                            u[4 * (4 * j + kk) + k] = n | (((h >> (2 * kk)) & 3) << 4);
                        }
                    }
                }
                let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
                for h in 0..2 {
                    for k in 0..4 {
                        for l in 0..32 {
                            let v = u[128 * h + 32 * k + l];
                            ql[64 * h + 32 * (k % 2) + l] |= (v & 0xf) << (4 * (k / 2));
                            qh[32 * h + l] |= (v >> 4) << (2 * k);
                        }
                    }
                }
                out.extend_from_slice(&ql);
                out.extend_from_slice(&qh);
                out.extend((0..16).map(|j| gb[16 + 8 * j + i]));
                out.extend_from_slice(&gb[2 * i..2 * i + 2]);
            }
            _ => unreachable!("checked above"),
        }
        debug_assert_eq!(out.len() - start, bb);
    }
}

/// The unsigned codes' offset of the legacy packed formats: value = code - offset.
pub const fn packed_offset(dtype: DType) -> i32 {
    match dtype {
        DType::Q8_0 => 128,
        DType::Q5_0 => 16,
        DType::Q4_0 => 8,
        DType::IQ4_NL | DType::MXFP4 => 128,
        _ => 0,
    }
}

/// Bytes of one group block.
pub const fn group_block_bytes(dtype: DType) -> usize {
    PACK_ROWS * dtype.block_bytes()
}

/// Scalar reference of the packed kernels: `out[t][r]` for the 8 rows of the group `group`
/// (`nb` group blocks) and `out.len()` activation rows (of the format's vec-dot type: Q8_0 or
/// Q8_K) `a_row` bytes apart in `a`. Each row is unpacked to the format's own layout and
/// decoded with its block type; per block the exact integer sums, then in block order
/// - Q8_0, Q5_0: `acc = fma(d_w · d_a, Σ q·y, acc)`;
/// - Q4_K: `acc = fma(d_w · d_a, Σ_j sc_j Σ q·y, acc)`, then
///   `acc = fma(-(dmin_w · d_a), Σ_j m_j bsum_j, acc)` (sub-blocks `j` of 32);
/// - Q6_K: `acc = fma(d_w · d_a, Σ_j sc_j Σ q·y, acc)` (sub-blocks of 16, `q` in -32..32).
///
/// # Panics
/// If the format has no packed layout or a slice is short.
pub fn dot_packed_ref(
    dtype: DType,
    nb: usize,
    group: &[u8],
    a: &[u8],
    a_row: usize,
    out: &mut [[f32; PACK_ROWS]],
) {
    assert!(packable(dtype), "{} has no packed layout", dtype.name());
    let cols = nb * dtype.block_len();
    let row_bytes = nb * dtype.block_bytes();
    let group = &group[..PACK_ROWS * row_bytes];
    let ab = dtype.vec_dot_type().block_bytes();
    for r in 0..PACK_ROWS {
        let mut row = Vec::with_capacity(row_bytes);
        unpack_row(dtype, group, cols, r, &mut row);
        for (t, o) in out.iter_mut().enumerate() {
            let a = &a[t * a_row..][..nb * ab];
            let mut acc = 0.0f32;
            for (x, y) in row
                .chunks_exact(dtype.block_bytes())
                .zip(a.chunks_exact(ab))
            {
                acc = block_ref(dtype, x, y, acc);
            }
            o[r] = acc;
        }
    }
}

/// One block of [`dot_packed_ref`]: `x` a weight block in the format's own layout, `y` an
/// activation block.
fn block_ref(dtype: DType, x: &[u8], y: &[u8], acc: f32) -> f32 {
    let dot = |q: &[i8], y: &[i8]| -> i32 {
        q.iter()
            .zip(y)
            .map(|(&q, &y)| i32::from(q) * i32::from(y))
            .sum()
    };
    match dtype {
        DType::Q8_0 | DType::Q5_0 | DType::Q4_0 | DType::IQ4_NL | DType::MXFP4 => {
            let y: &BlockQ8_0 = &as_blocks(y)[0];
            let (q, d): ([i8; 32], f32) = match dtype {
                DType::Q8_0 => {
                    let x: &BlockQ8_0 = &as_blocks(x)[0];
                    (x.qs, x.d())
                }
                DType::Q5_0 => {
                    let x: &BlockQ5_0 = &as_blocks(x)[0];
                    (fives(&x.qs, x.qh()).map(|q| q as i8 - 16), x.d())
                }
                DType::Q4_0 => {
                    let x: &BlockQ4_0 = &as_blocks(x)[0];
                    (nibbles(&x.qs).map(|q| q as i8 - 8), x.d())
                }
                DType::MXFP4 => {
                    let x: &BlockMXFP4 = &as_blocks(x)[0];
                    (x.values(), x.d())
                }
                _ => {
                    let x: &BlockIQ4_NL = &as_blocks(x)[0];
                    (nibbles(&x.qs).map(|q| KVALUES_IQ4NL[q as usize]), x.d())
                }
            };
            (d * y.d()).mul_add(dot(&q, &y.qs) as f32, acc)
        }
        DType::Q4_K | DType::Q5_K => {
            let y: &BlockQ8K = &as_blocks(y)[0];
            let (d, dmin, scales, q) = if dtype == DType::Q4_K {
                let x: &BlockQ4K = &as_blocks(x)[0];
                (x.d(), x.dmin(), x.scales, x.levels())
            } else {
                let x: &BlockQ5K = &as_blocks(x)[0];
                (x.d(), x.dmin(), x.scales, x.levels())
            };
            let (sc, m) = scales_mins_k4(&scales);
            let total: i32 = (0..8)
                .map(|j| i32::from(sc[j]) * dot(&q[32 * j..][..32], &y.qs[32 * j..][..32]))
                .sum();
            let msum: i32 = (0..8)
                .map(|j| {
                    i32::from(m[j]) * (i32::from(y.bsum(2 * j)) + i32::from(y.bsum(2 * j + 1)))
                })
                .sum();
            let acc = (d * y.d()).mul_add(total as f32, acc);
            (-(dmin * y.d())).mul_add(msum as f32, acc)
        }
        DType::Q6_K => {
            let x: &BlockQ6K = &as_blocks(x)[0];
            let y: &BlockQ8K = &as_blocks(y)[0];
            let q = x.levels();
            let total: i32 = (0..16)
                .map(|j| i32::from(x.scales[j]) * dot(&q[16 * j..][..16], &y.qs[16 * j..][..16]))
                .sum();
            (x.d() * y.d()).mul_add(total as f32, acc)
        }
        _ => unreachable!("callers check the format"),
    }
}

/// [`dot_packed_ref`] as a [`crate::kernel::PackedFn`] (for CPUs without the SIMD kernels; the
/// activations' side data is recomputed, not read).
pub fn packed_ref_fn(dtype: DType) -> Option<crate::kernel::PackedFn> {
    fn run<const F: u8>(
        nb: usize,
        group: &[u8],
        a: &[u8],
        a_row: usize,
        _aux: &[crate::kernel::ActBlock],
        n_tok: usize,
        out: &mut [[f32; PACK_ROWS]],
    ) {
        let dtype = [
            DType::Q8_0,
            DType::Q5_0,
            DType::Q4_K,
            DType::Q6_K,
            DType::Q4_0,
            DType::IQ4_NL,
            DType::MXFP4,
            DType::Q5_K,
        ][usize::from(F)];
        dot_packed_ref(dtype, nb, group, a, a_row, &mut out[..n_tok]);
    }
    match dtype {
        DType::Q8_0 => Some(run::<0>),
        DType::Q5_0 => Some(run::<1>),
        DType::Q4_K => Some(run::<2>),
        DType::Q6_K => Some(run::<3>),
        DType::Q4_0 => Some(run::<4>),
        DType::IQ4_NL => Some(run::<5>),
        DType::MXFP4 => Some(run::<6>),
        DType::Q5_K => Some(run::<7>),
        _ => None,
    }
}

/// The [`crate::kernel::ActBlock`]s of `n_tok` Q8_0 activation rows (`nb` blocks each, `a_row`
/// bytes apart), appended to `out` token by token.
pub fn act_blocks(
    a: &[u8],
    a_row: usize,
    n_tok: usize,
    nb: usize,
    out: &mut Vec<crate::kernel::ActBlock>,
) {
    for t in 0..n_tok {
        for y in a[t * a_row..][..nb * 34].chunks_exact(34) {
            let neg_sum = -y[2..].iter().map(|&v| i32::from(v as i8)).sum::<i32>();
            out.push(crate::kernel::ActBlock {
                d: f16_le([y[0], y[1]]),
                neg_sum,
            });
        }
    }
}

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
//! The numerics ([`dot_packed_ref`]) are the natural ones and the same on every path (decode,
//! small batches, prompts): per block the exact integer sum `isum` of codes times activation
//! codes, then `acc = fma(d_w · d_a, isum, acc)` in block order, from 0. So each packed kernel
//! equals this scalar reference bit for bit, and a request's output does not depend on what else
//! shares its pass.

use crate::dtype::DType;
pub use crate::kernel::PACK_ROWS;
use crate::quant::f16_le;

/// Whether `dtype` has a packed layout.
pub fn packable(dtype: DType) -> bool {
    matches!(dtype, DType::Q8_0 | DType::Q5_0)
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
                    for i in 0..4 {
                        out[16 + 32 * k + 4 * r + i] = x[2 + 4 * k + i] ^ 0x80;
                    }
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
            _ => unreachable!("checked above"),
        }
        debug_assert_eq!(out.len() - start, bb);
    }
}

/// The `cols` codes of row `r` of a packed group block `gb`, as unsigned `q + offset`, with the
/// offset ([`packed_offset`]) and the row's scale.
fn block_codes(dtype: DType, gb: &[u8], r: usize) -> ([i32; 32], f32) {
    let d = f16_le([gb[2 * r], gb[2 * r + 1]]);
    let mut q = [0i32; 32];
    match dtype {
        DType::Q8_0 => {
            for k in 0..8 {
                for i in 0..4 {
                    q[4 * k + i] = i32::from(gb[16 + 32 * k + 4 * r + i]);
                }
            }
        }
        DType::Q5_0 => {
            for k in 0..8 {
                let m = u32::from_le_bytes(gb[144 + 4 * k..][..4].try_into().expect("4"));
                for i in 0..4 {
                    let byte = gb[16 + 32 * (k % 4) + 4 * r + i];
                    let nib = if k < 4 { byte & 0xf } else { byte >> 4 };
                    let hb = (m >> (4 * r + i)) & 1;
                    q[4 * k + i] = i32::from(nib) | (hb << 4) as i32;
                }
            }
        }
        _ => unreachable!("callers check the format"),
    }
    (q, d)
}

/// The unsigned codes' offset: value = code - offset.
pub const fn packed_offset(dtype: DType) -> i32 {
    match dtype {
        DType::Q8_0 => 128,
        DType::Q5_0 => 16,
        _ => 0,
    }
}

/// Bytes of one group block.
pub const fn group_block_bytes(dtype: DType) -> usize {
    PACK_ROWS * dtype.block_bytes()
}

/// Scalar reference of the packed kernels: `out[t][r]` for the 8 rows of the group `group`
/// (`nb` group blocks) and `out.len()` Q8_0 activation rows `a_row` bytes apart in `a`. Per
/// block the exact integer sum of value codes times activation codes, then `acc = fma(d_w · d_a,
/// isum, acc)` in block order.
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
    let gbb = group_block_bytes(dtype);
    let off = packed_offset(dtype);
    for (t, o) in out.iter_mut().enumerate() {
        for (r, o) in o.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for b in 0..nb {
                let (q, dw) = block_codes(dtype, &group[b * gbb..][..gbb], r);
                let y = &a[t * a_row + b * 34..][..34];
                let da = f16_le([y[0], y[1]]);
                let isum: i32 = q
                    .iter()
                    .zip(&y[2..])
                    .map(|(&q, &y)| (q - off) * i32::from(y as i8))
                    .sum();
                acc = (dw * da).mul_add(isum as f32, acc);
            }
            *o = acc;
        }
    }
}

/// [`dot_packed_ref`] as a [`crate::kernel::PackedFn`] (for CPUs without the SIMD kernels; the
/// activations' side data is recomputed, not read).
pub fn packed_ref_fn(dtype: DType) -> Option<crate::kernel::PackedFn> {
    fn run<const Q5: bool>(
        nb: usize,
        group: &[u8],
        a: &[u8],
        a_row: usize,
        _aux: &[crate::kernel::ActBlock],
        n_tok: usize,
        out: &mut [[f32; PACK_ROWS]],
    ) {
        let dtype = if Q5 { DType::Q5_0 } else { DType::Q8_0 };
        dot_packed_ref(dtype, nb, group, a, a_row, &mut out[..n_tok]);
    }
    match dtype {
        DType::Q8_0 => Some(run::<false>),
        DType::Q5_0 => Some(run::<true>),
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

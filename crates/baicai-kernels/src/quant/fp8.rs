//! FP8 E4M3 with block scales, as DeepSeek-V3/V4 checkpoints store their linear weights: a
//! `[rows, cols]` matrix of E4M3 bytes and one scale per `block_rows × block_cols` tile
//! (128 × 128 in both), `[ceil(rows / block_rows), ceil(cols / block_cols)]` row-major; the value
//! is `e4m3 * scale`. DeepSeek-V3 stores the scales as f32 (`weight_scale_inv`), DeepSeek-V4 as
//! E8M0 bytes (`scale`, its `ue8m0` format; llama.cpp's converter decodes them as
//! `2^(e - 127)` and repeats each over its 128 × 128 tile).
//!
//! E4M3 follows the OCP 8-bit floating point specification (the `e4m3fn` variant): bias 7, no
//! infinities, `S.1111.111` is NaN, subnormals `m/8 * 2^-6`. Decoding is one lookup in a
//! 256-entry table; the weights are expanded to f32 once at load, so no SIMD path.

use rayon::prelude::*;

use crate::quant::e8m0_to_f32;

/// The f32 value of an E4M3 byte, from its bits (exact: every E4M3 value is an f32).
const fn e4m3_bits_to_f32(b: u8) -> f32 {
    let sign = ((b >> 7) as u32) << 31;
    let e = ((b >> 3) & 0x0f) as u32;
    let m = (b & 0x07) as u32;
    if e == 0x0f && m == 0x07 {
        return f32::NAN;
    }
    let bits = if e != 0 {
        // 2^(e - 7) * (1 + m/8): rebias the exponent, widen the mantissa.
        ((e + 127 - 7) << 23) | (m << 20)
    } else if m == 0 {
        0
    } else {
        // Subnormal m/8 * 2^-6 = m * 2^-9, normalized: leading bit p of m gives 2^(p - 9).
        let p = 31 - m.leading_zeros();
        ((p + 127 - 9) << 23) | ((m & !(1 << p)) << (23 - p))
    };
    f32::from_bits(sign | bits)
}

/// Every E4M3 byte's f32 value (NaN for `0x7F` and `0xFF`).
pub const E4M3_TO_F32: [f32; 256] = {
    let mut t = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = e4m3_bits_to_f32(i as u8);
        i += 1;
    }
    t
};

/// Decodes one FP8 E4M3 byte.
#[inline]
pub fn e4m3_to_f32(b: u8) -> f32 {
    E4M3_TO_F32[b as usize]
}

/// The block scales of an FP8 matrix, `[ceil(rows / block_rows), ceil(cols / block_cols)]`
/// row-major.
#[derive(Debug, Clone, Copy)]
pub enum BlockScales<'a> {
    /// f32 scales (DeepSeek-V3's `weight_scale_inv`).
    F32(&'a [f32]),
    /// E8M0 scale bytes, `2^(e - 127)` each ([`e8m0_to_f32`]; DeepSeek-V4's `ue8m0`).
    E8M0(&'a [u8]),
}

impl BlockScales<'_> {
    fn len(&self) -> usize {
        match self {
            BlockScales::F32(s) => s.len(),
            BlockScales::E8M0(s) => s.len(),
        }
    }

    fn get(&self, i: usize) -> f32 {
        match self {
            BlockScales::F32(s) => s[i],
            BlockScales::E8M0(s) => e8m0_to_f32(s[i]),
        }
    }
}

/// The shape of a block-scaled matrix: `rows × cols` values, one scale per
/// `block_rows × block_cols` tile (the last tiles of a row or column may be partial).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockGrid {
    /// Rows of values.
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
    /// Rows of a tile.
    pub block_rows: usize,
    /// Columns of a tile.
    pub block_cols: usize,
}

impl BlockGrid {
    /// `rows × cols` with square `block × block` tiles (DeepSeek's 128).
    pub fn square(rows: usize, cols: usize, block: usize) -> BlockGrid {
        BlockGrid {
            rows,
            cols,
            block_rows: block,
            block_cols: block,
        }
    }

    /// Scales per row of tiles.
    pub fn scale_cols(&self) -> usize {
        self.cols.div_ceil(self.block_cols)
    }

    /// Number of scales: `ceil(rows / block_rows) * ceil(cols / block_cols)`.
    pub fn scale_count(&self) -> usize {
        self.rows.div_ceil(self.block_rows) * self.scale_cols()
    }
}

/// Dequantizes a block-scaled E4M3 matrix to f32, `[rows, cols]` row-major:
/// `out[r, c] = e4m3(w[r, c]) * scale[r / block_rows, c / block_cols]`, rows in parallel.
///
/// # Panics
/// If `w` does not hold `rows * cols` bytes, the tile sizes are zero (with a non-empty matrix),
/// or `scales` does not hold [`BlockGrid::scale_count`] values.
pub fn dequant_e4m3_block_scaled(w: &[u8], scales: BlockScales<'_>, grid: BlockGrid) -> Vec<f32> {
    let BlockGrid { rows, cols, .. } = grid;
    assert_eq!(
        w.len(),
        rows * cols,
        "FP8 [{rows}, {cols}]: {} bytes of weights",
        w.len()
    );
    let mut out = vec![0.0f32; rows * cols];
    if out.is_empty() {
        return out;
    }
    assert!(
        grid.block_rows > 0 && grid.block_cols > 0,
        "FP8 tiles of {grid:?} are empty"
    );
    assert_eq!(
        scales.len(),
        grid.scale_count(),
        "FP8 [{rows}, {cols}] in {}×{} tiles: {} scales",
        grid.block_rows,
        grid.block_cols,
        scales.len()
    );
    let sc = grid.scale_cols();
    out.par_chunks_mut(cols)
        .zip(w.par_chunks(cols))
        .enumerate()
        .for_each(|(r, (o, w))| {
            let row_scales = (r / grid.block_rows) * sc;
            let tiles = o.chunks_mut(grid.block_cols).zip(w.chunks(grid.block_cols));
            for (j, (o, w)) in tiles.enumerate() {
                let s = scales.get(row_scales + j);
                for (o, &b) in o.iter_mut().zip(w) {
                    *o = e4m3_to_f32(b) * s;
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from the OCP 8-bit floating point specification (E4M3: bias 7, no infinities,
    /// S.1111.111 is NaN).
    #[test]
    fn fp8_e4m3_decodes_spec_values() {
        assert_eq!(e4m3_to_f32(0x00), 0.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9)); // smallest subnormal
        assert_eq!(e4m3_to_f32(0x07), 0.875 * 2f32.powi(-6)); // largest subnormal
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6)); // smallest normal
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert_eq!(e4m3_to_f32(0xB8), -1.0);
        assert_eq!(e4m3_to_f32(0x7E), 448.0); // largest normal
        assert!(e4m3_to_f32(0x7F).is_nan());
        assert!(e4m3_to_f32(0xFF).is_nan());
    }

    /// The table equals the spec's formula, `(-1)^s * 2^(e-7) * (1 + m/8)` (normal) or
    /// `(-1)^s * 2^-6 * m/8` (subnormal), for all 256 bytes, signed zeros included.
    #[test]
    fn e4m3_table_equals_the_spec_formula_for_every_byte() {
        for b in 0..=255u8 {
            let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
            let (e, m) = (((b >> 3) & 0x0f) as i32, (b & 0x07) as f32);
            let got = e4m3_to_f32(b);
            if e == 0x0f && m == 7.0 {
                assert!(got.is_nan(), "{b:#04x}");
                continue;
            }
            let want = if e == 0 {
                sign * (m / 8.0) * 2f32.powi(-6)
            } else {
                sign * (1.0 + m / 8.0) * 2f32.powi(e - 7)
            };
            assert_eq!(got.to_bits(), want.to_bits(), "{b:#04x}: {got} vs {want}");
        }
    }

    #[test]
    fn block_scales_apply_per_tile_with_partial_edge_tiles() {
        // 3 × 5 values in 2 × 2 tiles: scales [2, 3] row-major, the last row and column partial.
        let w = vec![0x38u8; 15]; // all 1.0
        let f = [1.0f32, 2.0, 4.0, 8.0, 16.0, 32.0];
        let e = [127u8, 128, 129, 130, 131, 132]; // the same scales as E8M0
        let grid = BlockGrid {
            rows: 3,
            cols: 5,
            block_rows: 2,
            block_cols: 2,
        };
        let want = [
            1.0, 1.0, 2.0, 2.0, 4.0, //
            1.0, 1.0, 2.0, 2.0, 4.0, //
            8.0, 8.0, 16.0, 16.0, 32.0,
        ];
        for scales in [BlockScales::F32(&f), BlockScales::E8M0(&e)] {
            assert_eq!(dequant_e4m3_block_scaled(&w, scales, grid), want);
        }
    }

    #[test]
    fn e8m0_scales_cover_the_extremes() {
        assert_eq!(e8m0_to_f32(127), 1.0);
        assert_eq!(e8m0_to_f32(0), 2f32.powi(-127));
        assert_eq!(e8m0_to_f32(254), 2f32.powi(127));
        assert!(e8m0_to_f32(255).is_nan());
    }

    #[test]
    #[should_panic(expected = "scales")]
    fn too_few_scales_panic() {
        let grid = BlockGrid::square(256, 128, 128);
        dequant_e4m3_block_scaled(&[0; 256 * 128], BlockScales::F32(&[1.0]), grid);
    }
}

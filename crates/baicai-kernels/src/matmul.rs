//! Multithreaded matmul of quantized weights with f32 activations.
//!
//! Each token row of the activations is quantized once into the weights' vec-dot type, then every
//! output element is exactly one call of the format's dot product ([`crate::dispatch::dot_fn`]) on
//! one weight row and one activation row. The work is split over output rows (and, for prefill,
//! blocks of tokens) but never inside a dot product, so each element is reduced in the same order
//! whatever `n_tokens` is or how many threads run: results are batch invariant bit for bit.
//!
//! Decode (`n_tokens == 1`) is memory bound: each weight row is streamed once, rows are split into
//! chunks big enough that a rayon task is worth its scheduling cost. Prefill tiles the output into
//! (rows × tokens) blocks, iterating tokens innermost, so a weight row stays in L1 while it meets
//! a block of activation rows that stays in L2.

use std::cell::Cell;

use rayon::prelude::*;

use crate::dispatch::{active_isa, dot_fn, quant_fn, DotFn};
use crate::dtype::DType;

/// A weight matrix `[rows, cols]` (row-major, each row `cols` values of `dtype`), borrowed from
/// wherever it lives (usually a memory map).
#[derive(Debug, Clone, Copy)]
pub struct Weight<'a> {
    /// Storage type of the values.
    pub dtype: DType,
    /// The bytes of all rows, at least `rows * dtype.row_bytes(cols)` of them.
    pub data: &'a [u8],
    /// Number of rows (output features).
    pub rows: usize,
    /// Number of values per row (input features).
    pub cols: usize,
}

impl Weight<'_> {
    /// Bytes of one row.
    ///
    /// # Panics
    /// If `cols` is not a multiple of the type's block length.
    pub fn row_bytes(&self) -> usize {
        self.dtype.row_bytes(self.cols).unwrap_or_else(|| {
            panic!(
                "{} columns are not whole {} blocks of {}",
                self.cols,
                self.dtype.name(),
                self.dtype.block_len()
            )
        })
    }
}

/// Bytes of weights a decode task should at least stream, so scheduling stays a small fraction.
const MIN_TASK_BYTES: usize = 32 * 1024;
/// Weight rows per prefill tile: a few rows, each in L1 while it meets the tile's tokens.
const TILE_ROWS: usize = 16;
/// Tokens per prefill tile: their quantized rows (≤ 64 × 5 KiB here) stay in L2.
const TILE_TOKENS: usize = 64;

thread_local! {
    /// Quantized activations, reused across calls on the same thread. Taken out while in use, so
    /// a nested call (rayon work stealing) just allocates its own.
    static ACTIVATIONS: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// `out[t, r] = sum_c w[r, c] * x[t, c]` for `n_tokens` rows of `x` (`[n_tokens, cols]`), writing
/// `out` (`[n_tokens, rows]`). Activations are quantized once to `w.dtype.vec_dot_type()`.
/// Runs on the current rayon pool. Each output element is reduced in the same order whatever
/// `n_tokens` is (batch invariance).
///
/// # Panics
/// If `w.cols` is not a whole number of blocks of `w.dtype`, `w.data` holds fewer than `w.rows`
/// rows, `x.len() != n_tokens * w.cols`, or `out.len() != n_tokens * w.rows`.
pub fn matmul(w: &Weight, x: &[f32], n_tokens: usize, out: &mut [f32]) {
    let w_row = w.row_bytes();
    assert!(
        w.data.len() >= w.rows * w_row,
        "{} weight [{}, {}] needs {} bytes, got {}",
        w.dtype.name(),
        w.rows,
        w.cols,
        w.rows * w_row,
        w.data.len()
    );
    assert_eq!(
        x.len(),
        n_tokens * w.cols,
        "x must be [n_tokens={n_tokens}, cols={}]",
        w.cols
    );
    assert_eq!(
        out.len(),
        n_tokens * w.rows,
        "out must be [n_tokens={n_tokens}, rows={}]",
        w.rows
    );
    if n_tokens == 0 || w.rows == 0 {
        return;
    }

    let isa = active_isa();
    let vt = w.dtype.vec_dot_type();
    let a_row = vt
        .row_bytes(w.cols)
        .expect("vec-dot types have the weights' block length");
    let mut acts = ACTIVATIONS.with(Cell::take);
    acts.resize(n_tokens * a_row, 0);
    quantize_rows(quant_fn(vt, isa), x, w.cols, &mut acts, a_row);

    let m = Mat {
        dot: dot_fn(w.dtype, isa),
        w: w.data,
        w_row,
        cols: w.cols,
        acts: &acts,
        a_row,
    };
    if n_tokens == 1 {
        matvec(&m, out);
    } else {
        matmul_tiled(&m, w.rows, n_tokens, out);
    }
    ACTIVATIONS.with(|c| c.set(acts));
}

/// Quantizes each `cols`-long row of `x` into an `a_row`-byte row of `acts`, in parallel when
/// there are many.
fn quantize_rows(
    quant: crate::dispatch::QuantFn,
    x: &[f32],
    cols: usize,
    acts: &mut [u8],
    a_row: usize,
) {
    let rows = acts.par_chunks_mut(a_row).zip(x.par_chunks(cols));
    rows.with_min_len(16).for_each(|(a, x)| quant(x, a));
}

/// The operands of one matmul: weight rows and quantized activation rows as bytes.
struct Mat<'a> {
    dot: DotFn,
    w: &'a [u8],
    w_row: usize,
    cols: usize,
    acts: &'a [u8],
    a_row: usize,
}

impl Mat<'_> {
    /// Output element `[t, r]`: one dot product.
    #[inline]
    fn element(&self, r: usize, t: usize) -> f32 {
        let w = &self.w[r * self.w_row..(r + 1) * self.w_row];
        let a = &self.acts[t * self.a_row..(t + 1) * self.a_row];
        (self.dot)(self.cols, w, a)
    }
}

/// One token: output rows split into chunks of at least [`MIN_TASK_BYTES`] of weights, with a
/// few chunks per thread for balance.
fn matvec(m: &Mat, out: &mut [f32]) {
    let rows = out.len();
    let threads = rayon::current_num_threads();
    let by_balance = rows.div_ceil(4 * threads);
    let by_bytes = MIN_TASK_BYTES.div_ceil(m.w_row);
    let chunk = by_balance.max(by_bytes).clamp(1, rows);
    out.par_chunks_mut(chunk).enumerate().for_each(|(c, out)| {
        for (k, o) in out.iter_mut().enumerate() {
            *o = m.element(c * chunk + k, 0);
        }
    });
}

/// Raw pointer to `out`, shared by tiles that write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: only used to write disjoint elements from different tasks (see `matmul_tiled`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method (not field access) so closures capture the `Sync` wrapper, not the raw pointer.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Several tokens: `[rows, tokens]` tiles in parallel, row tiles outermost (consecutive tasks
/// share weight rows), tokens innermost.
fn matmul_tiled(m: &Mat, rows: usize, n_tokens: usize, out: &mut [f32]) {
    let row_tiles = rows.div_ceil(TILE_ROWS);
    let token_tiles = n_tokens.div_ceil(TILE_TOKENS);
    let ptr = OutPtr(out.as_mut_ptr());
    (0..row_tiles * token_tiles)
        .into_par_iter()
        .for_each(|tile| {
            let r0 = tile / token_tiles * TILE_ROWS;
            let t0 = tile % token_tiles * TILE_TOKENS;
            for r in r0..(r0 + TILE_ROWS).min(rows) {
                for t in t0..(t0 + TILE_TOKENS).min(n_tokens) {
                    let v = m.element(r, t);
                    // SAFETY: `t < n_tokens` and `r < rows`, so the index is inside `out`
                    // (`n_tokens * rows` long, asserted in `matmul`), and each (t, r) belongs to
                    // exactly one tile, so no two tasks write the same element; `out` is borrowed
                    // mutably for the whole parallel loop, which nothing else reads.
                    unsafe { *ptr.get().add(t * rows + r) = v };
                }
            }
        });
}

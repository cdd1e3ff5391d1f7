//! Multithreaded matmul of quantized weights with f32 activations.
//!
//! Each token row of the activations is quantized once into the weights' vec-dot type. Every
//! output element is then one dot product of a weight row and an activation row: either the
//! format's [`crate::dispatch::dot_fn`], or, where the format has them
//! ([`crate::quant::legacy::tile_fns`]), a register tile of several rows × tokens that computes
//! each element bit-identically to that dot. Work is split over output rows (and, for prefill,
//! blocks of tokens) but never inside a dot product, so each element is reduced in the same order
//! whatever `n_tokens` is or how many threads run: results are batch invariant bit for bit.
//!
//! Decode (`n_tokens == 1`) is memory bound: each weight row is streamed once, rows are split into
//! chunks big enough that a rayon task is worth its scheduling cost, and rows a little ahead are
//! prefetched. Prefill splits the output into (rows × tokens) tasks, iterating tokens innermost,
//! so a weight row stays in L1 while it meets a block of activation rows that stays in L2.

use std::cell::Cell;
use std::ops::Range;

use rayon::prelude::*;

use crate::dispatch::{active_isa, dot_fn, quant_fn, DotFn, QuantFn};
use crate::dtype::DType;
use crate::quant::legacy::{tile_fns, TileFns, DECODE_ROWS, TILE_ROWS, TILE_TOKENS};

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
/// Weight rows per prefill task: a few rows, each in L1 while it meets the task's tokens.
const TASK_ROWS: usize = 16;
/// Tokens per prefill task: their quantized rows (≤ 64 × 5 KiB here) stay in L2.
const TASK_TOKENS: usize = 64;
const _: () =
    assert!(TASK_ROWS.is_multiple_of(TILE_ROWS) && TASK_TOKENS.is_multiple_of(TILE_TOKENS));

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
    if w.cols == 0 {
        out.fill(0.0);
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
        tiles: tile_fns(w.dtype, isa),
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

/// How far ahead of the rows being computed decode prefetches weights.
const PREFETCH_ROWS: usize = 2 * DECODE_ROWS;

/// Hints the CPU to load the cache line holding `line[0]`.
#[inline]
fn prefetch_line(line: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint and never faults; the address is inside `line` anyway.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = line;
}

/// Token rows below which activations are quantized on the calling thread: a row takes about a
/// microsecond, less than handing work to the pool.
const PARALLEL_QUANT_ROWS: usize = 32;

/// Quantizes each `cols`-long row of `x` into an `a_row`-byte row of `acts`, in parallel when
/// there are many.
fn quantize_rows(quant: QuantFn, x: &[f32], cols: usize, acts: &mut [u8], a_row: usize) {
    let n_tokens = x.len() / cols;
    if n_tokens < PARALLEL_QUANT_ROWS {
        for (a, x) in acts.chunks_exact_mut(a_row).zip(x.chunks_exact(cols)) {
            quant(x, a);
        }
    } else {
        let rows = acts.par_chunks_mut(a_row).zip(x.par_chunks(cols));
        rows.with_min_len(8).for_each(|(a, x)| quant(x, a));
    }
}

/// The operands of one matmul: weight rows and quantized activation rows as bytes.
struct Mat<'a> {
    dot: DotFn,
    /// Register-tiled kernels, bit-identical per element to `dot`, where the format has them.
    tiles: Option<TileFns>,
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
        (self.dot)(self.cols, self.w_row(r), self.act_row(t))
    }

    #[inline]
    fn w_row(&self, r: usize) -> &[u8] {
        &self.w[r * self.w_row..(r + 1) * self.w_row]
    }

    #[inline]
    fn act_row(&self, t: usize) -> &[u8] {
        &self.acts[t * self.a_row..(t + 1) * self.a_row]
    }

    /// Computes `out[k] = [r0 + k, t]`, [`DECODE_ROWS`] rows at a time where possible.
    fn rows(&self, r0: usize, t: usize, out: &mut [f32]) {
        let mut k = 0;
        if let Some(tiles) = self.tiles {
            while k + DECODE_ROWS <= out.len() {
                self.prefetch(r0 + k + PREFETCH_ROWS, DECODE_ROWS);
                let w = std::array::from_fn(|i| self.w_row(r0 + k + i));
                out[k..k + DECODE_ROWS].copy_from_slice(&(tiles.rows)(
                    self.cols,
                    w,
                    self.act_row(t),
                ));
                k += DECODE_ROWS;
            }
        }
        for (i, o) in out.iter_mut().enumerate().skip(k) {
            self.prefetch(r0 + i + PREFETCH_ROWS, 1);
            *o = self.element(r0 + i, t);
        }
    }

    /// Asks the CPU to start loading weight rows `r..r + n` (those that exist). A kernel walks a
    /// few rows side by side, and rows are short (hundreds of bytes), so the hardware prefetcher
    /// alone does not keep enough misses in flight for a single core to near DRAM bandwidth.
    #[inline]
    fn prefetch(&self, r: usize, n: usize) {
        let start = (r * self.w_row).min(self.w.len());
        let end = ((r + n) * self.w_row).min(self.w.len());
        for line in self.w[start..end].chunks(64) {
            prefetch_line(line);
        }
    }

    /// Calls `put(r, t, value)` for every element of rows `rows` × tokens `tokens`: whole
    /// [`TILE_TOKENS`] groups of tokens in [`TILE_ROWS`] × [`TILE_TOKENS`] register tiles, the
    /// tokens left over (all of them when there are few) a token at a time through
    /// [`Mat::rows`], the rows left over element by element.
    fn block(
        &self,
        rows: Range<usize>,
        tokens: Range<usize>,
        mut put: impl FnMut(usize, usize, f32),
    ) {
        let (mut r_end, mut t_end) = (rows.start, tokens.start);
        if let Some(tiles) = self.tiles {
            r_end += (rows.len() / TILE_ROWS) * TILE_ROWS;
            t_end += (tokens.len() / TILE_TOKENS) * TILE_TOKENS;
            for r in (rows.start..r_end).step_by(TILE_ROWS) {
                let w = std::array::from_fn(|i| self.w_row(r + i));
                for t in (tokens.start..t_end).step_by(TILE_TOKENS) {
                    let a = std::array::from_fn(|j| self.act_row(t + j));
                    let v = (tiles.tile)(self.cols, w, a);
                    for (i, row) in v.iter().enumerate() {
                        for (j, &x) in row.iter().enumerate() {
                            put(r + i, t + j, x);
                        }
                    }
                }
            }
            for r in r_end..rows.end {
                for t in tokens.start..t_end {
                    put(r, t, self.element(r, t));
                }
            }
        }
        let mut buf = [0.0f32; TASK_ROWS];
        for r0 in rows.clone().step_by(TASK_ROWS) {
            let out = &mut buf[..TASK_ROWS.min(rows.end - r0)];
            for t in t_end..tokens.end {
                self.rows(r0, t, out);
                for (i, &v) in out.iter().enumerate() {
                    put(r0 + i, t, v);
                }
            }
        }
    }
}

/// One token: output rows split into chunks of at least [`MIN_TASK_BYTES`] of weights, with a
/// few chunks per thread for balance.
fn matvec(m: &Mat, out: &mut [f32]) {
    let rows = out.len();
    let threads = rayon::current_num_threads();
    let by_balance = rows.div_ceil(4 * threads);
    let by_bytes = MIN_TASK_BYTES.div_ceil(m.w_row);
    let chunk = by_balance
        .max(by_bytes)
        .next_multiple_of(DECODE_ROWS)
        .min(rows);
    out.par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(c, out)| m.rows(c * chunk, 0, out));
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

/// Several tokens: `[rows, tokens]` tasks in parallel, row ranges outermost (consecutive tasks
/// share weight rows), tokens innermost.
fn matmul_tiled(m: &Mat, rows: usize, n_tokens: usize, out: &mut [f32]) {
    // With few tokens a task reads its weights for little work: give it more rows, as decode does.
    let tokens_per_task = n_tokens.min(TASK_TOKENS);
    let by_bytes = MIN_TASK_BYTES.div_ceil(m.w_row * tokens_per_task);
    let by_balance = rows.div_ceil(4 * rayon::current_num_threads());
    let task_rows = by_bytes.min(by_balance).next_multiple_of(TASK_ROWS);
    let row_tasks = rows.div_ceil(task_rows);
    let token_tasks = n_tokens.div_ceil(TASK_TOKENS);
    let ptr = OutPtr(out.as_mut_ptr());
    (0..row_tasks * token_tasks)
        .into_par_iter()
        .for_each(|task| {
            let r0 = task / token_tasks * task_rows;
            let t0 = task % token_tasks * TASK_TOKENS;
            let rows_here = r0..(r0 + task_rows).min(rows);
            let tokens_here = t0..(t0 + TASK_TOKENS).min(n_tokens);
            m.block(rows_here, tokens_here, |r, t, v| {
                assert!(r < rows && t < n_tokens);
                // SAFETY: the index is inside `out` (`n_tokens * rows` long, asserted in `matmul`);
                // each (t, r) belongs to exactly one task, so no two tasks write the same element,
                // and `out` is borrowed mutably for the whole parallel loop, which reads none of it.
                unsafe { *ptr.get().add(t * rows + r) = v };
            });
        });
}

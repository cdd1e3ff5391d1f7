//! Multithreaded matmul of quantized weights with f32 activations.
//!
//! Each token row of the activations is quantized once into the weights' vec-dot type. Every
//! output element is then one dot product of a weight row and an activation row: either the
//! format's [`crate::dispatch::dot_fn`], or, where the format has them
//! ([`crate::dispatch::tile_fns`]), a register tile of several rows × tokens that computes
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
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::dispatch::{active_isa, dot_fn, quant_fn, tile_fns, DotFn, QuantFn};
use crate::dtype::DType;
use crate::pool;
use crate::quant::legacy::{TileFns, DECODE_ROWS, TILE_ROWS, TILE_TOKENS};

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
    matmul_many(&[*w], x, n_tokens, &mut [out]);
}

/// Several matmuls of the same input (`q`/`k`/`v`, or `gate`/`up`): `outs[i] = ws[i] x` as
/// [`matmul`] computes each, bit for bit, but with the activations quantized once per vec-dot type
/// and all the work in one parallel region. Decode runs ~170 small matmuls per token, so the
/// fixed cost of waking the pool and quantizing counts.
///
/// # Panics
/// As [`matmul`] for each pair; if `ws` and `outs` differ in length or the weights in `cols`.
pub fn matmul_many(ws: &[Weight], x: &[f32], n_tokens: usize, outs: &mut [&mut [f32]]) {
    assert_eq!(ws.len(), outs.len(), "one output per weight");
    let Some(cols) = ws.first().map(|w| w.cols) else {
        return;
    };
    for (w, out) in ws.iter().zip(outs.iter()) {
        check_shapes(w, x, n_tokens, out);
        assert_eq!(w.cols, cols, "weights of one input share their columns");
    }
    if n_tokens == 0 {
        return;
    }
    if cols == 0 {
        outs.iter_mut().for_each(|o| o.fill(0.0));
        return;
    }

    // Each distinct vec-dot type's rows, one after another in one buffer.
    let isa = active_isa();
    let mut types: Vec<(DType, usize, usize)> = Vec::new(); // (type, offset, row bytes)
    let mut len = 0;
    for w in ws {
        let vt = w.dtype.vec_dot_type();
        if !types.iter().any(|&(t, ..)| t == vt) {
            let a_row = vt
                .row_bytes(cols)
                .expect("vec-dot types have the weights' block length");
            types.push((vt, len, a_row));
            len += n_tokens * a_row;
        }
    }
    let mut acts = ACTIVATIONS.with(Cell::take);
    acts.resize(len, 0);
    for &(vt, off, a_row) in &types {
        let dst = &mut acts[off..off + n_tokens * a_row];
        quantize_rows(quant_fn(vt, isa), x, cols, dst, a_row);
    }

    let mats: Vec<Mat> = ws
        .iter()
        .map(|w| {
            let vt = w.dtype.vec_dot_type();
            let &(_, off, a_row) = types.iter().find(|&&(t, ..)| t == vt).unwrap();
            Mat {
                dot: dot_fn(w.dtype, isa),
                tiles: tile_fns(w.dtype, isa),
                w: w.data,
                w_row: w.row_bytes(),
                cols,
                acts: &acts[off..off + n_tokens * a_row],
                a_row,
            }
        })
        .collect();
    let outs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    let tasks: Vec<Task> = mats
        .iter()
        .zip(ws)
        .enumerate()
        .filter(|(_, (_, w))| w.rows > 0)
        .flat_map(|(i, (m, w))| tasks(i, m, w.rows, n_tokens))
        .collect();
    let run_task = |task: &Task| {
        let (m, rows) = (&mats[task.mat], ws[task.mat].rows);
        let out = outs[task.mat];
        if n_tokens == 1 {
            let r = task.rows.clone();
            // SAFETY: `out` is the `rows`-long output of this matrix (checked in
            // `check_shapes`), borrowed mutably for the whole parallel loop; tasks of one matrix
            // cover disjoint row ranges inside it, so this slice aliases no other task's.
            let out = unsafe { std::slice::from_raw_parts_mut(out.get().add(r.start), r.len()) };
            m.rows(r.start, 0, out);
        } else {
            m.block(task.rows.clone(), task.tokens.clone(), |r, t, v| {
                assert!(r < rows && t < n_tokens);
                // SAFETY: the index is inside `out` (`n_tokens * rows` long, checked in
                // `check_shapes`); each (t, r) belongs to exactly one task, so no two tasks
                // write the same element, and `out` is borrowed mutably for the whole parallel
                // loop, which reads none of it.
                unsafe { *out.get().add(t * rows + r) = v };
            });
        }
    };
    // Tasks go to whichever thread asks next; the spinning pool starts in well under a
    // microsecond (see `pool`), rayon is the fallback when it is busy.
    let next = AtomicUsize::new(0);
    let work = |_: usize| {
        while let Some(task) = tasks.get(next.fetch_add(1, Ordering::Relaxed)) {
            run_task(task);
        }
    };
    let threads = rayon::current_num_threads().min(tasks.len());
    if !pool::run(threads, &work) {
        tasks.par_iter().for_each(run_task);
    }
    drop(mats);
    ACTIVATIONS.with(|c| c.set(acts));
}

/// Asserts the shapes [`matmul`] documents.
fn check_shapes(w: &Weight, x: &[f32], n_tokens: usize, out: &[f32]) {
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
}

/// How far ahead of the rows being computed decode prefetches weights.
const PREFETCH_ROWS: usize = 2 * DECODE_ROWS;
/// Rows longer than this are not prefetched: a long row is a long sequential stream, which the
/// hardware prefetcher follows better (K-quant rows of 2.7-4 KiB lose ~5% decode speed with it).
const MAX_PREFETCH_ROW_BYTES: usize = 1024;

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
                if self.w_row <= MAX_PREFETCH_ROW_BYTES {
                    self.prefetch(r0 + k + PREFETCH_ROWS, DECODE_ROWS);
                }
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

    /// Calls `put(r, t, value)` for every element of rows `rows` × tokens `tokens` (at most
    /// [`TASK_TOKENS`] of them): whole [`TILE_TOKENS`] groups of tokens in [`TILE_ROWS`] ×
    /// [`TILE_TOKENS`] register tiles, one strip call per pair of rows, the
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
            let mut buf = [[[0.0; TILE_TOKENS]; TILE_ROWS]; TASK_TOKENS / TILE_TOKENS];
            let groups = &mut buf[..(t_end - tokens.start) / TILE_TOKENS];
            let acts = &self.acts[tokens.start * self.a_row..];
            // Results of up to TASK_ROWS rows, by token: written out a token's rows at a time,
            // a cache line each, rather than two rows at a time (the output is [tokens, rows]).
            let mut vals = [[0.0f32; TASK_ROWS]; TASK_TOKENS];
            for r0 in (rows.start..r_end).step_by(TASK_ROWS) {
                let r1 = (r0 + TASK_ROWS).min(r_end);
                for r in (r0..r1).step_by(TILE_ROWS) {
                    let w = std::array::from_fn(|i| self.w_row(r + i));
                    (tiles.strip)(self.cols, w, acts, self.a_row, groups);
                    for (g, v) in groups.iter().enumerate() {
                        for (i, row) in v.iter().enumerate() {
                            for (j, &x) in row.iter().enumerate() {
                                vals[g * TILE_TOKENS + j][r - r0 + i] = x;
                            }
                        }
                    }
                }
                for (t, v) in (tokens.start..t_end).zip(&vals) {
                    for (r, &x) in (r0..r1).zip(v) {
                        put(r, t, x);
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

/// A block of one matrix's output: weight rows × tokens.
struct Task {
    mat: usize,
    rows: Range<usize>,
    tokens: Range<usize>,
}

/// The tasks of matrix `mat` (`rows` output rows, `m`'s weights). One token: rows split into
/// chunks of at least [`MIN_TASK_BYTES`] of weights, with a few chunks per thread for balance.
/// Several tokens: `[rows, tokens]` blocks, row ranges outermost (consecutive tasks share weight
/// rows), tokens innermost.
fn tasks(mat: usize, m: &Mat, rows: usize, n_tokens: usize) -> impl Iterator<Item = Task> {
    let threads = rayon::current_num_threads();
    let by_balance = rows.div_ceil(4 * threads);
    let (task_rows, task_tokens) = if n_tokens == 1 {
        let by_bytes = MIN_TASK_BYTES.div_ceil(m.w_row);
        let chunk = by_balance.max(by_bytes).next_multiple_of(DECODE_ROWS);
        (chunk.min(rows), 1)
    } else {
        // With few tokens a task reads its weights for little work: give it more rows, as
        // decode does.
        let tokens_per_task = n_tokens.min(TASK_TOKENS);
        let by_bytes = MIN_TASK_BYTES.div_ceil(m.w_row * tokens_per_task);
        (
            by_bytes.min(by_balance).next_multiple_of(TASK_ROWS),
            TASK_TOKENS,
        )
    };
    let token_tasks = n_tokens.div_ceil(task_tokens);
    (0..rows.div_ceil(task_rows) * token_tasks).map(move |task| {
        let r0 = task / token_tasks * task_rows;
        let t0 = task % token_tasks * task_tokens;
        Task {
            mat,
            rows: r0..(r0 + task_rows).min(rows),
            tokens: t0..(t0 + task_tokens).min(n_tokens),
        }
    })
}

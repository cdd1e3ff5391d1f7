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
//! Decode (`n_tokens == 1`) is memory bound: each weight row is streamed once, in one
//! contiguous share per thread and matrix, either one row after another or, for formats with a
//! two-row kernel, a row from each half of the share at a time (two long sequential streams,
//! which the hardware prefetcher follows; adjacent rows side by side it does not). A small batch
//! (2 to 16 tokens: a serving step of several sequences, an expert's few tokens) is scheduled the
//! same way, and formats with a small-batch kernel ([`TileFns::cols`]) apply each weight row to
//! every token of the step while it is in registers, so the step streams the weights once. Prefill
//! splits the output into (rows × tokens) tasks, iterating tokens innermost, so a weight row
//! stays in L1 while it meets a block of activation rows that stays in L2. On CPUs with AVX-512 VNNI the prefill tiles of
//! Q4_K and the symmetric legacy formats use it, bit-identical to the AVX2 tiles and dots.
//!
//! Weights packed at load in groups of 8 interleaved rows ([`Weight::packed`], see
//! [`crate::quant::packed`]: Q8_0, Q5_0, Q4_0, IQ4_NL, MXFP4, Q4_K, Q5_K, Q6_K) take one kernel on every path instead: a
//! group of rows with up to 8 tokens at a time, the group's eight row sums built in one register
//! and one float step per block for all eight. Decode streams each group once; prompts meet each
//! group (in L1) with every token of the task. Their numerics are the packed format's own (one
//! fused multiply-add per block, in block order), the same for any number of tokens.
//!
//! [`matmul_batch`] runs any number of independent matmuls (the experts of a MoE layer, the
//! heads of a per-head projection) in one parallel region, so the pool is woken and waited for
//! once per batch rather than once per matrix.

use std::cell::Cell;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::dispatch::{active_isa, dot_fn, packed_fn, quant_fn, tile_fns, DotFn, QuantFn};
use crate::dtype::DType;
use crate::kernel::{
    ActBlock, ColsFn, PackedFn, TileFns, COLS_MAX, PACK_ROWS, TILE_ROWS, TILE_TOKENS,
};
use crate::pool;
use crate::quant::packed::act_blocks;

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
    /// Whether `data` is packed in groups of 8 interleaved rows ([`crate::quant::packed`];
    /// `rows` then is a multiple of 8). Such weights go through the packed kernels on every
    /// path, with their own numerics.
    pub packed: bool,
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

/// Matmuls of up to this many tokens (a serving step's decode batch) are scheduled as decode:
/// long contiguous row ranges per task that stream each weight row from memory once for all the
/// tokens. Cut into prefill's small tasks, a batch of 2 or 4 streamed the weights at a third of
/// decode's rate (Qwen2.5-0.5B: a step of 2 one-token sequences took 3x a step of 1).
/// Up to 16 tokens go through the small-batch kernels (two groups of 8 over the same rows, still
/// in L2), which beat prefill's tasks there.
const DECODE_TOKENS: usize = 16;

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
    /// The [`ActBlock`]s of quantized activations that packed weights meet, reused likewise.
    static ACT_BLOCKS: Cell<Vec<ActBlock>> = const { Cell::new(Vec::new()) };
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
    if let Some(first) = ws.first() {
        assert!(
            ws.iter().all(|w| w.cols == first.cols),
            "weights of one input share their columns"
        );
    }
    let mut jobs: Vec<MatJob> = ws
        .iter()
        .zip(outs.iter_mut())
        .map(|(w, out)| MatJob {
            w: *w,
            x,
            n_tokens,
            out,
        })
        .collect();
    matmul_batch(&mut jobs);
}

/// Identifies one quantization of an input: its address and length, columns and vec-dot type.
type InputKey = (*const f32, usize, usize, DType);

/// One matmul of a [`matmul_batch`]: `out = w x` for `n_tokens` rows of `x`, as [`matmul`].
pub struct MatJob<'a, 'o> {
    /// The weights `[rows, cols]`.
    pub w: Weight<'a>,
    /// Activations `[n_tokens, cols]`.
    pub x: &'a [f32],
    /// Rows of `x`.
    pub n_tokens: usize,
    /// Output `[n_tokens, rows]`.
    pub out: &'o mut [f32],
}

/// Independent matmuls (each expert of a MoE layer, each head of a per-head projection) in one
/// parallel region, each output bit-identical to [`matmul`]'s. Jobs whose `x` is the same slice
/// share one quantization of it. A thread that finishes one job's tasks goes straight on to the
/// next job's, so the pool is woken once and waits once for the lot instead of once per matrix.
///
/// # Panics
/// As [`matmul`] for each job.
pub fn matmul_batch(jobs: &mut [MatJob]) {
    for j in jobs.iter() {
        check_shapes(&j.w, j.x, j.n_tokens, j.out);
    }
    // Each distinct (input, vec-dot type)'s quantized rows, one after another in one buffer.
    let isa = active_isa();
    let key = |j: &MatJob| (j.x.as_ptr(), j.x.len(), j.w.cols, j.w.dtype.vec_dot_type());
    // (input key, offset, row bytes)
    let mut inputs: Vec<(InputKey, usize, usize)> = Vec::new();
    let mut len = 0;
    for j in jobs.iter().filter(|j| j.n_tokens > 0 && j.w.cols > 0) {
        let k = key(j);
        if !inputs.iter().any(|&(i, ..)| i == k) {
            let a_row =
                k.3.row_bytes(j.w.cols)
                    .expect("vec-dot types have the weights' block length");
            inputs.push((k, len, a_row));
            len += j.n_tokens * a_row;
        }
    }
    let mut acts = ACTIVATIONS.with(Cell::take);
    acts.resize(len, 0);
    let mut done = vec![false; inputs.len()];
    for j in jobs.iter() {
        if let Some(i) = inputs.iter().position(|&(k, ..)| k == key(j)) {
            if !done[i] {
                done[i] = true;
                let (k, off, a_row) = inputs[i];
                let dst = &mut acts[off..off + j.n_tokens * a_row];
                quantize_rows(quant_fn(k.3, isa), j.x, j.w.cols, dst, a_row);
            }
        }
    }

    // Side data of each input that packed weights meet: (input index, offset in `aux`).
    let mut aux = ACT_BLOCKS.with(Cell::take);
    aux.clear();
    let mut aux_at: Vec<(usize, usize)> = Vec::new();
    for j in jobs
        .iter()
        .filter(|j| j.w.packed && j.n_tokens > 0 && j.w.cols > 0)
    {
        let i = inputs
            .iter()
            .position(|&(k, ..)| k == key(j))
            .expect("every job's input was quantized");
        if !aux_at.iter().any(|&(k, _)| k == i) {
            let (_, off, a_row) = inputs[i];
            aux_at.push((i, aux.len()));
            let nb = j.w.cols / j.w.dtype.block_len();
            act_blocks(&acts[off..], a_row, j.n_tokens, nb, &mut aux);
        }
    }

    let mut mats: Vec<Mat> = Vec::with_capacity(jobs.len());
    for j in jobs.iter_mut() {
        if j.w.cols == 0 {
            j.out.fill(0.0);
        }
        let (acts, a_row) = match inputs.iter().find(|&&(k, ..)| k == key(j)) {
            Some(&(_, off, a_row)) => (&acts[off..off + j.n_tokens * a_row], a_row),
            None => (&acts[..0], 0),
        };
        let packed = if j.w.packed {
            let f = packed_fn(j.w.dtype, isa);
            assert!(
                f.is_some() && j.w.rows.is_multiple_of(PACK_ROWS),
                "{} weight [{}, {}] marked packed",
                j.w.dtype.name(),
                j.w.rows,
                j.w.cols
            );
            f
        } else {
            None
        };
        let aux = inputs
            .iter()
            .position(|&(k, ..)| k == key(j))
            .and_then(|i| aux_at.iter().find(|&&(k, _)| k == i))
            .map_or(&aux[..0], |&(_, off)| &aux[off..]);
        mats.push(Mat {
            packed,
            aux,
            block_len: j.w.dtype.block_len(),
            dot: dot_fn(j.w.dtype, isa),
            tiles: tile_fns(j.w.dtype, isa),
            w: j.w.data,
            w_row: j.w.row_bytes(),
            cols: j.w.cols,
            acts,
            a_row,
            rows: j.w.rows,
            n_tokens: j.n_tokens,
            out: OutPtr(j.out.as_mut_ptr()),
        });
    }
    let mut tasks: Vec<Task> = mats
        .iter()
        .enumerate()
        .filter(|(_, m)| m.rows > 0 && m.n_tokens > DECODE_TOKENS && m.cols > 0)
        .flat_map(|(i, m)| tasks(i, m))
        .collect();
    decode_tasks(&mats, rayon::current_num_threads(), &mut tasks);
    let run_task = |task: &Task| {
        let m = &mats[task.mat];
        let (rows, n_tokens, out) = (m.rows, m.n_tokens, m.out);
        // Writes the values of rows `r..` of token `t`.
        let put = |t: usize, r: usize, vals: &[f32]| {
            assert!(t < n_tokens && r + vals.len() <= rows);
            // SAFETY: `out[t * rows + r ..][..vals.len()]` is inside `out` (`n_tokens * rows`
            // long, checked in `check_shapes`; the bounds just asserted); each (t, r) belongs to
            // exactly one task, so no two tasks write the same element, and `out` is borrowed
            // mutably for the whole parallel loop, which reads none of it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    vals.as_ptr(),
                    out.get().add(t * rows + r),
                    vals.len(),
                );
            }
        };
        if let Some(f) = m.packed {
            m.packed(f, task.rows.clone(), task.tokens.clone(), put);
        } else if n_tokens == 1 {
            let r = task.rows.clone();
            // SAFETY: `out` is the `rows`-long output of this matrix (checked in
            // `check_shapes`), borrowed mutably for the whole parallel loop; tasks of one matrix
            // cover disjoint row ranges inside it, so this slice aliases no other task's.
            let out = unsafe { std::slice::from_raw_parts_mut(out.get().add(r.start), r.len()) };
            m.rows(r.start, 0, out);
        } else if let Some(cols) = m.small_batch() {
            m.cols(cols, task.rows.clone(), task.tokens.clone(), put);
        } else {
            m.block(task.rows.clone(), task.tokens.clone(), put);
        }
    };
    if !tasks.is_empty() {
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
    }
    drop(mats);
    ACTIVATIONS.with(|c| c.set(acts));
    ACT_BLOCKS.with(|c| c.set(aux));
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
    /// The packed kernel, for packed weights.
    packed: Option<PackedFn>,
    /// The activations' [`ActBlock`]s, token by token, for packed weights of the formats with
    /// Q8_0 activations (empty otherwise).
    aux: &'a [ActBlock],
    /// Values per block of the weights' format.
    block_len: usize,
    dot: DotFn,
    /// Register-tiled kernels, bit-identical per element to `dot`, where the format has them.
    tiles: Option<TileFns>,
    w: &'a [u8],
    w_row: usize,
    cols: usize,
    acts: &'a [u8],
    a_row: usize,
    /// Output rows and tokens, and where the output goes.
    rows: usize,
    n_tokens: usize,
    out: OutPtr,
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

    /// Computes `out[k] = [r0 + k, t]`. Decode streams each weight row once, and the hardware
    /// prefetcher follows a few long sequential streams best: walking 4 adjacent rows side by
    /// side (a 4 × 1 register tile) streamed the Q8_0 experts of DeepSeek-V2-Lite at 14-20 GB/s
    /// where single rows reach 28-32 GB/s (`bench_experts`, 2 threads), and software
    /// prefetching did not close the gap. So where the format has a two-row kernel
    /// ([`TileFns::pair`]) its rows come from the two halves of the range, two long streams
    /// (Q5_0 23 -> 29 GB/s streamed with 2 threads; adjacent pairs fell to 10); otherwise one row
    /// after another.
    fn rows(&self, r0: usize, t: usize, out: &mut [f32]) {
        if let Some(pair) = self.tiles.and_then(|t| t.pair) {
            let h = out.len() / 2;
            let (lo, hi) = out.split_at_mut(h);
            for (i, (l, u)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
                let w = [self.w_row(r0 + i), self.w_row(r0 + h + i)];
                let [[a], [b]] = pair(self.cols, w, [self.act_row(t)]);
                (*l, *u) = (a, b);
            }
            if hi.len() > h {
                hi[h] = self.element(r0 + 2 * h, t);
            }
            return;
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.element(r0 + i, t);
        }
    }

    /// The small-batch kernel, where the format has one and this matmul is a decode batch of
    /// 2 to [`DECODE_TOKENS`] tokens, or a prompt of a format whose small-batch kernel also
    /// serves prompts ([`TileFns::cols_for_prompts`]).
    fn small_batch(&self) -> Option<ColsFn> {
        let tiles = self.tiles?;
        let cols = tiles.cols?;
        let batch = (2..=DECODE_TOKENS).contains(&self.n_tokens);
        (batch || (tiles.cols_for_prompts && self.n_tokens > DECODE_TOKENS)).then_some(cols)
    }

    /// Calls `put(t, r, values)` with the values of rows `r .. r + 8` of token `t`, covering
    /// rows `rows` (whole groups) × tokens `tokens` through the packed kernel `f`: a group at a
    /// time, each group with every token (8 at a time) while it is in L1.
    fn packed(
        &self,
        f: PackedFn,
        rows: Range<usize>,
        tokens: Range<usize>,
        mut put: impl FnMut(usize, usize, &[f32]),
    ) {
        let nb = self.cols / self.block_len;
        let group_bytes = PACK_ROWS * self.w_row;
        let mut buf = [[0.0f32; PACK_ROWS]; COLS_MAX];
        for r in rows.step_by(PACK_ROWS) {
            let group = &self.w[r * self.w_row..][..group_bytes];
            for t0 in tokens.clone().step_by(COLS_MAX) {
                let n = COLS_MAX.min(tokens.end - t0);
                let a = &self.acts[t0 * self.a_row..];
                let aux = self.aux.get(t0 * nb..).unwrap_or_default();
                f(nb, group, a, self.a_row, aux, n, &mut buf[..n]);
                for (t, v) in buf[..n].iter().enumerate() {
                    put(t0 + t, r, v);
                }
            }
        }
    }

    /// Calls `put(t, r, values)` with runs of `values` for rows `r..` of token `t`, covering rows
    /// `rows` × all tokens through the small-batch kernel `cols`: each weight row is read once
    /// for every token. The rows go in two halves, two long sequential streams as in
    /// [`Mat::rows`] (adjacent rows side by side streamed the 151936-row Q8_0 output head at
    /// 2 tokens 30% slower), [`TASK_ROWS`] rows of each half per call.
    fn cols(
        &self,
        cols: ColsFn,
        rows: Range<usize>,
        tokens: Range<usize>,
        mut put: impl FnMut(usize, usize, &[f32]),
    ) {
        let half = rows.len().div_ceil(2);
        let starts = [rows.start, rows.start + half];
        let mut buf = [[[0.0f32; COLS_MAX]; TASK_ROWS]; 2];
        let mut vals = [0.0f32; TASK_ROWS];
        for i in (0..half).step_by(TASK_ROWS) {
            let n0 = TASK_ROWS.min(half - i);
            let n1 = TASK_ROWS.min((rows.len() - half).saturating_sub(i));
            // Groups of up to COLS_MAX tokens; the chunk's weight rows stay in L2 for the next.
            for t0 in tokens.clone().step_by(COLS_MAX) {
                let n_tok = COLS_MAX.min(tokens.end - t0);
                let [b0, b1] = &mut buf;
                let w = starts.map(|s| &self.w[(s + i) * self.w_row..]);
                let out = [&mut b0[..n0], &mut b1[..n1]];
                let acts = &self.acts[t0 * self.a_row..];
                cols(self.cols, w, self.w_row, acts, self.a_row, n_tok, out);
                for (s, b) in starts.iter().zip([&b0[..n0], &b1[..n1]]) {
                    for t in 0..n_tok {
                        for (v, o) in vals.iter_mut().zip(b) {
                            *v = o[t];
                        }
                        put(t0 + t, s + i, &vals[..b.len()]);
                    }
                }
            }
        }
    }

    /// Calls `put(t, r, values)` with runs of `values` for rows `r..` of token `t`, covering rows
    /// `rows` × tokens `tokens` (at most
    /// [`TASK_TOKENS`] of them): whole [`TILE_TOKENS`] groups of tokens in [`TILE_ROWS`] ×
    /// [`TILE_TOKENS`] register tiles, one strip call per pair of rows, the
    /// tokens left over (all of them when there are few) a token at a time through
    /// [`Mat::rows`], the rows left over element by element.
    fn block(
        &self,
        rows: Range<usize>,
        tokens: Range<usize>,
        mut put: impl FnMut(usize, usize, &[f32]),
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
                    put(t, r0, &v[..r1 - r0]);
                }
            }
            for r in r_end..rows.end {
                for t in tokens.start..t_end {
                    put(t, r, &[self.element(r, t)]);
                }
            }
        }
        let mut buf = [0.0f32; TASK_ROWS];
        for r0 in rows.clone().step_by(TASK_ROWS) {
            let out = &mut buf[..TASK_ROWS.min(rows.end - r0)];
            for t in t_end..tokens.end {
                self.rows(r0, t, out);
                put(t, r0, out);
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

/// The tasks of a region's one-token matrices (decode), appended to `out`: guided
/// self-scheduling. Each task takes `1/threads` of the region's decode weight bytes not yet handed
/// out (at least [`MIN_TASK_BYTES`], at most the rest of its matrix). Tasks start long: every task
/// start is a new stream the hardware prefetcher has to pick up, and fewer, longer streams
/// measured faster (DeepSeek-V2-Lite Q4_K_M tg128: 4 tasks per thread and matrix ~18, 1 ~19-20
/// tok/s). They shrink toward the region's end, where the thread that is ahead takes the small
/// ones instead of waiting for the other to finish its half of the last matrix (time waiting at
/// region ends: 5.6% -> 3.7% of DeepSeek-V2-Lite's decode).
fn decode_tasks(mats: &[Mat], threads: usize, out: &mut Vec<Task>) {
    let decode = |m: &&Mat| (1..=DECODE_TOKENS).contains(&m.n_tokens) && m.rows > 0 && m.cols > 0;
    let mut remaining: usize = mats.iter().filter(decode).map(|m| m.rows * m.w_row).sum();
    for (i, m) in mats.iter().enumerate().filter(|(_, m)| decode(m)) {
        let mut r0 = 0;
        while r0 < m.rows {
            let bytes = (remaining / threads.max(1)).max(MIN_TASK_BYTES);
            let mut n = bytes.div_ceil(m.w_row).min(m.rows - r0);
            // No sliver below the minimum left at the end of a matrix.
            if (m.rows - r0 - n) * m.w_row < MIN_TASK_BYTES {
                n = m.rows - r0;
            }
            // Packed weights go in whole groups (their row count is a multiple of the group).
            if m.packed.is_some() {
                n = n.next_multiple_of(PACK_ROWS).min(m.rows - r0);
            }
            out.push(Task {
                mat: i,
                rows: r0..r0 + n,
                tokens: 0..m.n_tokens,
            });
            r0 += n;
            remaining -= n * m.w_row;
        }
    }
}

/// The tasks of matrix `mat` (`m`) of several tokens: `[rows, tokens]` blocks, row ranges
/// outermost (consecutive tasks share weight rows), tokens innermost.
fn tasks(mat: usize, m: &Mat) -> impl Iterator<Item = Task> {
    let (rows, n_tokens) = (m.rows, m.n_tokens);
    let threads = rayon::current_num_threads();
    // With few tokens a task reads its weights for little work: give it more rows, as decode
    // does.
    let tokens_per_task = n_tokens.min(TASK_TOKENS);
    let by_bytes = MIN_TASK_BYTES.div_ceil(m.w_row * tokens_per_task);
    let by_balance = rows.div_ceil(4 * threads);
    let task_rows = by_bytes.min(by_balance).next_multiple_of(TASK_ROWS);
    let token_tasks = n_tokens.div_ceil(TASK_TOKENS);
    (0..rows.div_ceil(task_rows) * token_tasks).map(move |task| {
        let r0 = task / token_tasks * task_rows;
        let t0 = task % token_tasks * TASK_TOKENS;
        Task {
            mat,
            rows: r0..(r0 + task_rows).min(rows),
            tokens: t0..(t0 + TASK_TOKENS).min(n_tokens),
        }
    })
}

//! The leaf of the crate's kernel layers: the instruction sets and what this CPU offers, and the
//! signatures every kernel has (dequantize, quantize, dot product, register tiles, small-batch
//! kernels).
//!
//! Imports run one way: this module and [`crate::dtype`] import nothing of the crate; the block
//! formats with their scalar references ([`crate::quant`]) import only them; the SIMD kernels
//! ([`crate::simd`]) import those; [`crate::dispatch`] picks among quant and simd; matmul,
//! attention and activations sit on top.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Instruction set a kernel is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
}

impl Isa {
    /// The best ISA this CPU supports (AVX2 requires FMA and F16C too).
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }
}

/// The ISA the dispatched kernels use: [`Isa::detect`], once.
pub fn active_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

/// Set by [`disable_avx512`].
static AVX512_DISABLED: AtomicBool = AtomicBool::new(false);

/// Stops handing out the AVX-512 kernels from now on, even where the CPU has them. Results are
/// identical with and without (the AVX-512 kernels equal the AVX2 ones bit for bit); this exists
/// to compare their speed. Call it before running a model.
pub fn disable_avx512() {
    AVX512_DISABLED.store(true, Ordering::Relaxed);
}

/// Whether this CPU runs the AVX-512 kernels (F, BW, VL, VNNI, with AVX2, FMA and F16C) and they
/// have not been turned off.
pub fn avx512_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    !AVX512_DISABLED.load(Ordering::Relaxed)
        && *OK.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512vnni")
                    && std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("f16c")
            }
            #[cfg(not(target_arch = "x86_64"))]
            false
        })
}

/// Dequantizes `dst.len()` values from `src` (whole blocks of `dtype`).
pub type DequantFn = fn(src: &[u8], dst: &mut [f32]);
/// Quantizes `src` (a multiple of the block length) into `dst` (whole blocks).
pub type QuantFn = fn(src: &[f32], dst: &mut [u8]);
/// Dot product of `n` values: weights `w` of some type and activations `a` in its vec-dot type.
pub type DotFn = fn(n: usize, w: &[u8], a: &[u8]) -> f32;

// ---------------------------------------------------------------------------------------------
// Register-tiled dot products (for matmul).

/// Weight rows per [`TileFns::tile`] call (prefill).
pub const TILE_ROWS: usize = 2;
/// Activation rows per [`TileFns::tile`] call (prefill).
pub const TILE_TOKENS: usize = 4;

/// [`TILE_ROWS`] weight rows with [`TILE_TOKENS`] activation rows (`n` values each): `out[r][t]`.
pub type TileFn = fn(n: usize, w: [&[u8]; TILE_ROWS], a: [&[u8]; TILE_TOKENS]) -> TileOut;
/// The output of a [`TileFn`].
pub type TileOut = [[f32; TILE_TOKENS]; TILE_ROWS];
/// [`TILE_ROWS`] weight rows with `out.len()` groups of [`TILE_TOKENS`] activation rows, the
/// rows `a_row` bytes apart in `a`: `out[g]` is the [`TileFn`] result for group `g`. One call
/// for a task's tokens, so the checks and the indirect call are paid once, not per tile.
pub type StripFn = fn(n: usize, w: [&[u8]; TILE_ROWS], a: &[u8], a_row: usize, out: &mut [TileOut]);
/// Two weight rows with one activation row: a 2 × 1 register tile.
pub type PairFn = fn(n: usize, w: [&[u8]; 2], a: [&[u8]; 1]) -> [[f32; 1]; 2];
/// Most activation rows a [`ColsFn`] takes: the largest batch matmul schedules as decode.
pub const COLS_MAX: usize = 8;
/// A small batch (decode of several sequences, a speculative step): two sets of weight rows,
/// `w[s]` holding `out[s].len()` rows `w_row` bytes apart, each row with the `n_tok` (1 to
/// [`COLS_MAX`]) activation rows `a_row` bytes apart in `a`: `out[s][k][t]` for row `k` of set
/// `s` and token `t`. Each weight block is loaded and decoded once for all the tokens (whose
/// blocks stay in L1), so a step of a few tokens costs little more than one token's. The two sets
/// are two sequential streams (the hardware prefetcher follows long streams; matmul gives each
/// thread's range in two halves); `out[1]` has as many rows as `out[0]` or one fewer.
pub type ColsFn = fn(
    n: usize,
    w: [&[u8]; 2],
    w_row: usize,
    a: &[u8],
    a_row: usize,
    n_tok: usize,
    out: [&mut [[f32; COLS_MAX]]; 2],
);

/// One Q8_0 activation block's side data for the packed kernels ([`PackedFn`]): its scale as
/// f32 and minus the sum of its 32 codes (the packed weights hold unsigned codes `q + offset`,
/// so a block's integer sum is `Σ code·y - offset·Σ y`). Computed once per token and block.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C)]
pub struct ActBlock {
    /// The block's scale.
    pub d: f32,
    /// `-Σ y` over its 32 codes.
    pub neg_sum: i32,
}

/// Rows of a packed group (see `quant::packed`).
pub const PACK_ROWS: usize = 8;

/// Packed weights: the 8 rows of one group (`nb` group blocks at `group`) with `n_tok` (1 to
/// [`COLS_MAX`]) Q8_0 activation rows `a_row` bytes apart in `a`, whose [`ActBlock`]s are
/// `aux[t * nb + b]`: `out[t][r]` for token `t` and row `r` of the group. The same kernel serves
/// decode, small batches and prompts.
pub type PackedFn = fn(
    nb: usize,
    group: &[u8],
    a: &[u8],
    a_row: usize,
    aux: &[ActBlock],
    n_tok: usize,
    out: &mut [[f32; PACK_ROWS]],
);

/// Runs `$body` with `$T` a `const usize` equal to `$n` (1 to [`COLS_MAX`]), so a run-time count
/// of tokens picks a const-generic tile.
///
/// # Panics
/// If `$n` is not in `1..=COLS_MAX`.
macro_rules! for_tokens {
    ($n:expr, $T:ident => $body:expr) => {
        match $n {
            1 => {
                const $T: usize = 1;
                $body
            }
            2 => {
                const $T: usize = 2;
                $body
            }
            3 => {
                const $T: usize = 3;
                $body
            }
            4 => {
                const $T: usize = 4;
                $body
            }
            5 => {
                const $T: usize = 5;
                $body
            }
            6 => {
                const $T: usize = 6;
                $body
            }
            7 => {
                const $T: usize = 7;
                $body
            }
            8 => {
                const $T: usize = 8;
                $body
            }
            n => panic!(
                "a small batch has 1 to {} tokens, not {n}",
                $crate::kernel::COLS_MAX
            ),
        }
    };
}
pub(crate) use for_tokens;

/// Dot products of several weight rows with several activation rows at once, decoding each weight
/// block once for all tokens and loading each activation block once for all rows. Each element is
/// bit-identical to the format's [`crate::dispatch::dot_fn`] on the same ISA, so callers may mix them freely
/// without breaking batch invariance.
#[derive(Debug, Clone, Copy)]
pub struct TileFns {
    /// Prefill: a register tile of rows × tokens.
    pub tile: TileFn,
    /// Prefill: [`TileFns::tile`] over a strip of token groups.
    pub strip: StripFn,
    /// Decode: two rows at once, where that is faster than two dot products. A single dot
    /// product's accumulator is one chain of dependent FMAs, one per block, so for the legacy
    /// formats (a block of 32 values is little other work) the chain's latency bounds the dot;
    /// two rows run two chains (and share the activation's loads).
    pub pair: Option<PairFn>,
    /// Decode of a small batch: each weight row with every token of the step.
    pub cols: Option<ColsFn>,
    /// Prompts too go through [`TileFns::cols`] (8 tokens per weight row at a time) rather than
    /// the strips (2 rows × 4 tokens), where that measured faster: the K-quants (896×4864,
    /// 512 tokens, 2 threads: Q3_K 31.8 -> 24.6 ms, Q6_K 20.0 -> 17.6 with AVX-512; with AVX2
    /// Q2_K 26.2 -> 24.3, Q5_K 26.7 -> 23.2, IQ4_XS 27.6 -> 22.6, Q4_K 24.0 -> 23.2); not
    /// the legacy formats (Q4_0 24.9 -> 26.2).
    pub cols_for_prompts: bool,
}

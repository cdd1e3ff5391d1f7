//! The gated feed-forward block: `down(act(gate · x) ⊙ up · x)`, and the choice between it and
//! a Mixture of Experts per layer.

use super::moe::MoeFfn;
use super::ops::{geglu, swiglu};
use crate::decoder::Tracer;
use crate::error::ModelError;
use crate::weights::{Linear, WeightStore};

/// The gate's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (SwiGLU): Llama, Qwen, Mistral, DeepSeek.
    Silu,
    /// GELU with the tanh approximation (GeGLU): Gemma.
    GeluTanh,
}

/// A gated feed-forward block's three matrices.
pub struct GatedFfn {
    /// `[ff, d]`.
    pub gate: Linear,
    /// `[ff, d]`.
    pub up: Linear,
    /// `[d, ff]`.
    pub down: Linear,
}

impl GatedFfn {
    /// Loads `blk.{il}.ffn_{gate,up,down}{infix}.weight` (`infix`: `""` for the dense block,
    /// `"_shexp"` for a shared expert).
    ///
    /// # Errors
    /// Missing tensors, wrong shapes, unsupported types.
    pub fn load(
        s: &WeightStore,
        il: usize,
        infix: &str,
        d: usize,
        ff: usize,
    ) -> Result<GatedFfn, ModelError> {
        let n = |t: &str| format!("blk.{il}.ffn_{t}{infix}.weight");
        Ok(GatedFfn {
            gate: s.linear(&n("gate"), ff, d)?,
            up: s.linear(&n("up"), ff, d)?,
            down: s.linear(&n("down"), d, ff)?,
        })
    }

    /// The three matrices.
    pub fn weights(&self) -> [&Linear; 3] {
        [&self.gate, &self.up, &self.down]
    }

    /// The block on the normalized rows `h` (`[n, d]`) into `out` (`[n, d]`), with the gated
    /// activation traced as `ffn_swiglu` / `ffn_geglu` of layer `il`.
    pub(crate) fn forward(
        &self,
        s: &WeightStore,
        act: Activation,
        h: &[f32],
        out: &mut [f32],
        trace: (&Tracer, usize),
    ) {
        let n = h.len() / self.gate.cols;
        let ff = self.gate.rows;
        let mut g = vec![0.0; n * ff]; // [n, n_ff]
        let mut u = vec![0.0; n * ff]; // [n, n_ff]
        s.matmul_many(&[&self.gate, &self.up], h, n, &mut [&mut g, &mut u]);
        let name = match act {
            Activation::Silu => {
                swiglu(&mut g, &u);
                "ffn_swiglu"
            }
            Activation::GeluTanh => {
                geglu(&mut g, &u);
                "ffn_geglu"
            }
        };
        trace.0.at(name, trace.1, &g);
        s.matmul(&self.down, &g, n, out); // [n, d]
    }
}

/// A layer's feed-forward block: dense, or a Mixture of Experts.
// One per layer, made once at load: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Ffn {
    Dense(GatedFfn),
    Moe(MoeFfn),
}

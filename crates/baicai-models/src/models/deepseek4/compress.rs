//! The compressors of CSA and HCA layers and the lightning indexer's: per token `kv_proj` and
//! `gate_proj`, pooled per window of `m` tokens (HCA) or overlapping windows of `2m` (CSA) with a
//! softmax over positions, then RMSNorm and RoPE.

use baicai_kernels::attention::softmax_inplace as softmax;

use super::LayerLoader;
use crate::blocks::norm::rms_norm;
use crate::blocks::rope::Rope;
use crate::error::ModelError;
use crate::weights::Linear;

/// A compressor: per token `kv_proj`/`gate_proj` of `2w` (overlapping, CSA) or `w` (HCA)
/// values, pooled per window with a softmax over positions, then RMSNorm and RoPE.
pub(super) struct Compressor {
    pub(super) kv: Linear,
    pub(super) gate: Linear,
    /// `position_bias` (`ape`): `[m, proj width]`.
    ape: Vec<f32>,
    norm: Vec<f32>,
    /// Width of one entry.
    width: usize,
    /// Ca/Cb halves over windows of `2m` (CSA) rather than `m` (HCA).
    overlap: bool,
}

/// The lightning indexer of a CSA layer.
pub(super) struct Indexer {
    pub(super) comp: Compressor,
    /// `[index_n_heads · index_head_dim, q_lora_rank]`: the indexer's queries.
    pub(super) q_b: Linear,
    /// `[index_n_heads, D]`: the per-head weights.
    pub(super) proj: Linear,
}

impl LayerLoader<'_> {
    /// The compressor `blk.{il}.{prefix}_*` of entries `width` wide, at this layer's rate.
    pub(super) fn compressor(
        &self,
        prefix: &str,
        width: usize,
        overlap: bool,
    ) -> Result<Compressor, ModelError> {
        let (s, dm, rate) = (self.s, self.cfg.n_embd, self.v4.kinds[self.il].1);
        let name = |t: &str| self.name(&format!("{prefix}_{t}.weight"));
        let pw = if overlap { 2 * width } else { width };
        let ape_l = s.linear(&name("ape"), rate, pw)?;
        let mut ape = vec![0.0; rate * pw]; // [m, proj width]
        for (r, row) in ape.chunks_exact_mut(pw).enumerate() {
            s.row(&ape_l, r, row);
        }
        Ok(Compressor {
            kv: s.linear(&name("kv"), pw, dm)?,
            gate: s.linear(&name("gate"), pw, dm)?,
            ape,
            norm: s.vector(&name("norm"), width)?,
            width,
            overlap,
        })
    }

    /// The lightning indexer of a CSA layer: its compressor, query and head-weight projections.
    pub(super) fn indexer(&self) -> Result<Indexer, ModelError> {
        let (s, v4, ix) = (self.s, self.v4, self.v4.index);
        Ok(Indexer {
            comp: self.compressor("indexer_compressor", ix.head_dim, true)?,
            q_b: s.linear(
                &self.name("indexer.attn_q_b.weight"),
                ix.n_head * ix.head_dim,
                v4.q_lora_rank,
            )?,
            proj: s.linear(
                &self.name("indexer.proj.weight"),
                ix.n_head,
                self.cfg.n_embd,
            )?,
        })
    }
}

impl Compressor {
    /// The entry of window `w` (rate `m`) from the raw rows: `raw(pos)` gives token `pos`'s
    /// kv then gate projections (`[2 · proj width]`, the gate without the position bias).
    pub(super) fn entry(
        &self,
        w: usize,
        m: usize,
        raw: impl Fn(usize) -> Vec<f32>,
        eps: f32,
        rope: &Rope,
        rope_dim: usize,
    ) -> Vec<f32> {
        let cw = self.width;
        let pw = if self.overlap { 2 * cw } else { cw };
        // Rows of window w (and for CSA of window w−1, whose Ca halves join).
        let first = if self.overlap && w > 0 {
            (w - 1) * m
        } else {
            w * m
        };
        let rows: Vec<Vec<f32>> = (first..(w + 1) * m).map(raw).collect(); // [m or 2m][2 · pw]
        let row = |pos: usize| &rows[pos - first];
        // Slots: (kv value, gate logit) per channel; for CSA, Ca of window w−1 then Cb of w.
        let mut out = vec![0.0; cw]; // [width]: pooled
        let mut logits = Vec::with_capacity(2 * m);
        let mut vals = Vec::with_capacity(2 * m);
        for (ch, o) in out.iter_mut().enumerate() {
            logits.clear();
            vals.clear();
            if self.overlap {
                for j in 0..m {
                    if w == 0 {
                        logits.push(f32::NEG_INFINITY);
                        vals.push(0.0);
                    } else {
                        let r = row((w - 1) * m + j);
                        logits.push(r[pw + ch] + self.ape[j * pw + ch]);
                        vals.push(r[ch]);
                    }
                }
                for j in 0..m {
                    let r = row(w * m + j);
                    logits.push(r[pw + cw + ch] + self.ape[j * pw + cw + ch]);
                    vals.push(r[cw + ch]);
                }
            } else {
                for j in 0..m {
                    let r = row(w * m + j);
                    logits.push(r[pw + ch] + self.ape[j * pw + ch]);
                    vals.push(r[ch]);
                }
            }
            softmax(&mut logits);
            *o = vals.iter().zip(&logits).map(|(v, p)| v * p).sum();
        }
        let mut e = vec![0.0; cw]; // [width]: normalized, rotated
        rms_norm(&out, &self.norm, eps, &mut e);
        rope.rotate(&mut e[cw - rope_dim..], w * m, false);
        e
    }
}

//! Manifold-constrained hyper-connections: the residual is `N = hc_mult` streams; before each
//! block a learned projection of all streams gives `pre` (collapse into the block input), `post`
//! (expand the block output) and `comb` (mix the streams, made doubly stochastic by
//! Sinkhorn-Knopp).

use baicai_kernels::attention::softmax_inplace as softmax;

use super::{Deepseek4, LayerLoader};
use crate::blocks::norm::rms_norm;
use crate::error::ModelError;
use crate::weights::Linear;

/// One hyper-connection: `fn` `[(2+N)·N, N·D]`, `base` `[(2+N)·N]`, `scale` `[3]`.
pub(super) struct HyperConnection {
    pub(super) proj: Linear,
    base: Vec<f32>,
    scale: Vec<f32>,
}

/// The mixing weights of one token's streams.
pub(super) struct HcWeights {
    /// `[N]`: collapse the streams into the block input.
    pre: Vec<f32>,
    /// `[N]`: expand the block output into the streams.
    post: Vec<f32>,
    /// `[N, N]`, doubly stochastic: `x'[k] += Σ_j comb[j][k] · x[j]`.
    comb: Vec<f32>,
}

impl LayerLoader<'_> {
    /// The hyper-connection `blk.{il}.{p}_{fn,base,scale}`.
    pub(super) fn hc(&self, p: &str) -> Result<HyperConnection, ModelError> {
        let (s, n, dm) = (self.s, self.v4.hc_mult, self.cfg.n_embd);
        let m = (2 + n) * n;
        Ok(HyperConnection {
            proj: s.linear(&self.name(&format!("{p}_fn.weight")), m, n * dm)?,
            base: s.vector(&self.name(&format!("{p}_base.weight")), m)?,
            scale: s.vector(&self.name(&format!("{p}_scale.weight")), 3)?,
        })
    }
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

impl Deepseek4 {
    /// The mixing weights of every token's streams (`x`: `[n, N·D]`).
    pub(super) fn hc_weights(&self, hc: &HyperConnection, x: &[f32]) -> Vec<HcWeights> {
        let nd = self.v4.hc_mult * self.cfg.n_embd;
        let (nn, eps) = (self.v4.hc_mult, self.v4.hc_eps);
        let n_tok = x.len() / nd;
        let m = (2 + nn) * nn;
        let mut f = vec![0.0; x.len()]; // [n, N·D]: unweighted RMSNorm of all streams
        rms_norm(x, &vec![1.0; nd], self.cfg.rms_eps, &mut f);
        let mut y = vec![0.0; n_tok * m]; // [n, (2+N)·N]
        self.store.matmul(&hc.proj, &f, n_tok, &mut y);
        y.chunks_exact(m)
            .map(|y| {
                let pre = (0..nn) // [N]
                    .map(|i| sigmoid(y[i] * hc.scale[0] + hc.base[i]) + eps)
                    .collect();
                let post = (0..nn) // [N]
                    .map(|i| 2.0 * sigmoid(y[nn + i] * hc.scale[1] + hc.base[nn + i]))
                    .collect();
                let mut comb: Vec<f32> = (0..nn * nn) // [N, N]
                    .map(|i| y[2 * nn + i] * hc.scale[2] + hc.base[2 * nn + i])
                    .collect();
                self.sinkhorn(&mut comb);
                HcWeights { pre, post, comb }
            })
            .collect()
    }

    /// Makes `comb` (`[N, N]` logits) doubly stochastic: a row softmax (plus `eps`), then
    /// Sinkhorn-Knopp, columns first and last (transformers' order).
    fn sinkhorn(&self, comb: &mut [f32]) {
        let (nn, eps) = (self.v4.hc_mult, self.v4.hc_eps);
        for row in comb.chunks_exact_mut(nn) {
            softmax(row);
            row.iter_mut().for_each(|v| *v += eps);
        }
        let cols = |c: &mut [f32]| {
            for j in 0..nn {
                let s: f32 = (0..nn).map(|i| c[i * nn + j]).sum::<f32>() + eps;
                (0..nn).for_each(|i| c[i * nn + j] /= s);
            }
        };
        cols(comb);
        for _ in 1..self.v4.hc_sinkhorn_iters {
            for row in comb.chunks_exact_mut(nn) {
                let s: f32 = row.iter().sum::<f32>() + eps;
                row.iter_mut().for_each(|v| *v /= s);
            }
            cols(comb);
        }
    }

    /// Collapses each token's streams with `pre` into `[n, D]`.
    pub(super) fn collapse(&self, w: &[HcWeights], x: &[f32]) -> Vec<f32> {
        let d = self.cfg.n_embd;
        let nn = self.v4.hc_mult;
        let mut out = vec![0.0; w.len() * d]; // [n, D]
        for (t, (o, hw)) in out.chunks_exact_mut(d).zip(w).enumerate() {
            let xt = &x[t * nn * d..(t + 1) * nn * d]; // [N, D]
            for (i, od) in o.iter_mut().enumerate() {
                *od = (0..nn).map(|s| hw.pre[s] * xt[s * d + i]).sum();
            }
        }
        out
    }

    /// `x'[k] = post[k] · block + Σ_j comb[j][k] · x[j]`, per token.
    pub(super) fn expand(&self, w: &[HcWeights], x: &mut [f32], block: &[f32]) {
        let d = self.cfg.n_embd;
        let nn = self.v4.hc_mult;
        for (t, hw) in w.iter().enumerate() {
            let xt = &mut x[t * nn * d..(t + 1) * nn * d]; // [N, D]
            let old = xt.to_vec(); // [N, D]
            let bt = &block[t * d..(t + 1) * d]; // [D]
            for k in 0..nn {
                for i in 0..d {
                    let mixed: f32 = (0..nn).map(|j| hw.comb[j * nn + k] * old[j * d + i]).sum();
                    xt[k * d + i] = hw.post[k] * bt[i] + mixed;
                }
            }
        }
    }

    /// `hc_head`: the streams' last collapse, with sigmoid weights only (no `post`/`comb`);
    /// `x`: `[n, N·D]` into `[n, D]`.
    pub(super) fn head_collapse(&self, x: &[f32]) -> Vec<f32> {
        let (d, nn) = (self.cfg.n_embd, self.v4.hc_mult);
        let (hc_fn, hc_base, hc_scale) = &self.head_hc;
        let nd = nn * d;
        let n = x.len() / nd;
        let mut f = vec![0.0; x.len()]; // [n, N·D]
        rms_norm(x, &vec![1.0; nd], self.cfg.rms_eps, &mut f);
        let mut mix = vec![0.0; n * nn]; // [n, N]
        self.store.matmul(hc_fn, &f, n, &mut mix);
        let mut h = vec![0.0; n * d]; // [n, D]
        for (t, ht) in h.chunks_exact_mut(d).enumerate() {
            let pre: Vec<f32> = (0..nn) // [N]
                .map(|i| sigmoid(mix[t * nn + i] * hc_scale + hc_base[i]) + self.v4.hc_eps)
                .collect();
            let xt = &x[t * nd..(t + 1) * nd]; // [N, D]
            for (i, hv) in ht.iter_mut().enumerate() {
                *hv = (0..nn).map(|s| pre[s] * xt[s * d + i]).sum();
            }
        }
        h
    }
}

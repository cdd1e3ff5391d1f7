//! Rotary position embeddings: adjacent-pair (original Llama layout in GGUF) or NeoX halves,
//! with linear position scaling, per-frequency divisors (llama3 scaling, `rope_freqs.weight`)
//! or YaRN (Peng et al. 2023, as DeepSeek-V2/V3 configure it).

use crate::config::{RopeStyle, Yarn};

/// Rotary position embedding tables for one head dimension and base.
#[derive(Debug, Clone)]
pub struct Rope {
    /// `inv_freq[i] = base^(-2i/d) / freq_factor[i]`, `[d/2]` (YaRN-blended when configured).
    inv_freq: Vec<f64>,
    /// Positions are multiplied by this (1 / linear scaling factor).
    pos_scale: f64,
    /// cos/sin magnitude: YaRN's `yarn_mscale(mscale) / yarn_mscale(mscale_all_dim)`, else 1.
    mscale: f32,
    style: RopeStyle,
}

/// Settings of a [`Rope`].
#[derive(Debug, Clone, Copy)]
pub struct RopeParams<'a> {
    pub head_dim: usize,
    pub base: f32,
    pub linear_factor: f32,
    pub style: RopeStyle,
    /// Per-frequency divisors (llama3 scaling writes them as `rope_freqs.weight`).
    pub freq_factors: Option<&'a [f32]>,
    /// YaRN scaling of the frequencies and of cos/sin.
    pub yarn: Option<&'a Yarn>,
}

/// YaRN's magnitude correction `0.1·m·ln(factor) + 1` (1 when not extending the context).
pub fn yarn_mscale(factor: f32, m: f32) -> f32 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * m * factor.ln() + 1.0
    }
}

/// The factor YaRN multiplies the softmax scale by: `yarn_mscale(mscale_all_dim)²`.
pub fn yarn_attn_factor(y: &Yarn) -> f32 {
    let m = yarn_mscale(y.factor, y.mscale_all_dim);
    m * m
}

/// YaRN's per-frequency blend (YaRN §A.2): dimensions rotating faster than `beta_fast` turns over
/// the original context keep their frequency, slower than `beta_slow` are divided by the factor,
/// with a linear ramp between.
fn yarn_frequencies(inv_freq: &[f64], dim: usize, base: f32, y: &Yarn) -> Vec<f64> {
    let corr = |rot: f32| {
        dim as f64 * ((y.original_context as f64) / (rot as f64 * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * (base as f64).ln())
    };
    let low = corr(y.beta_fast).floor().max(0.0);
    let high = corr(y.beta_slow).ceil().min(dim as f64 - 1.0);
    inv_freq
        .iter()
        .enumerate()
        .map(|(i, &e)| {
            let ramp = ((i as f64 - low) / (high - low).max(0.001)).clamp(0.0, 1.0);
            let keep = 1.0 - ramp; // 1: extrapolate (original frequency)
            e / y.factor as f64 * (1.0 - keep) + e * keep
        })
        .collect()
}

impl Rope {
    pub fn new(p: RopeParams) -> Rope {
        let half = p.head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| {
                let f = (p.base as f64).powf(-2.0 * i as f64 / p.head_dim as f64);
                f / p.freq_factors.map_or(1.0, |ff| ff[i] as f64)
            })
            .collect();
        let (inv_freq, mscale) = match p.yarn {
            Some(y) => (
                yarn_frequencies(&inv_freq, p.head_dim, p.base, y),
                yarn_mscale(y.factor, y.mscale) / yarn_mscale(y.factor, y.mscale_all_dim),
            ),
            None => (inv_freq, 1.0),
        };
        Rope {
            inv_freq,
            pos_scale: 1.0 / p.linear_factor as f64,
            mscale,
            style: p.style,
        }
    }

    /// Rotates one slice `x` (`[head_dim]`) for position `pos`; with `inverse`, by `-pos`
    /// (DeepSeek-V4 undoes the rotation its values carried on the attention output).
    pub fn rotate(&self, x: &mut [f32], pos: usize, inverse: bool) {
        let d = self.inv_freq.len() * 2;
        let p = pos as f64 * self.pos_scale;
        for (i, &f) in self.inv_freq.iter().enumerate() {
            let (s, c) = (p * f).sin_cos();
            let (c, s) = (c as f32 * self.mscale, s as f32 * self.mscale);
            let s = if inverse { -s } else { s };
            let (a, b) = match self.style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::Neox => (i, i + d / 2),
            };
            let (x0, x1) = (x[a], x[b]);
            x[a] = x0 * c - x1 * s;
            x[b] = x0 * s + x1 * c;
        }
    }

    /// Rotates every head of `x` (`[n_tokens, n_heads, head_dim]`), token `t` at `pos0 + t`.
    pub fn apply(&self, x: &mut [f32], n_tokens: usize, pos0: usize) {
        let d = self.inv_freq.len() * 2;
        let per_tok = x.len() / n_tokens;
        let mut cs = vec![(0f32, 0f32); d / 2];
        for (t, xt) in x.chunks_exact_mut(per_tok).enumerate() {
            let pos = (pos0 + t) as f64 * self.pos_scale;
            for (c, &f) in cs.iter_mut().zip(&self.inv_freq) {
                let (s, co) = (pos * f).sin_cos();
                *c = (co as f32 * self.mscale, s as f32 * self.mscale);
            }
            for head in xt.chunks_exact_mut(d) {
                for (i, &(c, s)) in cs.iter().enumerate() {
                    let (a, b) = match self.style {
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        RopeStyle::Neox => (i, i + d / 2),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * c - x1 * s;
                    head[b] = x0 * s + x1 * c;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yarn(factor: f32) -> Yarn {
        Yarn {
            factor,
            original_context: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale_all_dim: 0.707,
            mscale: 0.707,
        }
    }

    fn rope(dim: usize, yarn: Option<&Yarn>) -> Rope {
        Rope::new(RopeParams {
            head_dim: dim,
            base: 10_000.0,
            linear_factor: 1.0,
            style: RopeStyle::Interleaved,
            freq_factors: None,
            yarn,
        })
    }

    /// YaRN keeps the fastest frequencies, divides the slowest by the factor and blends between
    /// (YaRN §A.2); with `mscale == mscale_all_dim` cos/sin keep magnitude 1.
    #[test]
    fn yarn_keeps_fast_and_interpolates_slow_frequencies() {
        let y = yarn(40.0);
        let (plain, scaled) = (rope(64, None), rope(64, Some(&y)));
        assert_eq!(scaled.inv_freq[0], plain.inv_freq[0]);
        let last = plain.inv_freq.len() - 1;
        let ratio = plain.inv_freq[last] / scaled.inv_freq[last];
        assert!((ratio - 40.0).abs() < 1e-9, "{ratio}");
        assert!(scaled
            .inv_freq
            .iter()
            .zip(&plain.inv_freq)
            .all(|(s, p)| s <= p));
        assert_eq!(scaled.mscale, 1.0);
        let a = yarn_attn_factor(&y);
        assert!((a.sqrt() - (0.1 * 0.707 * 40f32.ln() + 1.0)).abs() < 1e-6);
    }

    /// Rotation by position 0 is the identity; rotations preserve each pair's norm.
    #[test]
    fn rotation_is_identity_at_zero_and_norm_preserving() {
        let r = rope(8, None);
        let x: Vec<f32> = (0..16).map(|i| i as f32 * 0.25 - 1.0).collect();
        let mut y = x.clone();
        r.apply(&mut y, 1, 0);
        assert_eq!(x, y);
        r.apply(&mut y, 1, 17);
        for (a, b) in x.chunks_exact(2).zip(y.chunks_exact(2)) {
            let (na, nb) = (a[0].hypot(a[1]), b[0].hypot(b[1]));
            assert!((na - nb).abs() < 1e-5);
        }
    }
}

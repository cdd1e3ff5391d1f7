//! Llama-style attention with Mixture-of-Experts feed-forward blocks: Mixtral (`llama` with
//! experts), Qwen1.5/Qwen2-MoE (`qwen2moe`: qkv bias, a sigmoid-gated shared expert) and
//! Qwen3-MoE (`qwen3moe`: per-head QK-norm) — Hugging Face's `MixtralSparseMoeBlock`,
//! `Qwen2MoeSparseMoeBlock`, `Qwen3MoeSparseMoeBlock`.

use std::sync::Mutex;

use crate::config::{Arch, ModelConfig, MoeConfig, RopeStyle};
use crate::decoder::{self, Blocks, Ends, Seg};
use crate::error::ModelError;
use crate::layers::{self, AttnParams, Rope, RopeParams};
use crate::moe::{self, ExpertLoad, Experts};
use crate::weights::{Linear, WeightStore};
use crate::{CausalLm, SeqInput};

struct Shared {
    gate: Linear,
    up: Linear,
    down: Linear,
    /// Qwen2-MoE: `sigmoid(gate_inp · x)` scales the shared expert's output.
    gate_inp: Option<Vec<f32>>,
}

struct Block {
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    bias: Option<[Vec<f32>; 3]>,
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    ffn_norm: Vec<f32>,
    router: Linear,
    experts: Experts,
    shared: Option<Shared>,
}

/// A Llama-style model whose feed-forward blocks are Mixtures of Experts.
pub struct SparseMoe {
    store: WeightStore,
    cfg: ModelConfig,
    moe: MoeConfig,
    ends: Ends,
    blocks: Vec<Block>,
    rope: Rope,
    load: Mutex<Vec<ExpertLoad>>,
}

/// A `[n]` vector stored either 1-D (GGUF) or as a one-row matrix (checkpoints).
fn gate_vector(s: &WeightStore, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
    match s.vector(name, n) {
        Ok(v) => Ok(v),
        Err(ModelError::BadShape { .. }) => {
            let lin = s.linear(name, 1, n)?;
            let mut v = vec![0.0; n];
            s.row(&lin, 0, &mut v);
            Ok(v)
        }
        Err(e) => Err(e),
    }
}

impl SparseMoe {
    /// Loads and checks every tensor.
    ///
    /// # Errors
    /// Missing tensors, wrong shapes, unsupported types.
    pub fn load(s: WeightStore, cfg: ModelConfig) -> Result<SparseMoe, ModelError> {
        let moe = cfg
            .moe
            .clone()
            .ok_or_else(|| ModelError::Config("MoE model without expert sizes".into()))?;
        let d = cfg.n_embd;
        let ends = Ends::load(&s, &cfg)?;
        let rope = Rope::new(RopeParams {
            head_dim: cfg.head_dim_k,
            base: cfg.rope_base,
            linear_factor: 1.0,
            style: cfg.rope_style,
            freq_factors: None,
        });
        debug_assert!(cfg.arch != Arch::Qwen2Moe || cfg.rope_style == RopeStyle::Neox);
        let blocks = (0..cfg.n_layer)
            .map(|il| {
                let n = |t: &str| format!("blk.{il}.{t}");
                let ne = moe.router.n_expert;
                let bias = if cfg.arch == Arch::Qwen2Moe {
                    Some([
                        s.vector(&n("attn_q.bias"), cfg.q_dim())?,
                        s.vector(&n("attn_k.bias"), cfg.k_dim())?,
                        s.vector(&n("attn_v.bias"), cfg.v_dim())?,
                    ])
                } else {
                    None
                };
                let qk_norm = if cfg.arch == Arch::Qwen3Moe {
                    Some((
                        s.vector(&n("attn_q_norm.weight"), cfg.head_dim_k)?,
                        s.vector(&n("attn_k_norm.weight"), cfg.head_dim_k)?,
                    ))
                } else {
                    None
                };
                let shared = if moe.n_ff_shared > 0 {
                    let w = moe.n_ff_shared;
                    Some(Shared {
                        gate: s.linear(&n("ffn_gate_shexp.weight"), w, d)?,
                        up: s.linear(&n("ffn_up_shexp.weight"), w, d)?,
                        down: s.linear(&n("ffn_down_shexp.weight"), d, w)?,
                        gate_inp: if s.has(&n("ffn_gate_inp_shexp.weight")) {
                            Some(gate_vector(&s, &n("ffn_gate_inp_shexp.weight"), d)?)
                        } else {
                            None
                        },
                    })
                } else {
                    None
                };
                Ok(Block {
                    attn_norm: s.vector(&n("attn_norm.weight"), d)?,
                    wq: s.linear(&n("attn_q.weight"), cfg.q_dim(), d)?,
                    wk: s.linear(&n("attn_k.weight"), cfg.k_dim(), d)?,
                    wv: s.linear(&n("attn_v.weight"), cfg.v_dim(), d)?,
                    wo: s.linear(&n("attn_output.weight"), d, cfg.n_head * cfg.head_dim_v)?,
                    bias,
                    qk_norm,
                    ffn_norm: s.vector(&n("ffn_norm.weight"), d)?,
                    router: s.linear(&n("ffn_gate_inp.weight"), ne, d)?,
                    experts: Experts::load(&s, &format!("blk.{il}"), ne, d, moe.n_ff_expert)?,
                    shared,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(SparseMoe {
            load: Mutex::new(vec![ExpertLoad::default(); cfg.n_layer]),
            store: s,
            cfg,
            moe,
            ends,
            blocks,
            rope,
        })
    }
}

impl Blocks for SparseMoe {
    fn parts(&self) -> (&WeightStore, &Ends, &ModelConfig) {
        (&self.store, &self.ends, &self.cfg)
    }

    fn attention(&self, il: usize, x: &[f32], segs: &mut [Seg], out: &mut [f32]) {
        let (c, b, s) = (&self.cfg, &self.blocks[il], &self.store);
        let n = x.len() / c.n_embd;
        let mut h = vec![0.0; x.len()]; // [n, n_embd]
        layers::rms_norm(x, &b.attn_norm, c.rms_eps, &mut h);
        let mut q = vec![0.0; n * c.q_dim()]; // [n, n_head, head_dim]
        let mut k = vec![0.0; n * c.k_dim()]; // [n, n_head_kv, head_dim]
        let mut v = vec![0.0; n * c.v_dim()]; // [n, n_head_kv, head_dim]
        s.matmul_many(&[&b.wq, &b.wk, &b.wv], &h, n, &mut [&mut q, &mut k, &mut v]);
        if let Some([bq, bk, bv]) = &b.bias {
            layers::add_bias(&mut q, bq);
            layers::add_bias(&mut k, bk);
            layers::add_bias(&mut v, bv);
        }
        if let Some((qn, kn)) = &b.qk_norm {
            layers::rms_norm_inplace(&mut q, qn, c.rms_eps);
            layers::rms_norm_inplace(&mut k, kn, c.rms_eps);
        }
        let mut attn = vec![0.0; n * c.n_head * c.head_dim_v]; // [n, n_head, head_dim]
        for seg in segs.iter_mut() {
            let r = seg.rows.clone();
            let (qs, ks, vs) = (
                r.start * c.q_dim(),
                r.start * c.k_dim(),
                r.start * c.v_dim(),
            );
            let q = &mut q[qs..qs + r.len() * c.q_dim()]; // [len, n_head, head_dim]
            let k = &mut k[ks..ks + r.len() * c.k_dim()]; // [len, n_head_kv, head_dim]
            self.rope.apply(q, r.len(), seg.pos0);
            self.rope.apply(k, r.len(), seg.pos0);
            seg.cache.store(il, k, &v[vs..vs + r.len() * c.v_dim()]);
            let (kc, vc) = seg.cache.layer(il, seg.pos0 + r.len());
            let os = r.start * c.n_head * c.head_dim_v;
            let o = &mut attn[os..os + r.len() * c.n_head * c.head_dim_v];
            layers::attention(q, kc, vc, AttnParams::causal(c, seg.pos0), o);
        }
        s.matmul(&b.wo, &attn, n, out); // [n, n_embd]
    }

    fn ffn(&self, il: usize, x: &[f32], out: &mut [f32]) {
        let (c, b) = (&self.cfg, &self.blocks[il]);
        let d = c.n_embd;
        let mut h = vec![0.0; x.len()]; // [n, n_embd]
        layers::rms_norm(x, &b.ffn_norm, c.rms_eps, &mut h);
        let mut load = self.load.lock().ok();
        let route = |l: &[f32]| moe::route(l, &self.moe.router, None);
        let shared = b.shared.as_ref().map(|sh| [&sh.gate, &sh.up, &sh.down]);
        let layer_load = load.as_mut().map(|l| &mut l[il]);
        let shared_out = b
            .experts
            .forward(&h, &b.router, route, shared, out, layer_load);
        if let (Some(sh), Some(so)) = (&b.shared, shared_out) {
            for (t, (o, so)) in out.chunks_exact_mut(d).zip(so.chunks_exact(d)).enumerate() {
                // Qwen2-MoE: `sigmoid(gate_inp · x)` scales the shared expert's output.
                let gate = sh.gate_inp.as_ref().map_or(1.0, |gi| {
                    let z: f32 = gi
                        .iter()
                        .zip(&h[t * d..(t + 1) * d])
                        .map(|(a, b)| a * b)
                        .sum();
                    1.0 / (1.0 + (-z).exp())
                });
                o.iter_mut().zip(so).for_each(|(o, s)| *o += gate * s);
            }
        }
    }
}

impl CausalLm for SparseMoe {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn forward_batch(&self, seqs: &mut [SeqInput]) -> Result<Vec<Vec<f32>>, ModelError> {
        decoder::forward(self, seqs)
    }

    fn expert_load(&self) -> Option<Vec<ExpertLoad>> {
        self.load.lock().ok().map(|l| l.clone())
    }

    fn weight_bytes_per_token(&self) -> u64 {
        let s = &self.store;
        let mut total = 0;
        for b in &self.blocks {
            total += [&b.wq, &b.wk, &b.wv, &b.wo, &b.router]
                .iter()
                .map(|l| s.bytes(l))
                .sum::<u64>();
            total += b.experts.bytes_per_expert() * self.moe.router.n_used as u64;
            if let Some(sh) = &b.shared {
                total += s.bytes(&sh.gate) + s.bytes(&sh.up) + s.bytes(&sh.down);
            }
        }
        total + self.ends.bytes_per_token()
    }
}

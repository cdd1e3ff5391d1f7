//! Llama 2/3 and Mistral (`llama`), Qwen2/2.5 (`qwen2`: the same block with qkv bias and NeoX
//! RoPE) and Qwen3 (`qwen3`: no qkv bias, an RMSNorm over each query and key head before RoPE) —
//! llama.cpp's `llama.cpp` / `qwen2.cpp` / `qwen3.cpp` graphs.

use crate::config::{Arch, ModelConfig, RopeStyle};
use crate::decoder::{self, Blocks, Ends, Seg};
use crate::error::ModelError;
use crate::kv::KvCache;
use crate::layers::{self, Rope, RopeParams};
use crate::weights::{Linear, WeightStore};
use crate::{CausalLm, SeqInput, Trace};

struct Block {
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    /// Qwen3's per-head QK-norm weights (`[head_dim_k]`).
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A Llama-family model.
pub struct Llama {
    store: WeightStore,
    cfg: ModelConfig,
    ends: Ends,
    blocks: Vec<Block>,
    rope: Rope,
    trace: Option<Trace>,
}

impl Llama {
    /// Loads and checks every tensor.
    ///
    /// # Errors
    /// Missing tensors, wrong shapes, unsupported types.
    pub fn load(s: WeightStore, cfg: ModelConfig) -> Result<Llama, ModelError> {
        let (d, ff) = (cfg.n_embd, cfg.n_ff);
        // Tied embeddings: Qwen2.5 small models reuse the token embedding as the output head.
        let ends = Ends::load(&s, &cfg)?;
        let freq_factors = s.vector_opt("rope_freqs.weight", cfg.head_dim_k / 2)?;
        let rope = Rope::new(RopeParams {
            head_dim: cfg.head_dim_k,
            base: cfg.rope_base,
            linear_factor: cfg.rope_linear_factor,
            style: cfg.rope_style,
            freq_factors: freq_factors.as_deref(),
        });
        let blocks = (0..cfg.n_layer)
            .map(|il| {
                let n = |t: &str| format!("blk.{il}.{t}");
                Ok(Block {
                    attn_norm: s.vector(&n("attn_norm.weight"), d)?,
                    wq: s.linear(&n("attn_q.weight"), cfg.q_dim(), d)?,
                    wk: s.linear(&n("attn_k.weight"), cfg.k_dim(), d)?,
                    wv: s.linear(&n("attn_v.weight"), cfg.v_dim(), d)?,
                    wo: s.linear(&n("attn_output.weight"), d, cfg.n_head * cfg.head_dim_v)?,
                    bq: s.vector_opt(&n("attn_q.bias"), cfg.q_dim())?,
                    bk: s.vector_opt(&n("attn_k.bias"), cfg.k_dim())?,
                    bv: s.vector_opt(&n("attn_v.bias"), cfg.v_dim())?,
                    q_norm: s.vector_opt(&n("attn_q_norm.weight"), cfg.head_dim_k)?,
                    k_norm: s.vector_opt(&n("attn_k_norm.weight"), cfg.head_dim_k)?,
                    ffn_norm: s.vector(&n("ffn_norm.weight"), d)?,
                    gate: s.linear(&n("ffn_gate.weight"), ff, d)?,
                    up: s.linear(&n("ffn_up.weight"), ff, d)?,
                    down: s.linear(&n("ffn_down.weight"), d, ff)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        // Each family's defining tensors must be there in every layer: a file without them is
        // another model, not this one with parts left out.
        for (il, b) in blocks.iter().enumerate() {
            let missing = match cfg.arch {
                Arch::Qwen2 if b.bq.is_none() => Some("attn_q.bias"),
                Arch::Qwen3 if b.q_norm.is_none() => Some("attn_q_norm.weight"),
                Arch::Qwen3 if b.k_norm.is_none() => Some("attn_k_norm.weight"),
                _ => None,
            };
            if let Some(t) = missing {
                return Err(ModelError::MissingTensor(format!("blk.{il}.{t}")));
            }
        }
        debug_assert!(cfg.arch == Arch::Llama || cfg.rope_style == RopeStyle::Neox);
        Ok(Llama {
            store: s,
            cfg,
            ends,
            blocks,
            rope,
            trace: None,
        })
    }

    /// Trace point `name` of layer `il` (see [`Trace`]).
    fn trace_point(&self, name: &str, il: usize, x: &[f32]) {
        if let Some(t) = &self.trace {
            t(name, il, x);
        }
    }

    fn attention_block(&self, il: usize, x: &[f32], segs: &mut [Seg], out: &mut [f32]) {
        let (c, b, s) = (&self.cfg, &self.blocks[il], &self.store);
        let n = x.len() / c.n_embd;
        let mut h = vec![0.0; x.len()]; // [n, n_embd]
        layers::rms_norm(x, &b.attn_norm, c.rms_eps, &mut h);
        self.trace_point("attn_norm", il, &h);
        let mut q = vec![0.0; n * c.q_dim()]; // [n, n_head, head_dim_k]
        let mut k = vec![0.0; n * c.k_dim()]; // [n, n_head_kv, head_dim_k]
        let mut v = vec![0.0; n * c.v_dim()]; // [n, n_head_kv, head_dim_v]
        let qkv = [s.weight(&b.wq), s.weight(&b.wk), s.weight(&b.wv)];
        baicai_kernels::matmul_many(&qkv, &h, n, &mut [&mut q, &mut k, &mut v]);
        for (t, bias) in [(&mut q, &b.bq), (&mut k, &b.bk), (&mut v, &b.bv)] {
            if let Some(bias) = bias {
                layers::add_bias(t, bias);
            }
        }
        if let (Some(qn), Some(kn)) = (&b.q_norm, &b.k_norm) {
            layers::rms_norm_inplace(&mut q, qn, c.rms_eps);
            layers::rms_norm_inplace(&mut k, kn, c.rms_eps);
            self.trace_point("Qcur_normed", il, &q);
        }
        for seg in segs.iter() {
            let (qs, ks) = (seg.rows.start * c.q_dim(), seg.rows.start * c.k_dim());
            self.rope
                .apply(&mut q[qs..qs + seg.len() * c.q_dim()], seg.len(), seg.pos0);
            self.rope
                .apply(&mut k[ks..ks + seg.len() * c.k_dim()], seg.len(), seg.pos0);
        }
        self.trace_point("Qcur", il, &q);
        self.trace_point("Kcur", il, &k);
        self.trace_point("Vcur", il, &v);
        let mut attn = vec![0.0; n * c.n_head * c.head_dim_v]; // [n, n_head, head_dim_v]
                                                               // Mistral's sliding window (from `config.json`; Llama and Qwen have none).
        let window = c.sliding_window.filter(|_| c.is_swa_layer(il));
        layers::attention_segments_f16(c, il, segs, [&q, &k, &v], window, &mut attn);
        self.trace_point("kqv_out", il, &attn);
        s.matmul(&b.wo, &attn, n, out); // [n, n_embd]
        self.trace_point("attn_out", il, out);
    }

    fn ffn_block(&self, il: usize, x: &[f32], out: &mut [f32]) {
        let (c, b, s) = (&self.cfg, &self.blocks[il], &self.store);
        let n = x.len() / c.n_embd;
        let mut h = vec![0.0; x.len()]; // [n, n_embd]
        layers::rms_norm(x, &b.ffn_norm, c.rms_eps, &mut h);
        self.trace_point("ffn_norm", il, &h);
        let mut g = vec![0.0; n * c.n_ff]; // [n, n_ff]
        let mut u = vec![0.0; n * c.n_ff]; // [n, n_ff]
        let gate_up = [s.weight(&b.gate), s.weight(&b.up)];
        baicai_kernels::matmul_many(&gate_up, &h, n, &mut [&mut g, &mut u]);
        layers::swiglu(&mut g, &u);
        self.trace_point("ffn_swiglu", il, &g);
        s.matmul(&b.down, &g, n, out); // [n, n_embd]
        self.trace_point("ffn_out", il, out);
    }
}

impl Blocks for Llama {
    fn parts(&self) -> (&WeightStore, &Ends, &ModelConfig) {
        (&self.store, &self.ends, &self.cfg)
    }

    fn attention(&self, il: usize, x: &[f32], segs: &mut [Seg], out: &mut [f32]) {
        self.attention_block(il, x, segs, out);
    }

    fn ffn(&self, il: usize, x: &[f32], out: &mut [f32]) {
        self.ffn_block(il, x, out);
    }

    fn trace(&self, name: &str, il: usize, x: &[f32]) {
        self.trace_point(name, il, x);
    }
}

impl CausalLm for Llama {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn forward_batch(&self, seqs: &mut [SeqInput]) -> Result<Vec<Vec<f32>>, ModelError> {
        decoder::forward(self, seqs)
    }

    fn set_trace(&mut self, trace: Option<Trace>) {
        self.trace = trace;
    }

    /// An f16 cache, llama.cpp's default.
    fn new_cache(&self, n_ctx: usize) -> KvCache {
        let c = &self.cfg;
        KvCache::new_f16(
            c.n_layer,
            n_ctx,
            c.n_head_kv * c.head_dim_k,
            c.n_head_kv * c.head_dim_v,
        )
    }

    fn weight_bytes_per_token(&self) -> u64 {
        let ls = self
            .blocks
            .iter()
            .flat_map(|b| [&b.wq, &b.wk, &b.wv, &b.wo, &b.gate, &b.up, &b.down]);
        ls.map(|l| self.store.bytes(l)).sum::<u64>() + self.ends.bytes_per_token()
    }
}

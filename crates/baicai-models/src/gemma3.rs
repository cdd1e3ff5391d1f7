//! Gemma 3 (`gemma3`): interleaved sliding-window and global attention with their own RoPE bases,
//! QK-norm, norms before and after both sub-blocks, GeGLU, embeddings scaled by √d
//! (Gemma 3 technical report §2; llama.cpp's `gemma3.cpp`). GGUF norm weights already include
//! Gemma's `1 + w` offset (the converter adds it; the checkpoint-folder loader adds it too), so the
//! norm is a plain RMSNorm here.

use crate::config::ModelConfig;
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
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
    attn_post_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
    ffn_post_norm: Vec<f32>,
}

/// A Gemma 3 text model.
pub struct Gemma3 {
    store: WeightStore,
    cfg: ModelConfig,
    ends: Ends,
    blocks: Vec<Block>,
    rope_global: Rope,
    rope_local: Rope,
    trace: Option<Trace>,
}

impl Gemma3 {
    /// Loads and checks every tensor.
    ///
    /// # Errors
    /// Missing tensors, wrong shapes, unsupported types.
    pub fn load(s: WeightStore, cfg: ModelConfig) -> Result<Gemma3, ModelError> {
        let (d, ff) = (cfg.n_embd, cfg.n_ff);
        let mut ends = Ends::load(&s, &cfg)?;
        ends.embd_scale = (cfg.n_embd as f32).sqrt();
        let rope = |base, linear_factor| {
            Rope::new(RopeParams {
                head_dim: cfg.head_dim_k,
                base,
                linear_factor,
                style: cfg.rope_style,
                freq_factors: None,
            })
        };
        let blocks = (0..cfg.n_layer)
            .map(|il| {
                let n = |t: &str| format!("blk.{il}.{t}");
                Ok(Block {
                    attn_norm: s.vector(&n("attn_norm.weight"), d)?,
                    wq: s.linear(&n("attn_q.weight"), cfg.q_dim(), d)?,
                    wk: s.linear(&n("attn_k.weight"), cfg.k_dim(), d)?,
                    wv: s.linear(&n("attn_v.weight"), cfg.v_dim(), d)?,
                    wo: s.linear(&n("attn_output.weight"), d, cfg.n_head * cfg.head_dim_v)?,
                    q_norm: s.vector(&n("attn_q_norm.weight"), cfg.head_dim_k)?,
                    k_norm: s.vector(&n("attn_k_norm.weight"), cfg.head_dim_k)?,
                    attn_post_norm: s.vector(&n("post_attention_norm.weight"), d)?,
                    ffn_norm: s.vector(&n("ffn_norm.weight"), d)?,
                    gate: s.linear(&n("ffn_gate.weight"), ff, d)?,
                    up: s.linear(&n("ffn_up.weight"), ff, d)?,
                    down: s.linear(&n("ffn_down.weight"), d, ff)?,
                    ffn_post_norm: s.vector(&n("post_ffw_norm.weight"), d)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Gemma3 {
            rope_global: rope(cfg.rope_base, cfg.rope_linear_factor),
            rope_local: rope(cfg.rope_base_swa, 1.0),
            store: s,
            cfg,
            ends,
            blocks,
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
        let swa = c.is_swa_layer(il);
        let rope = if swa {
            &self.rope_local
        } else {
            &self.rope_global
        };
        let mut h = vec![0.0; x.len()]; // [n, n_embd]
        layers::rms_norm(x, &b.attn_norm, c.rms_eps, &mut h);
        self.trace_point("attn_norm", il, &h);
        let mut q = vec![0.0; n * c.q_dim()]; // [n, n_head, head_dim_k]
        let mut k = vec![0.0; n * c.k_dim()]; // [n, n_head_kv, head_dim_k]
        let mut v = vec![0.0; n * c.v_dim()]; // [n, n_head_kv, head_dim_v]
        let qkv = [s.weight(&b.wq), s.weight(&b.wk), s.weight(&b.wv)];
        baicai_kernels::matmul_many(&qkv, &h, n, &mut [&mut q, &mut k, &mut v]);
        layers::rms_norm_inplace(&mut q, &b.q_norm, c.rms_eps);
        layers::rms_norm_inplace(&mut k, &b.k_norm, c.rms_eps);
        for seg in segs.iter() {
            let (qs, ks) = (seg.rows.start * c.q_dim(), seg.rows.start * c.k_dim());
            rope.apply(&mut q[qs..qs + seg.len() * c.q_dim()], seg.len(), seg.pos0);
            rope.apply(&mut k[ks..ks + seg.len() * c.k_dim()], seg.len(), seg.pos0);
        }
        self.trace_point("Qcur", il, &q);
        self.trace_point("Kcur", il, &k);
        self.trace_point("Vcur", il, &v);
        let mut attn = vec![0.0; n * c.n_head * c.head_dim_v]; // [n, n_head, head_dim_v]
                                                               // query_pre_attn_scalar = head_dim for the released Gemma 3 sizes up to 12B.
        let window = if swa { c.sliding_window } else { None };
        layers::attention_segments_f16(c, il, segs, [&q, &k, &v], window, &mut attn);
        self.trace_point("kqv_out", il, &attn);
        let mut o = vec![0.0; x.len()]; // [n, n_embd]
        s.matmul(&b.wo, &attn, n, &mut o);
        layers::rms_norm(&o, &b.attn_post_norm, c.rms_eps, out);
        self.trace_point("attn_post_norm", il, out);
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
        layers::geglu(&mut g, &u);
        let mut o = vec![0.0; x.len()]; // [n, n_embd]
        s.matmul(&b.down, &g, n, &mut o);
        layers::rms_norm(&o, &b.ffn_post_norm, c.rms_eps, out);
        self.trace_point("ffn_post_norm", il, out);
    }
}

impl Blocks for Gemma3 {
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

impl CausalLm for Gemma3 {
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

//! Gemma 3 (`gemma3`): interleaved sliding-window and global attention with their own RoPE bases,
//! QK-norm, norms before and after both sub-blocks, GeGLU, embeddings scaled by √d
//! (Gemma 3 technical report §2; llama.cpp's `gemma3.cpp`). GGUF norm weights already include
//! Gemma's `1 + w` offset (the converter adds it; the checkpoint-folder loader adds it too), so the
//! norm is a plain RMSNorm here.

use super::ArchSpec;
use crate::blocks::attention::{Gqa, GqaStep, GqaTensors, Presence};
use crate::blocks::ffn::{Activation, GatedFfn};
use crate::blocks::norm::rms_norm;
use crate::blocks::rope::{Rope, RopeParams};
use crate::config::{Arch, ModelConfig, RopeStyle};
use crate::decoder::{self, Blocks, Ends, Seg, Tracer};
use crate::error::ModelError;
use crate::kv::KvCache;
use crate::weights::WeightStore;
use crate::{CausalLm, SeqInput, Trace};

pub(crate) const SPEC: ArchSpec = ArchSpec {
    arch: Arch::Gemma3,
    gguf: "gemma3",
    hf: &["gemma3", "gemma3_text"],
    moe: false,
    rope_gguf: RopeStyle::Neox,
    rope_hf: RopeStyle::Neox,
    gguf_norm_topk_prob: None,
    build: |s, cfg| Ok(Box::new(Gemma3::load(s, cfg)?)),
};

/// Gemma 3's attention: QK-norm, no biases.
const ATTN: GqaTensors = GqaTensors {
    bias: Presence::Absent,
    qk_norm: Presence::Required,
    sinks: Presence::Absent,
};

struct Layer {
    attn_norm: Vec<f32>,
    attn: Gqa,
    attn_post_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    ffn: GatedFfn,
    ffn_post_norm: Vec<f32>,
}

/// A Gemma 3 text model.
pub struct Gemma3 {
    store: WeightStore,
    cfg: ModelConfig,
    ends: Ends,
    layers: Vec<Layer>,
    rope_global: Rope,
    rope_local: Rope,
    trace: Tracer,
}

impl Gemma3 {
    /// Loads and checks every tensor.
    ///
    /// # Errors
    /// Missing tensors, wrong shapes, unsupported types.
    pub fn load(s: WeightStore, cfg: ModelConfig) -> Result<Gemma3, ModelError> {
        let d = cfg.n_embd;
        let mut ends = Ends::load(&s, &cfg)?;
        ends.embd_scale = (cfg.n_embd as f32).sqrt();
        let rope = |base, linear_factor| {
            Rope::new(RopeParams {
                head_dim: cfg.head_dim_k,
                base,
                linear_factor,
                style: cfg.rope_style,
                freq_factors: None,
                yarn: None,
            })
        };
        let layers = (0..cfg.n_layer)
            .map(|il| {
                let n = |t: &str| format!("blk.{il}.{t}");
                Ok(Layer {
                    attn_norm: s.vector(&n("attn_norm.weight"), d)?,
                    attn: Gqa::load(&s, &cfg, il, ATTN)?,
                    attn_post_norm: s.vector(&n("post_attention_norm.weight"), d)?,
                    ffn_norm: s.vector(&n("ffn_norm.weight"), d)?,
                    ffn: GatedFfn::load(&s, il, "", d, cfg.n_ff)?,
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
            layers,
            trace: Tracer::default(),
        })
    }
}

impl Blocks for Gemma3 {
    fn parts(&self) -> (&WeightStore, &Ends, &ModelConfig) {
        (&self.store, &self.ends, &self.cfg)
    }

    fn attention(&self, il: usize, x: &[f32], segs: &mut [Seg], out: &mut [f32]) {
        let (c, l) = (&self.cfg, &self.layers[il]);
        let swa = c.is_swa_layer(il);
        let mut h = vec![0.0; x.len()]; // [n, n_embd]
        rms_norm(x, &l.attn_norm, c.rms_eps, &mut h);
        self.trace.at("attn_norm", il, &h);
        // query_pre_attn_scalar = head_dim for the released Gemma 3 sizes up to 12B.
        let step = GqaStep {
            cfg: c,
            il,
            rope: if swa {
                &self.rope_local
            } else {
                &self.rope_global
            },
            window: if swa { c.sliding_window } else { None },
            trace: &self.trace,
        };
        let mut o = vec![0.0; x.len()]; // [n, n_embd]
        l.attn.forward(&self.store, step, &h, segs, &mut o);
        rms_norm(&o, &l.attn_post_norm, c.rms_eps, out);
        self.trace.at("attn_post_norm", il, out);
    }

    fn ffn(&self, il: usize, x: &[f32], out: &mut [f32]) {
        let (c, l) = (&self.cfg, &self.layers[il]);
        let mut h = vec![0.0; x.len()]; // [n, n_embd]
        rms_norm(x, &l.ffn_norm, c.rms_eps, &mut h);
        self.trace.at("ffn_norm", il, &h);
        let mut o = vec![0.0; x.len()]; // [n, n_embd]
        let act = Activation::GeluTanh;
        l.ffn
            .forward(&self.store, act, &h, &mut o, (&self.trace, il));
        rms_norm(&o, &l.ffn_post_norm, c.rms_eps, out);
        self.trace.at("ffn_post_norm", il, out);
    }

    fn trace(&self, name: &str, il: usize, x: &[f32]) {
        self.trace.at(name, il, x);
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
        self.trace.set(trace);
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
            .layers
            .iter()
            .flat_map(|l| l.attn.weights().into_iter().chain(l.ffn.weights()));
        ls.map(|l| l.n_bytes()).sum::<u64>() + self.ends.bytes_per_token()
    }
}

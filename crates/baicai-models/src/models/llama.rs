//! Llama 2/3 (incl. llama3 RoPE scaling via `rope_freqs.weight`) and Mistral (`llama`), and the
//! graph the whole Llama family shares: pre-norm grouped-query attention with RoPE, then a
//! pre-norm SwiGLU block, dense or a Mixture of Experts (llama.cpp's `llama.cpp` graph). The
//! members ([`super::qwen2`], [`super::qwen3`], [`super::mixtral`], [`super::qwen2moe`],
//! [`super::qwen3moe`]) differ only in the options of these blocks, their [`Family`].

use std::sync::Mutex;

use super::ArchSpec;
use crate::blocks::attention::Presence;
use crate::blocks::attention::{Gqa, GqaStep, GqaTensors};
use crate::blocks::ffn::{Activation, Ffn, GatedFfn};
use crate::blocks::moe::{ExpertLoad, MoeFfn};
use crate::blocks::norm::rms_norm;
use crate::blocks::rope::{Rope, RopeParams};
use crate::config::{Arch, ModelConfig, RopeStyle};
use crate::decoder::{self, Blocks, Ends, Seg, Tracer};
use crate::error::ModelError;
use crate::kv::KvCache;
use crate::weights::WeightStore;
use crate::{CausalLm, SeqInput, Trace};

pub(crate) const SPEC: ArchSpec = ArchSpec {
    arch: Arch::Llama,
    gguf: "llama",
    hf: &["llama", "mistral"],
    moe: false,
    rope_gguf: RopeStyle::Interleaved,
    rope_hf: RopeStyle::Neox,
    gguf_norm_topk_prob: None,
    build: |s, cfg| Ok(Box::new(Llama::load(s, cfg, FAMILY)?)),
};

/// Llama and Mistral take q/k/v biases and QK-norm where a file has them.
const FAMILY: Family = Family {
    attn: GqaTensors {
        bias: Presence::Optional,
        qk_norm: Presence::Optional,
        sinks: Presence::Absent,
    },
    moe: false,
    kv_f16: true,
};

/// What distinguishes one member of the family.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Family {
    /// The attention's optional tensors.
    pub attn: GqaTensors,
    /// Mixture-of-Experts feed-forward blocks in every layer.
    pub moe: bool,
    /// An f16 KV cache (llama.cpp's default) rather than f32.
    pub kv_f16: bool,
}

struct Layer {
    attn_norm: Vec<f32>,
    attn: Gqa,
    ffn_norm: Vec<f32>,
    ffn: Ffn,
}

/// A Llama-family model.
pub struct Llama {
    store: WeightStore,
    cfg: ModelConfig,
    family: Family,
    ends: Ends,
    layers: Vec<Layer>,
    rope: Rope,
    trace: Tracer,
    /// Tokens routed to each expert of each layer (MoE members).
    load: Mutex<Vec<ExpertLoad>>,
}

impl Llama {
    /// Loads and checks every tensor.
    ///
    /// # Errors
    /// Missing tensors, wrong shapes, unsupported types; a MoE member without expert sizes.
    pub(crate) fn load(
        s: WeightStore,
        cfg: ModelConfig,
        family: Family,
    ) -> Result<Llama, ModelError> {
        let d = cfg.n_embd;
        let moe = match (family.moe, &cfg.moe) {
            (true, None) => {
                return Err(ModelError::Config("MoE model without expert sizes".into()))
            }
            (true, Some(m)) => Some(m),
            (false, _) => None,
        };
        // Tied embeddings: Qwen2.5 small models reuse the token embedding as the output head.
        let ends = Ends::load(&s, &cfg)?;
        let freq_factors = s.vector_opt("rope_freqs.weight", cfg.head_dim_k / 2)?;
        let rope = Rope::new(RopeParams {
            head_dim: cfg.head_dim_k,
            base: cfg.rope_base,
            linear_factor: cfg.rope_linear_factor,
            style: cfg.rope_style,
            freq_factors: freq_factors.as_deref(),
            yarn: None,
        });
        let layers = (0..cfg.n_layer)
            .map(|il| {
                let n = |t: &str| format!("blk.{il}.{t}");
                Ok(Layer {
                    attn_norm: s.vector(&n("attn_norm.weight"), d)?,
                    attn: Gqa::load(&s, &cfg, il, family.attn)?,
                    ffn_norm: s.vector(&n("ffn_norm.weight"), d)?,
                    ffn: match moe {
                        Some(m) => Ffn::Moe(MoeFfn::load(&s, il, d, m)?),
                        None => Ffn::Dense(GatedFfn::load(&s, il, "", d, cfg.n_ff)?),
                    },
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Llama {
            load: Mutex::new(vec![ExpertLoad::default(); cfg.n_layer]),
            store: s,
            cfg,
            family,
            ends,
            layers,
            rope,
            trace: Tracer::default(),
        })
    }
}

impl Blocks for Llama {
    fn parts(&self) -> (&WeightStore, &Ends, &ModelConfig) {
        (&self.store, &self.ends, &self.cfg)
    }

    fn attention(&self, il: usize, x: &[f32], segs: &mut [Seg], out: &mut [f32]) {
        let (c, l) = (&self.cfg, &self.layers[il]);
        let mut h = vec![0.0; x.len()]; // [n, n_embd]
        rms_norm(x, &l.attn_norm, c.rms_eps, &mut h);
        self.trace.at("attn_norm", il, &h);
        // Mistral's sliding window (from `config.json`; Llama and Qwen have none).
        let window = c.sliding_window.filter(|_| c.is_swa_layer(il));
        let step = GqaStep {
            cfg: c,
            il,
            rope: &self.rope,
            window,
            trace: &self.trace,
        };
        l.attn.forward(&self.store, step, &h, segs, out); // [n, n_embd]
    }

    fn ffn(&self, il: usize, x: &[f32], out: &mut [f32]) {
        let (c, l) = (&self.cfg, &self.layers[il]);
        let mut h = vec![0.0; x.len()]; // [n, n_embd]
        rms_norm(x, &l.ffn_norm, c.rms_eps, &mut h);
        self.trace.at("ffn_norm", il, &h);
        match &l.ffn {
            Ffn::Dense(f) => f.forward(&self.store, Activation::Silu, &h, out, (&self.trace, il)),
            Ffn::Moe(m) => {
                let mut load = self.load.lock().ok();
                m.forward(&h, out, load.as_mut().map(|l| &mut l[il]));
            }
        }
        self.trace.at("ffn_out", il, out); // [n, n_embd]
    }

    fn trace(&self, name: &str, il: usize, x: &[f32]) {
        self.trace.at(name, il, x);
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
        self.trace.set(trace);
    }

    fn new_cache(&self, n_ctx: usize) -> KvCache {
        let c = &self.cfg;
        let (k, v) = (c.n_head_kv * c.head_dim_k, c.n_head_kv * c.head_dim_v);
        match self.family.kv_f16 {
            true => KvCache::new_f16(c.n_layer, n_ctx, k, v),
            false => KvCache::new(c.n_layer, n_ctx, k, v),
        }
    }

    fn expert_load(&self) -> Option<Vec<ExpertLoad>> {
        match self.family.moe {
            true => self.load.lock().ok().map(|l| l.clone()),
            false => None,
        }
    }

    fn weight_bytes_per_token(&self) -> u64 {
        let layer = |l: &Layer| {
            let attn: u64 = l.attn.weights().iter().map(|w| w.n_bytes()).sum();
            attn + match &l.ffn {
                Ffn::Dense(f) => f.weights().iter().map(|w| w.n_bytes()).sum(),
                Ffn::Moe(m) => m.bytes_per_token(),
            }
        };
        self.layers.iter().map(layer).sum::<u64>() + self.ends.bytes_per_token()
    }
}

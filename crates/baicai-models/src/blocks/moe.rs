//! Mixture-of-Experts: routing exactly as the reference implementations, and expert dispatch
//! grouped by expert so each selected expert's weights are read once per step and unselected
//! experts are never touched (memory-mapped experts stay on disk until used).

use std::sync::atomic::{AtomicBool, Ordering};

use super::ffn::GatedFfn;
use super::ops::swiglu;
use crate::config::MoeConfig;
use crate::weights::{Linear, WeightStore};
use crate::ModelError;
use baicai_kernels::{matmul_batch, MatJob};

/// See [`set_expert_readahead`].
static EXPERT_READAHEAD: AtomicBool = AtomicBool::new(false);

/// Whether each MoE layer, once it has routed its tokens, tells the OS to start reading the
/// selected experts' weights ([`baicai_gguf::will_need`]). Off by default: when the model fits
/// in memory the experts are already there and the calls only cost time. When a memory-mapped
/// model is larger than the memory it may use, most selected experts are on disk, and this lets
/// all of a layer's expert reads run at once instead of one page fault after another.
pub fn set_expert_readahead(on: bool) {
    EXPERT_READAHEAD.store(on, Ordering::Relaxed);
}

/// Whether selected experts are read ahead (see [`set_expert_readahead`]).
pub fn expert_readahead() -> bool {
    EXPERT_READAHEAD.load(Ordering::Relaxed)
}

/// How router logits become expert scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    /// Softmax over all experts (DeepSeek-V2, Qwen-MoE, Mixtral).
    Softmax,
    /// Independent sigmoids (DeepSeek-V3).
    Sigmoid,
    /// Independent `sqrt(softplus(x))` (DeepSeek-V4).
    SqrtSoftplus,
}

/// `sqrt(softplus(x))` (DeepSeek-V4's router), with torch's softplus threshold: `x` itself above
/// 20, where `ln(1 + e^x)` rounds to it.
pub fn sqrt_softplus(x: f32) -> f32 {
    let sp = if x > 20.0 { x } else { x.exp().ln_1p() };
    sp.sqrt()
}

/// How a group of experts is scored for group-limited routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupScore {
    /// The group's best expert score (DeepSeek-V2 `group_limited_greedy`).
    Max,
    /// Sum of the group's two best biased scores (DeepSeek-V3 `noaux_tc`).
    Top2Sum,
}

/// Router settings, named after the Hugging Face config keys.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub n_expert: usize,
    /// `num_experts_per_tok`.
    pub n_used: usize,
    pub scoring: Scoring,
    /// Renormalize the selected weights to sum to 1 (`norm_topk_prob`).
    pub norm_topk_prob: bool,
    /// Multiplies the final weights (`routed_scaling_factor`).
    pub scaling: f32,
    /// `n_group` (1 = no group limit) and `topk_group`.
    pub n_group: usize,
    pub topk_group: usize,
    pub group_score: GroupScore,
}

/// Indices of the `k` largest values, largest first; ties go to the lower index (as
/// `torch.topk` on CPU does for the values seen here). The order is [`f32::total_cmp`]'s, a total
/// order whatever the scores hold: a NaN (from a hostile file's weights) ranks above `+inf` when
/// positive and below `-inf` when negative, and `-0.0` below `0.0`.
pub fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Selects experts for one token from its router logits (`[n_expert]`); returns
/// `(expert, weight)` pairs. `bias` (`e_score_correction_bias`) changes which experts are
/// selected, never their weights (DeepSeek-V3 §2.1.2).
pub fn route(logits: &[f32], cfg: &RouterConfig, bias: Option<&[f32]>) -> Vec<(usize, f32)> {
    let scores: Vec<f32> = match cfg.scoring {
        Scoring::Softmax => {
            let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
            let s: f32 = e.iter().sum();
            e.iter().map(|x| x / s).collect()
        }
        Scoring::Sigmoid => logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
        Scoring::SqrtSoftplus => logits.iter().map(|&x| sqrt_softplus(x)).collect(),
    };
    let mut choice: Vec<f32> = match bias {
        Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
        None => scores.clone(),
    };
    // Validated configurations have equal groups of at least one expert; a group size of 0
    // (more groups than experts) would be a chunk size of 0, so it routes without groups.
    let per = cfg.n_expert / cfg.n_group.max(1);
    if cfg.n_group > 1 && per > 0 {
        let group_scores: Vec<f32> = choice
            .chunks(per)
            .map(|g| match cfg.group_score {
                GroupScore::Max => g.iter().cloned().fold(f32::NEG_INFINITY, f32::max),
                GroupScore::Top2Sum => top_k(g, 2).iter().map(|&i| g[i]).sum(),
            })
            .collect();
        let keep = top_k(&group_scores, cfg.topk_group);
        for (gi, g) in choice.chunks_mut(per).enumerate() {
            if !keep.contains(&gi) {
                // The reference masks with 0 (V2) or -inf (V3); both lose to any kept score
                // except in degenerate cases, so -inf is used for both.
                g.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
            }
        }
    }
    let sel = top_k(&choice, cfg.n_used);
    let mut w: Vec<f32> = sel.iter().map(|&e| scores[e]).collect();
    if cfg.norm_topk_prob {
        let s: f32 = w.iter().sum::<f32>() + 1e-20;
        w.iter_mut().for_each(|x| *x /= s);
    }
    w.iter_mut().for_each(|x| *x *= cfg.scaling);
    sel.into_iter().zip(w).collect()
}

/// The routed experts of one layer.
pub struct Experts {
    /// Per expert: gate `[ff, d]`, up `[ff, d]`, down `[d, ff]`.
    pub experts: Vec<(Linear, Linear, Linear)>,
}

/// Per-layer expert load, for `--moe-stats` and `bench`.
#[derive(Debug, Clone, Default)]
pub struct ExpertLoad {
    /// Tokens routed to each expert, summed over steps.
    pub tokens: Vec<u64>,
}

impl Experts {
    /// Bytes of one expert's three matrices.
    pub fn bytes_per_expert(&self) -> u64 {
        self.experts
            .first()
            .map_or(0, |(g, u, d)| g.n_bytes() + u.n_bytes() + d.n_bytes())
    }

    /// Loads a layer's experts: stacked GGUF tensors (`blk.N.ffn_gate_exps.weight`, …) or one
    /// tensor per expert as checkpoints store them (`blk.N.ffn_gate_exps.E.weight`, …).
    ///
    /// # Errors
    /// Missing tensors, wrong shapes, unsupported types.
    pub fn load(
        store: &WeightStore,
        prefix: &str,
        n_expert: usize,
        d: usize,
        ff: usize,
    ) -> Result<Experts, ModelError> {
        if store.has(&format!("{prefix}.ffn_gate_exps.weight")) {
            return Self::from_stacked(store, prefix, n_expert, d, ff);
        }
        let experts = (0..n_expert)
            .map(|e| {
                Ok((
                    store.linear(&format!("{prefix}.ffn_gate_exps.{e}.weight"), ff, d)?,
                    store.linear(&format!("{prefix}.ffn_up_exps.{e}.weight"), ff, d)?,
                    store.linear(&format!("{prefix}.ffn_down_exps.{e}.weight"), d, ff)?,
                ))
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Experts { experts })
    }

    /// Loads the stacked GGUF expert tensors of a layer (`ffn_{gate,up,down}_exps`).
    ///
    /// # Errors
    /// Missing tensors, wrong shapes, unsupported types.
    pub fn from_stacked(
        store: &WeightStore,
        prefix: &str,
        n_expert: usize,
        d: usize,
        ff: usize,
    ) -> Result<Experts, ModelError> {
        let gate = store.stacked(&format!("{prefix}.ffn_gate_exps.weight"), n_expert, ff, d)?;
        let up = store.stacked(&format!("{prefix}.ffn_up_exps.weight"), n_expert, ff, d)?;
        let down = store.stacked(&format!("{prefix}.ffn_down_exps.weight"), n_expert, d, ff)?;
        Ok(Experts {
            experts: gate
                .into_iter()
                .zip(up)
                .zip(down)
                .map(|((g, u), d)| (g, u, d))
                .collect(),
        })
    }

    /// One MoE layer's experts on `x` (`[n, d]`, already normalized), in three parallel regions
    /// whatever the number of experts: (1) the router and the shared expert's gate/up; (2) every
    /// selected expert's gate/up, tokens grouped by expert so each is read once, and the shared
    /// expert's down; (3) every selected expert's down. `route` turns one token's router logits
    /// into its `(expert, weight)` pairs.
    ///
    /// Writes `out[t] = Σ_e w_{t,e} · down_e(silu(gate_e x_t) ⊙ up_e x_t)` (experts added in index
    /// order) and returns the shared expert's output `[n, d]`, which the caller combines.
    pub fn forward(
        &self,
        x: &[f32],
        router: &Linear,
        route: impl Fn(&[f32]) -> Vec<(usize, f32)>,
        shared: Option<[&Linear; 3]>,
        out: &mut [f32],
        load: Option<&mut ExpertLoad>,
    ) -> Option<Vec<f32>> {
        let n_expert = self.experts.len();
        let d = router.cols;
        let n = x.len() / d;

        // (1) Router logits and the shared expert's gate/up.
        let mut logits = vec![0.0; n * n_expert]; // [n, n_expert]
        let ff_sh = shared.map_or(0, |[g, ..]| g.rows);
        let mut sg = vec![0.0; n * ff_sh]; // [n, ff_shared]
        let mut su = vec![0.0; n * ff_sh];
        {
            let mut jobs = vec![MatJob {
                w: router.weight(),
                x,
                n_tokens: n,
                out: &mut logits,
            }];
            if let Some([g, u, _]) = shared {
                jobs.push(MatJob {
                    w: g.weight(),
                    x,
                    n_tokens: n,
                    out: &mut sg,
                });
                jobs.push(MatJob {
                    w: u.weight(),
                    x,
                    n_tokens: n,
                    out: &mut su,
                });
            }
            matmul_batch(&mut jobs);
        }
        let mut by_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n_expert];
        for (t, l) in logits.chunks_exact(n_expert).enumerate() {
            for (e, w) in route(l) {
                by_expert[e].push((t, w));
            }
        }
        if let Some(load) = load {
            load.tokens.resize(n_expert, 0);
            for (e, toks) in by_expert.iter().enumerate() {
                load.tokens[e] += toks.len() as u64;
            }
        }
        let active: Vec<usize> = (0..n_expert)
            .filter(|&e| !by_expert[e].is_empty())
            .collect();
        if expert_readahead() {
            for &e in &active {
                let (gate, up, down) = &self.experts[e];
                for w in [gate, up, down] {
                    baicai_gguf::will_need(w.weight().data);
                }
            }
        }

        // (2) Each active expert's gate/up on its tokens (the whole input when it has them all,
        // as in decode, so one quantization serves every expert), and the shared down.
        let inputs: Vec<Option<Vec<f32>>> = active
            .iter()
            .map(|&e| {
                let toks = &by_expert[e];
                (toks.len() < n).then(|| {
                    let mut xe = vec![0.0; toks.len() * d]; // [tokens, d]
                    for (row, &(t, _)) in xe.chunks_exact_mut(d).zip(toks) {
                        row.copy_from_slice(&x[t * d..(t + 1) * d]);
                    }
                    xe
                })
            })
            .collect();
        let mut gates: Vec<Vec<f32>> = active
            .iter()
            .map(|&e| vec![0.0; by_expert[e].len() * self.experts[e].0.rows])
            .collect();
        let mut ups = gates.clone();
        let mut shared_out = shared.map(|_| vec![0.0; n * d]);
        if shared.is_some() {
            swiglu(&mut sg, &su);
        }
        {
            let mut jobs = Vec::with_capacity(2 * active.len() + 1);
            for (((&e, xe), g), u) in active.iter().zip(&inputs).zip(&mut gates).zip(&mut ups) {
                let (gate, up, _) = &self.experts[e];
                let (xe, nt) = (xe.as_deref().unwrap_or(x), by_expert[e].len());
                jobs.push(MatJob {
                    w: gate.weight(),
                    x: xe,
                    n_tokens: nt,
                    out: g,
                });
                jobs.push(MatJob {
                    w: up.weight(),
                    x: xe,
                    n_tokens: nt,
                    out: u,
                });
            }
            if let (Some([_, _, down]), Some(so)) = (shared, shared_out.as_mut()) {
                jobs.push(MatJob {
                    w: down.weight(),
                    x: &sg,
                    n_tokens: n,
                    out: so,
                });
            }
            matmul_batch(&mut jobs);
        }

        // (3) Each active expert's down.
        for (g, u) in gates.iter_mut().zip(&ups) {
            swiglu(g, u);
        }
        let mut outs: Vec<Vec<f32>> = active
            .iter()
            .map(|&e| vec![0.0; by_expert[e].len() * d])
            .collect();
        let mut jobs: Vec<MatJob> = active
            .iter()
            .zip(&gates)
            .zip(&mut outs)
            .map(|((&e, g), o)| MatJob {
                w: self.experts[e].2.weight(),
                x: g,
                n_tokens: by_expert[e].len(),
                out: o,
            })
            .collect();
        matmul_batch(&mut jobs);
        drop(jobs);
        out.fill(0.0);
        for (&e, o) in active.iter().zip(&outs) {
            for (row, &(t, w)) in o.chunks_exact(d).zip(&by_expert[e]) {
                for (acc, v) in out[t * d..(t + 1) * d].iter_mut().zip(row) {
                    *acc += w * v;
                }
            }
        }
        shared_out
    }
}

/// A shared expert run on every token, its output optionally scaled by `sigmoid(gate_inp · x)`
/// (Qwen2-MoE's `shared_expert_gate`).
pub struct SharedExpert {
    pub ffn: GatedFfn,
    /// `[d]`.
    pub gate_inp: Option<Vec<f32>>,
}

/// One layer's Mixture-of-Experts feed-forward block: router, routed experts, and an optional
/// shared expert.
pub struct MoeFfn {
    /// How tokens choose experts.
    pub routing: RouterConfig,
    /// `[n_expert, d]`.
    pub router: Linear,
    /// `e_score_correction_bias` (`[n_expert]`, DeepSeek-V3): changes which experts are
    /// selected, never their weights.
    pub selection_bias: Option<Vec<f32>>,
    pub experts: Experts,
    pub shared: Option<SharedExpert>,
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

impl MoeFfn {
    /// Loads layer `il`'s router (`ffn_gate_inp`), selection bias where the file has one
    /// (`exp_probs_b.bias`), experts (`ffn_{gate,up,down}_exps`) and, when `moe` has one, the
    /// shared expert (`ffn_{gate,up,down}_shexp`, `ffn_gate_inp_shexp` where present).
    ///
    /// # Errors
    /// Missing tensors, wrong shapes, unsupported types.
    pub fn load(
        s: &WeightStore,
        il: usize,
        d: usize,
        moe: &MoeConfig,
    ) -> Result<MoeFfn, ModelError> {
        let n = |t: &str| format!("blk.{il}.{t}");
        let ne = moe.router.n_expert;
        let router = s.linear(&n("ffn_gate_inp.weight"), ne, d)?;
        let selection_bias = s.vector_opt(&n("exp_probs_b.bias"), ne)?;
        let experts = Experts::load(s, &format!("blk.{il}"), ne, d, moe.n_ff_expert)?;
        let shared = if moe.n_ff_shared > 0 {
            let gate_inp = n("ffn_gate_inp_shexp.weight");
            Some(SharedExpert {
                ffn: GatedFfn::load(s, il, "_shexp", d, moe.n_ff_shared)?,
                gate_inp: if s.has(&gate_inp) {
                    Some(gate_vector(s, &gate_inp, d)?)
                } else {
                    None
                },
            })
        } else {
            None
        };
        Ok(MoeFfn {
            routing: moe.router.clone(),
            router,
            selection_bias,
            experts,
            shared,
        })
    }

    /// Bytes read per token: the router, `n_used` experts, the shared expert.
    pub fn bytes_per_token(&self) -> u64 {
        let n_used = self.routing.n_used;
        let shared = self.shared.as_ref().map_or(0, |sh| {
            sh.ffn.weights().iter().map(|l| l.n_bytes()).sum::<u64>()
        });
        self.router.n_bytes() + self.experts.bytes_per_expert() * n_used as u64 + shared
    }

    /// The block on the normalized rows `h` (`[n, d]`) into `out` (`[n, d]`): the routed experts'
    /// weighted sum first, then the shared expert added (scaled by its gate where it has one),
    /// as the references add them. Counts routed tokens into `load`.
    pub fn forward(&self, h: &[f32], out: &mut [f32], load: Option<&mut ExpertLoad>) {
        let d = self.router.cols;
        let route = |l: &[f32]| route(l, &self.routing, self.selection_bias.as_deref());
        let shared = self.shared.as_ref().map(|sh| sh.ffn.weights());
        let shared_out = self
            .experts
            .forward(h, &self.router, route, shared, out, load);
        let (Some(sh), Some(so)) = (&self.shared, shared_out) else {
            return;
        };
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

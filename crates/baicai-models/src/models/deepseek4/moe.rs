//! DeepSeek-V4's MoE: hash-routed layers (`tid2eid[token]`) and top-k layers with
//! sqrt-softplus scores (the bias for selection only), clamped SwiGLU routed experts and a shared
//! expert.

use baicai_kernels::attention::softmax_inplace as softmax;
use baicai_kernels::{matmul_batch, MatJob};

use super::{Deepseek4, LayerLoader};
use crate::blocks::moe::{sqrt_softplus, top_k, Experts};
use crate::error::ModelError;
use crate::moe::Scoring;
use crate::weights::Linear;

/// How a layer picks a token's experts.
enum Route {
    /// `tid2eid`: `[n_vocab, n_used]` expert ids per token id.
    Hash(Vec<u32>),
    /// `e_score_correction_bias` for the top-k selection.
    TopK(Vec<f32>),
}

/// One layer's MoE weights.
pub(super) struct Moe {
    /// `[n_expert, D]`.
    pub(super) router: Linear,
    route: Route,
    pub(super) experts: Experts,
    /// The shared expert's gate `[ff, D]`, up `[ff, D]` and down `[D, ff]`.
    pub(super) shared: [Linear; 3],
}

impl LayerLoader<'_> {
    /// Layer `il`'s MoE: its route (hash table or selection bias), router, experts and shared
    /// expert.
    pub(super) fn moe(&self) -> Result<Moe, ModelError> {
        let (s, dm) = (self.s, self.cfg.n_embd);
        let (ne, ff) = (self.moe.router.n_expert, self.moe.n_ff_expert);
        let route = if self.v4.hash[self.il] {
            Route::Hash(self.tid2eid()?)
        } else {
            Route::TopK(
                s.vector_opt(&self.name("exp_probs_b.bias"), ne)?
                    .unwrap_or_else(|| vec![0.0; ne]),
            )
        };
        Ok(Moe {
            router: s.linear(&self.name("ffn_gate_inp.weight"), ne, dm)?,
            route,
            experts: Experts::load(s, &format!("blk.{}", self.il), ne, dm, ff)?,
            shared: [
                s.linear(&self.name("ffn_gate_shexp.weight"), ff, dm)?,
                s.linear(&self.name("ffn_up_shexp.weight"), ff, dm)?,
                s.linear(&self.name("ffn_down_shexp.weight"), dm, ff)?,
            ],
        })
    }

    /// The hash table `tid2eid` (`[n_vocab, n_used]`), every entry checked to be an expert.
    fn tid2eid(&self) -> Result<Vec<u32>, ModelError> {
        let (s, n_vocab) = (self.s, self.cfg.n_vocab);
        let (ne, k) = (self.moe.router.n_expert, self.moe.router.n_used);
        let name = self.name("ffn_gate_tid2eid.weight");
        let t = s.linear(&name, n_vocab, k)?;
        let mut ids = vec![0u32; n_vocab * k]; // [n_vocab, n_used]
        let mut row = vec![0.0; k]; // [n_used]
        for tok in 0..n_vocab {
            s.row(&t, tok, &mut row);
            for (j, &x) in row.iter().enumerate() {
                if !(x >= 0.0 && x.fract() == 0.0 && (x as usize) < ne) {
                    return Err(ModelError::Config(format!(
                        "tensor '{name}': token {tok} routes to expert {x}, outside 0..{ne}"
                    )));
                }
                ids[tok * k + j] = x as u32;
            }
        }
        Ok(ids)
    }
}

impl Deepseek4 {
    /// The MoE of layer `il` over `h` (`[n, D]`, normalized) for `tokens`; writes `out`.
    pub(super) fn moe(&self, il: usize, h: &[f32], tokens: &[u32], out: &mut [f32]) {
        let (c, s) = (&self.cfg, &self.store);
        let mo = &self.layers[il].moe;
        let rc = &c.moe.as_ref().expect("deepseek4 has MoE sizes").router;
        let d = c.n_embd;
        let n = h.len() / d;
        let ne = rc.n_expert;
        let mut logits = vec![0.0; n * ne]; // [n, n_expert]
        s.matmul(&mo.router, h, n, &mut logits);
        let score = |l: f32| match rc.scoring {
            Scoring::SqrtSoftplus => sqrt_softplus(l),
            Scoring::Sigmoid => 1.0 / (1.0 + (-l).exp()),
            Scoring::Softmax => l, // softmax over all experts below
        };
        let mut by_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); ne];
        for (t, l) in logits.chunks_exact(ne).enumerate() {
            let mut sc: Vec<f32> = l.iter().map(|&x| score(x)).collect();
            if rc.scoring == Scoring::Softmax {
                softmax(&mut sc);
            }
            let sel: Vec<usize> = match &mo.route {
                Route::Hash(ids) => {
                    let k = rc.n_used;
                    ids[tokens[t] as usize * k..(tokens[t] as usize + 1) * k]
                        .iter()
                        .map(|&e| e as usize)
                        .collect()
                }
                Route::TopK(bias) => {
                    let biased: Vec<f32> = sc.iter().zip(bias).map(|(x, b)| x + b).collect();
                    top_k(&biased, rc.n_used)
                }
            };
            let sum: f32 = sel.iter().map(|&e| sc[e]).sum::<f32>() + 1e-20;
            for e in sel {
                by_expert[e].push((t, sc[e] / sum * rc.scaling));
            }
        }
        if let Ok(mut load) = self.load.lock() {
            let l = &mut load[il];
            l.tokens.resize(ne, 0);
            for (e, toks) in by_expert.iter().enumerate() {
                l.tokens[e] += toks.len() as u64;
            }
        }
        self.run_experts(mo, h, &by_expert, out);
    }

    /// The routed experts (tokens grouped by expert, each expert read once) and the shared
    /// expert on `h` (`[n, D]`), in two parallel regions: every gate/up, then every down.
    /// `out[t] = Σ_e w_{t,e} · expert_e(h_t)` (experts in index order) `+ shared(h_t)`.
    fn run_experts(&self, mo: &Moe, h: &[f32], by_expert: &[Vec<(usize, f32)>], out: &mut [f32]) {
        let run = ExpertRun {
            mo,
            h,
            by_expert,
            active: (0..by_expert.len())
                .filter(|&e| !by_expert[e].is_empty())
                .collect(),
            d: self.cfg.n_embd,
        };
        run.read_ahead();
        let gates = run.gate_up(self.v4.swiglu_limit);
        let ys = run.down(&gates);
        run.combine(&ys, out);
    }
}

/// One step of a layer's experts: the tokens of each expert with their weights, and the
/// experts with at least one.
struct ExpertRun<'a> {
    mo: &'a Moe,
    /// `[n, D]`: the normalized block input.
    h: &'a [f32],
    by_expert: &'a [Vec<(usize, f32)>],
    active: Vec<usize>,
    d: usize,
}

impl ExpertRun<'_> {
    /// Experts larger than memory: asks the OS for each selected expert as soon as it is
    /// routed, as the other MoE models do (when expert readahead is on).
    fn read_ahead(&self) {
        if !crate::blocks::moe::expert_readahead() {
            return;
        }
        for &e in &self.active {
            let (gate, up, down) = &self.mo.experts.experts[e];
            for w in [gate, up, down] {
                baicai_gguf::will_need(w.weight().data);
            }
        }
    }

    /// Each active expert's input rows (`None` when it has every token: the whole input).
    fn inputs(&self) -> Vec<Option<Vec<f32>>> {
        let (d, n) = (self.d, self.h.len() / self.d);
        (self.active.iter())
            .map(|&e| {
                let toks = &self.by_expert[e];
                (toks.len() < n).then(|| {
                    let mut xe = vec![0.0; toks.len() * d]; // [tokens, D]
                    for (row, &(t, _)) in xe.chunks_exact_mut(d).zip(toks) {
                        row.copy_from_slice(&self.h[t * d..(t + 1) * d]);
                    }
                    xe
                })
            })
            .collect()
    }

    /// Every gate and up projection in one batch, then the clamped SwiGLU (`limit`): `[tokens,
    /// ff]` per active expert, then the shared expert's `[n, ff]`.
    fn gate_up(&self, limit: f32) -> Vec<Vec<f32>> {
        let (mo, h, n) = (self.mo, self.h, self.h.len() / self.d);
        let inputs = self.inputs();
        let [sg, su, _] = &mo.shared;
        let mut gates: Vec<Vec<f32>> = (self.active.iter())
            .map(|&e| vec![0.0; self.by_expert[e].len() * mo.experts.experts[e].0.rows])
            .chain(std::iter::once(vec![0.0; n * sg.rows]))
            .collect(); // [tokens, ff] per active expert, then the shared expert's [n, ff]
        let mut ups = gates.clone();
        {
            let mut jobs = Vec::with_capacity(2 * gates.len());
            // (gate, up, input, tokens) per active expert, then the shared expert's.
            let all = (self.active.iter().zip(&inputs))
                .map(|(&e, x)| {
                    let (gate, up, _) = &mo.experts.experts[e];
                    (gate, up, x.as_deref().unwrap_or(h), self.by_expert[e].len())
                })
                .chain(std::iter::once((sg, su, h, n)));
            for (((gate, up, x, nt), g), u) in all.zip(&mut gates).zip(&mut ups) {
                jobs.push(MatJob {
                    w: gate.weight(),
                    x,
                    n_tokens: nt,
                    out: g,
                });
                jobs.push(MatJob {
                    w: up.weight(),
                    x,
                    n_tokens: nt,
                    out: u,
                });
            }
            matmul_batch(&mut jobs);
        }
        for (g, u) in gates.iter_mut().zip(&ups) {
            for (gv, &uv) in g.iter_mut().zip(u) {
                let gc = gv.min(limit);
                let uc = uv.clamp(-limit, limit);
                *gv = gc / (1.0 + (-gc).exp()) * uc;
            }
        }
        gates
    }

    /// Every down projection in one batch: `[tokens, D]` per active expert, then the shared
    /// expert's `[n, D]`.
    fn down(&self, gates: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let (d, n) = (self.d, self.h.len() / self.d);
        let downs =
            (self.active.iter()).map(|&e| (&self.mo.experts.experts[e].2, self.by_expert[e].len()));
        let mut ys: Vec<Vec<f32>> = downs
            .clone()
            .map(|(_, nt)| vec![0.0; nt * d])
            .chain(std::iter::once(vec![0.0; n * d]))
            .collect(); // [tokens, D] per active expert, then the shared expert's [n, D]
        let mut jobs: Vec<MatJob> = downs
            .chain(std::iter::once((&self.mo.shared[2], n)))
            .zip(gates)
            .zip(&mut ys)
            .map(|(((w, nt), g), y)| MatJob {
                w: w.weight(),
                x: g,
                n_tokens: nt,
                out: y,
            })
            .collect();
        matmul_batch(&mut jobs);
        drop(jobs);
        ys
    }

    /// `out[t] = Σ_e w_{t,e} · y_e[t]` (experts in index order) `+ shared[t]`; `out`: `[n, D]`.
    fn combine(&self, ys: &[Vec<f32>], out: &mut [f32]) {
        let d = self.d;
        out.fill(0.0);
        for (&e, y) in self.active.iter().zip(ys) {
            for (row, &(t, w)) in y.chunks_exact(d).zip(&self.by_expert[e]) {
                for (acc, v) in out[t * d..(t + 1) * d].iter_mut().zip(row) {
                    *acc += v * w;
                }
            }
        }
        let shared = ys.last().expect("the shared expert's output");
        out.iter_mut().zip(shared).for_each(|(o, v)| *o += v);
    }
}

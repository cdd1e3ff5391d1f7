//! `baicai perplexity`: perplexity over non-overlapping windows of a text, with llama-perplexity's
//! conventions (llama.cpp `tools/perplexity/perplexity.cpp`, `perplexity()`):
//!
//! - the whole text is tokenized once, with the model's automatic BOS and without parsing special
//!   tokens; window `i` is tokens `i·c .. (i+1)·c`, and its first token is replaced by BOS when the
//!   model adds one (the first window already starts with it);
//! - each window runs from an empty cache, and only its second half is scored: the logits at
//!   positions `c/2 .. c−2` predict the tokens after them (`c − 1 − c/2` per window), so every
//!   scored token has at least `c/2` tokens of context;
//! - PPL = exp(mean negative log-likelihood), ± PPL · the standard error of that mean.
//!
//! Unlike llama-perplexity, a text of one window (not two) is enough. `--save-logits` and
//! `--kl-divergence` write and read the distributions at the scored positions (see
//! [`baicai_cli::logprobs`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use baicai_cli::logprobs::{self, Compared, KlSummary, LogprobFile};
use baicai_models::{CausalLm, KvCache, Logits, SeqInput};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::load::{load, ModelArgs};

/// Arguments of `perplexity`.
#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to evaluate (UTF-8).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Window length in tokens; the second half of each window is scored.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    pub ctx: usize,
    /// Evaluate at most this many windows (default: all the text holds).
    #[arg(long = "chunks")]
    pub chunks: Option<usize>,
    /// Tokens per forward pass: below the window length a window runs in pieces, at a multiple
    /// of it several windows run together (results are the same; default: the window length).
    #[arg(short = 'b', long = "batch-size")]
    pub batch: Option<usize>,
    /// Save the distributions at the scored positions (top-k logprobs and the rest's mass) for
    /// a later `--kl-divergence`.
    #[arg(
        long = "save-logits",
        value_name = "FILE",
        conflicts_with = "kl_divergence"
    )]
    pub save_logits: Option<PathBuf>,
    /// Tokens kept per position by `--save-logits`.
    #[arg(long = "save-top-k", default_value_t = 20)]
    pub save_top_k: usize,
    /// Compare with distributions saved by `--save-logits` (same tokenizer, text, -c and
    /// --chunks): KL-divergence, top-token agreement, Δ perplexity.
    #[arg(long = "kl-divergence", value_name = "FILE")]
    pub kl_divergence: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Running sums over scored tokens.
#[derive(Default)]
struct Nll {
    count: usize,
    sum: f64,
    sum2: f64,
}

impl Nll {
    fn add(&mut self, v: f64) {
        self.count += 1;
        self.sum += v;
        self.sum2 += v * v;
    }

    fn ppl(&self) -> f64 {
        (self.sum / self.count.max(1) as f64).exp()
    }

    /// PPL's ± as llama-perplexity prints it: PPL · sqrt(var / (n − 1)).
    fn ppl_err(&self) -> f64 {
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum2 / n - mean * mean;
        if var > 0.0 && self.count > 1 {
            (var / (n - 1.0)).sqrt() * self.ppl()
        } else {
            0.0
        }
    }
}

/// The evaluated windows: tokens (BOS put at each start) and the scored positions.
struct Windows {
    n_ctx: usize,
    first: usize,
    tokens: Vec<u32>,
}

impl Windows {
    fn count(&self) -> usize {
        self.tokens.len() / self.n_ctx
    }

    fn window(&self, i: usize) -> &[u32] {
        &self.tokens[i * self.n_ctx..(i + 1) * self.n_ctx]
    }

    /// Global indices of window `i`'s scored positions.
    fn scored(&self, i: usize) -> std::ops::Range<usize> {
        i * self.n_ctx + self.first..(i + 1) * self.n_ctx - 1
    }
}

/// `baicai perplexity`.
pub fn perplexity(a: PerplexityArgs) -> Result<()> {
    if a.ctx < 4 {
        bail!("-c must be at least 4 tokens");
    }
    if a.batch == Some(0) || a.chunks == Some(0) || a.save_top_k == 0 {
        bail!("-b, --chunks and --save-top-k must be at least 1");
    }
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read the text file {}", a.file.display()))?;
    let loaded = load(&a.model)?;
    let tok = loaded.tokenizer()?.clone();
    if tok.add_eos() {
        bail!(
            "the model's tokenizer adds EOS to every text; perplexity over windows would score it"
        );
    }
    let model = loaded.model;
    let n_vocab = model.config().n_vocab;
    let mut tokens = tok.encode(&text, true, false);
    let available = tokens.len() / a.ctx;
    if available == 0 {
        bail!(
            "{} tokenizes to {} tokens, fewer than one window of -c {}",
            a.file.display(),
            tokens.len(),
            a.ctx
        );
    }
    let n_chunk = a.chunks.map_or(available, |c| c.min(available));
    tokens.truncate(n_chunk * a.ctx);
    if tok.add_bos() {
        let bos = tok
            .bos_id()
            .context("the tokenizer adds BOS but has no BOS token")?;
        tokens.iter_mut().step_by(a.ctx).for_each(|t| *t = bos);
    }
    let w = Windows {
        n_ctx: a.ctx,
        first: a.ctx / 2,
        tokens,
    };
    let vocab_hash = logprobs::vocab_hash(&tok);
    let base = match &a.kl_divergence {
        Some(p) => {
            let f = LogprobFile::read(p)?;
            f.check_same_run(p, vocab_hash, n_vocab as u32, a.ctx as u32, &w.tokens)?;
            check_positions(p, &f, &w)?;
            Some(f)
        }
        None => None,
    };
    let batch = a.batch.unwrap_or(a.ctx);
    let per_pass = (batch / a.ctx).max(1);
    let bar = progress(n_chunk);
    let started = Instant::now();
    let mut nll = Nll::default();
    let mut saved = Vec::new();
    let mut compared: Vec<Compared> = Vec::new();
    let mut i = 0;
    while i < n_chunk {
        let ids: Vec<usize> = (i..(i + per_pass).min(n_chunk)).collect();
        let rows = run_windows(model.as_ref(), &w, &ids, batch)?;
        for (&c, logits) in ids.iter().zip(&rows) {
            let scored = w.scored(c);
            let targets = &w.tokens[scored.start + 1..scored.end + 1];
            let per_pos: Vec<f64> = logits
                .par_chunks_exact(n_vocab)
                .zip(targets.par_iter())
                .map(|(l, &t)| logprobs::nll(l, t))
                .collect();
            per_pos.iter().for_each(|&v| nll.add(v));
            if a.save_logits.is_some() {
                saved.extend(
                    logits
                        .par_chunks_exact(n_vocab)
                        .zip(scored.clone().into_par_iter())
                        .map(|(l, pos)| {
                            logprobs::summarize(l, pos as u32, w.tokens[pos + 1], a.save_top_k)
                        })
                        .collect::<Vec<_>>(),
                );
            }
            if let Some(f) = &base {
                let at = c * (w.n_ctx - 1 - w.first);
                let dists = &f.dists[at..at + scored.len()];
                compared.extend(logprobs::compare_rows(dists, logits, targets));
            }
        }
        i += ids.len();
        bar.set_position(i as u64);
        bar.set_message(format!("PPL {:.4}", nll.ppl()));
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    if let Some(p) = &a.save_logits {
        let f = LogprobFile {
            vocab_hash,
            n_vocab: n_vocab as u32,
            top_k: a.save_top_k.min(n_vocab) as u32,
            n_ctx: a.ctx as u32,
            tokens: w.tokens.clone(),
            dists: saved,
        };
        write_file(p, &f)?;
    }
    let kl = base.map(|_| logprobs::summarize_kl(&compared));
    report(&a, &w, &nll, kl.as_ref(), seconds)
}

/// The saved file holds exactly this run's scored positions, in order.
fn check_positions(path: &Path, f: &LogprobFile, w: &Windows) -> Result<()> {
    let expected: Vec<usize> = (0..w.count()).flat_map(|c| w.scored(c)).collect();
    let same = f.dists.len() == expected.len()
        && f.dists
            .iter()
            .zip(&expected)
            .all(|(d, &p)| d.pos as usize == p);
    if !same {
        bail!(
            "{} holds {} positions that are not this run's {} scored positions (saved by another \
             tool or with other settings)",
            path.display(),
            f.dists.len(),
            expected.len()
        );
    }
    Ok(())
}

/// Runs windows `ids` (in one forward pass, or each in pieces of `batch` tokens) and returns,
/// per window, the logits at its scored positions (`[c − 1 − c/2, n_vocab]`).
fn run_windows(
    model: &dyn CausalLm,
    w: &Windows,
    ids: &[usize],
    batch: usize,
) -> Result<Vec<Vec<f32>>> {
    let n_vocab = model.config().n_vocab;
    let keep = |mut all: Vec<f32>, from: usize| {
        // `all` holds positions from..n_ctx; keep first..n_ctx − 1.
        all.truncate((w.n_ctx - 1 - from) * n_vocab);
        all.drain(..(w.first - from) * n_vocab);
        all
    };
    if batch >= w.n_ctx {
        let mut caches: Vec<KvCache> = ids.iter().map(|_| model.new_cache(w.n_ctx)).collect();
        let mut seqs: Vec<SeqInput> = ids
            .iter()
            .zip(caches.iter_mut())
            .map(|(&c, cache)| SeqInput {
                tokens: w.window(c),
                cache,
                logits: Logits::All,
            })
            .collect();
        let out = model.forward_batch(&mut seqs).context("forward pass")?;
        return Ok(out.into_iter().map(|all| keep(all, 0)).collect());
    }
    let c = ids[0];
    let mut cache = model.new_cache(w.n_ctx);
    let mut rows = Vec::with_capacity((w.n_ctx - w.first) * n_vocab);
    let mut from = None;
    for (j, piece) in w.window(c).chunks(batch).enumerate() {
        let start = j * batch;
        let scored = start + piece.len() > w.first;
        let kind = if scored { Logits::All } else { Logits::Last };
        let out = model
            .forward(piece, &mut cache, kind)
            .context("forward pass")?;
        if scored {
            from.get_or_insert(start);
            rows.extend_from_slice(&out);
        }
    }
    Ok(vec![keep(rows, from.unwrap_or(0))])
}

fn progress(n: usize) -> ProgressBar {
    let bar =
        ProgressBar::with_draw_target(Some(n as u64), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} windows, {msg}, ETA {eta}")
    {
        bar.set_style(style);
    }
    bar
}

fn write_file(path: &Path, f: &LogprobFile) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    f.write(&mut out)
        .and_then(|_| out.flush())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn report(
    a: &PerplexityArgs,
    w: &Windows,
    nll: &Nll,
    kl: Option<&KlSummary>,
    seconds: f64,
) -> Result<()> {
    let evaluated = w.tokens.len();
    if a.json {
        let j = serde_json::json!({
            "model": a.model.model.display().to_string(),
            "file": a.file.display().to_string(),
            "n_ctx": w.n_ctx,
            "chunks": w.count(),
            "tokens_evaluated": evaluated,
            "tokens_scored": nll.count,
            "ppl": nll.ppl(),
            "ppl_err": nll.ppl_err(),
            "mean_nll": nll.sum / nll.count.max(1) as f64,
            "seconds": seconds,
            "tokens_per_s": evaluated as f64 / seconds,
            "kl_divergence": kl,
        });
        println!("{j}");
        return Ok(());
    }
    println!(
        "{} windows of {} tokens, {} tokens scored ({:.1} s, {:.1} tokens/s)",
        w.count(),
        w.n_ctx,
        nll.count,
        seconds,
        evaluated as f64 / seconds
    );
    println!(
        "Final estimate: PPL = {:.4} +/- {:.5}",
        nll.ppl(),
        nll.ppl_err()
    );
    if let Some(k) = kl {
        println!(
            "PPL(base) = {:.4}, PPL - PPL(base) = {:.4} +/- {:.4}",
            k.ppl_base, k.delta_ppl, k.delta_ppl_stderr
        );
        println!(
            "Mean KLD = {:.6} +/- {:.6}, 99% KLD = {:.6}, max KLD = {:.6}",
            k.mean_kld, k.mean_kld_stderr, k.kld_p99, k.kld_max
        );
        println!(
            "Same top token: {:.3} +/- {:.3} %",
            100.0 * k.same_top,
            100.0 * k.same_top_stderr
        );
    }
    Ok(())
}

//! Saved next-token distributions ("logprob files") and the comparison of a run against them:
//! the format `baicai perplexity --save-logits` writes and `--kl-divergence` reads, and in which
//! `tools/exact_reference.py` writes the exact-arithmetic reference under `fixtures/exact/`.
//!
//! A distribution is kept as its top-k log-probabilities plus the log of the probability mass of
//! all other tokens together, and the log-probability of the token that actually came next (so
//! perplexities are exact even where that token is outside the top k). KL-divergence is then
//! computed over the partition {each top-k token, the rest}: by the data-processing inequality a
//! lower bound of the full-vocabulary KL, equal to it up to the rest's internal shape (for k = 20
//! the rest holds a few percent of the mass at most positions). llama.cpp's
//! `--kl-divergence-base` files instead hold every logit, quantized to 16 bits.
//!
//! File layout, all little-endian:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | magic | 8 bytes | `BAICAILP` |
//! | version | u32 | 1 |
//! | vocab_hash | u64 | [`vocab_hash`] of the tokenizer |
//! | n_vocab | u32 | logits per position |
//! | top_k | u32 | tokens kept per position |
//! | n_ctx | u32 | window length the tokens were evaluated in (windows start at multiples of it) |
//! | n_tokens | u32 | |
//! | tokens | n_tokens × u32 | the tokens as evaluated (BOS already put at each window start) |
//! | n_records | u32 | |
//! | records | n_records × record | |
//!
//! A record: `pos` u32 (the index in `tokens` whose logits these are: they predict
//! `tokens[pos + 1]`), `target` f32 (log-probability of `tokens[pos + 1]`), `rest` f32 (ln of the
//! total probability of the tokens not in the top k; −∞ when there are none), then `top_k` pairs
//! of `id` u32 and `logprob` f32, most likely first.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use baicai_tokenizer::Tokenizer;
use rayon::prelude::*;

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"BAICAILP";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;

/// Errors of reading a logprob file or of comparing a run against one.
#[derive(Debug, thiserror::Error)]
pub enum LogprobError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a baicai logprob file (no BAICAILP header)")]
    NotLogprobs { path: PathBuf },
    #[error(
        "{path} is version {found} of the logprob format; this baicai reads version {VERSION}"
    )]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error(
        "{path} was saved with a different tokenizer (vocabulary hash {saved:016x}, {saved_n} \
         logits; this model: {ours:016x}, {ours_n} logits)"
    )]
    Tokenizer {
        path: PathBuf,
        saved: u64,
        ours: u64,
        saved_n: u32,
        ours_n: u32,
    },
    #[error(
        "{path} was saved with windows of {saved} tokens, this run uses {ours} (set -c {saved})"
    )]
    Window {
        path: PathBuf,
        saved: u32,
        ours: u32,
    },
    #[error(
        "{path} was saved over a different text: {detail} (the same text file, -c and --chunks are \
         needed)"
    )]
    Text { path: PathBuf, detail: String },
}

/// FNV-1a (64 bit) over the vocabulary: the count (u32 LE), then each token's text as its length
/// (u32 LE) and UTF-8 bytes. `tools/exact_reference.py` computes the same over the GGUF file's
/// `tokenizer.ggml.tokens`.
pub fn vocab_hash(tok: &Tokenizer) -> u64 {
    let n = tok.vocab_size();
    let texts = (0..n as u32).map(|id| tok.token_text(id).unwrap_or(""));
    hash_texts(n, texts)
}

fn hash_texts<'a>(n: usize, texts: impl Iterator<Item = &'a str>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(&(n as u32).to_le_bytes());
    for t in texts {
        eat(&(t.len() as u32).to_le_bytes());
        eat(t.as_bytes());
    }
    h
}

/// One position's next-token distribution, summarized.
#[derive(Debug, Clone, PartialEq)]
pub struct Dist {
    /// Index in the file's tokens of the position whose logits these are.
    pub pos: u32,
    /// Log-probability of the token that came next.
    pub target: f32,
    /// ln of the probability of all tokens outside `top` (−∞ when there are none).
    pub rest: f32,
    /// `(token, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// A whole logprob file (see the module documentation for the layout).
#[derive(Debug, Clone, PartialEq)]
pub struct LogprobFile {
    pub vocab_hash: u64,
    pub n_vocab: u32,
    pub top_k: u32,
    pub n_ctx: u32,
    pub tokens: Vec<u32>,
    pub dists: Vec<Dist>,
}

impl LogprobFile {
    /// Writes the file.
    ///
    /// # Errors
    /// The writer's.
    pub fn write(&self, mut w: impl Write) -> io::Result<()> {
        w.write_all(MAGIC)?;
        let mut put = |v: u32| w.write_all(&v.to_le_bytes());
        put(VERSION)?;
        put(self.vocab_hash as u32)?;
        put((self.vocab_hash >> 32) as u32)?;
        put(self.n_vocab)?;
        put(self.top_k)?;
        put(self.n_ctx)?;
        put(self.tokens.len() as u32)?;
        for &t in &self.tokens {
            put(t)?;
        }
        put(self.dists.len() as u32)?;
        for d in &self.dists {
            put(d.pos)?;
            put(d.target.to_bits())?;
            put(d.rest.to_bits())?;
            for &(id, lp) in &d.top {
                put(id)?;
                put(lp.to_bits())?;
            }
        }
        Ok(())
    }

    /// Reads and checks a file: header, counts against the file's length, token ids and
    /// positions within range.
    ///
    /// # Errors
    /// An unreadable, truncated or foreign file, naming it.
    pub fn read(path: &Path) -> Result<LogprobFile, LogprobError> {
        let io_err = |source| LogprobError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io_err)?;
        let corrupt = |what: String| LogprobError::Corrupt {
            path: path.to_path_buf(),
            what,
        };
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(LogprobError::NotLogprobs {
                path: path.to_path_buf(),
            });
        }
        let mut r = Reader {
            bytes: &bytes,
            at: 8,
        };
        let version = r.u32().ok_or_else(|| corrupt("truncated header".into()))?;
        if version != VERSION {
            return Err(LogprobError::Version {
                path: path.to_path_buf(),
                found: version,
            });
        }
        let head: Vec<u32> = (0..6).filter_map(|_| r.u32()).collect();
        let [lo, hi, n_vocab, top_k, n_ctx, n_tokens] = head[..] else {
            return Err(corrupt("truncated header".into()));
        };
        let vocab_hash = lo as u64 | (hi as u64) << 32;
        let tokens = r
            .u32s(n_tokens as usize)
            .ok_or_else(|| corrupt(format!("{n_tokens} tokens announced, fewer present")))?;
        if let Some(t) = tokens.iter().find(|&&t| t >= n_vocab) {
            return Err(corrupt(format!("token {t} outside the {n_vocab} logits")));
        }
        let n_records = r.u32().ok_or_else(|| corrupt("no record count".into()))?;
        let record = 12 + 8 * top_k as usize;
        if r.left() != n_records as usize * record {
            return Err(corrupt(format!(
                "{n_records} records of {record} bytes announced, {} bytes present",
                r.left()
            )));
        }
        let mut dists = Vec::with_capacity(n_records as usize);
        for _ in 0..n_records {
            let v = r.u32s(3 + 2 * top_k as usize).expect("length checked");
            if v[0] as usize + 1 >= tokens.len() {
                return Err(corrupt(format!("position {} has no next token", v[0])));
            }
            let top: Vec<(u32, f32)> = v[3..]
                .chunks_exact(2)
                .map(|p| (p[0], f32::from_bits(p[1])))
                .collect();
            if let Some(&(id, _)) = top.iter().find(|p| p.0 >= n_vocab) {
                return Err(corrupt(format!("token {id} outside the {n_vocab} logits")));
            }
            dists.push(Dist {
                pos: v[0],
                target: f32::from_bits(v[1]),
                rest: f32::from_bits(v[2]),
                top,
            });
        }
        Ok(LogprobFile {
            vocab_hash,
            n_vocab,
            top_k,
            n_ctx,
            tokens,
            dists,
        })
    }

    /// Checks that a run would compare like with like: the same tokenizer and logits count, the
    /// same windows and the same evaluated tokens.
    ///
    /// # Errors
    /// The first difference, naming the file and what to change.
    pub fn check_same_run(
        &self,
        path: &Path,
        vocab_hash: u64,
        n_vocab: u32,
        n_ctx: u32,
        tokens: &[u32],
    ) -> Result<(), LogprobError> {
        let path = path.to_path_buf();
        if self.vocab_hash != vocab_hash || self.n_vocab != n_vocab {
            return Err(LogprobError::Tokenizer {
                path,
                saved: self.vocab_hash,
                ours: vocab_hash,
                saved_n: self.n_vocab,
                ours_n: n_vocab,
            });
        }
        if self.n_ctx != n_ctx {
            return Err(LogprobError::Window {
                path,
                saved: self.n_ctx,
                ours: n_ctx,
            });
        }
        if self.tokens.len() != tokens.len() {
            let detail = format!(
                "{} tokens evaluated there, {} here",
                self.tokens.len(),
                tokens.len()
            );
            return Err(LogprobError::Text { path, detail });
        }
        if let Some(i) = (0..tokens.len()).find(|&i| self.tokens[i] != tokens[i]) {
            let detail = format!("token {i} is {} there, {} here", self.tokens[i], tokens[i]);
            return Err(LogprobError::Text { path, detail });
        }
        Ok(())
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.bytes.get(self.at..self.at + 4)?;
        self.at += 4;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    }

    fn u32s(&mut self, n: usize) -> Option<Vec<u32>> {
        if self.left() / 4 < n {
            return None;
        }
        (0..n).map(|_| self.u32()).collect()
    }
}

/// The maximum of `logits` and `ln Σ exp(logit − max)` (f32 exponentials summed in f64, as
/// llama-perplexity's `log_softmax` does).
fn max_and_log_sum(logits: &[f32]) -> (f32, f64) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| (x - max).exp() as f64).sum();
    (max, sum.ln())
}

/// Index of the largest logit (the first of equals, as llama.cpp's).
pub fn argmax(logits: &[f32]) -> u32 {
    (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b }) as u32
}

/// Negative log-likelihood of `target` under `logits` (llama-perplexity's `log_softmax`).
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let (max, lse) = max_and_log_sum(logits);
    max as f64 + lse - logits[target as usize] as f64
}

/// ln Σ exp(logit − max) over the tokens not in `skip` (sorted ascending).
fn log_sum_except(logits: &[f32], max: f32, skip: &[u32]) -> f64 {
    let mut sum = 0f64;
    let mut at = 0;
    for (i, &x) in logits.iter().enumerate() {
        if skip.get(at) == Some(&(i as u32)) {
            at += 1;
            continue;
        }
        sum += (x - max).exp() as f64;
    }
    sum.ln()
}

/// The [`Dist`] of `logits` at position `pos`, keeping the `top_k` most likely tokens.
pub fn summarize(logits: &[f32], pos: u32, target: u32, top_k: usize) -> Dist {
    let (max, lse) = max_and_log_sum(logits);
    let k = top_k.min(logits.len());
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k, by_logit);
        idx.truncate(k);
    }
    idx.sort_by(by_logit);
    let lp = |i: u32| ((logits[i as usize] - max) as f64 - lse) as f32;
    let mut skip = idx.clone();
    skip.sort_unstable();
    Dist {
        pos,
        target: lp(target),
        rest: (log_sum_except(logits, max, &skip) - lse) as f32,
        top: idx.iter().map(|&i| (i, lp(i))).collect(),
    }
}

/// One position of a run compared with its saved distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compared {
    /// KL(saved ‖ run) over {each saved top-k token, the rest}.
    pub kld: f64,
    /// Negative log-likelihood of the next token in the run.
    pub nll: f64,
    /// The same in the saved distribution.
    pub nll_base: f64,
    /// Whether the run's most likely token is the saved one's.
    pub same_top: bool,
}

/// Compares the run's `logits` at one position with the saved `base`.
pub fn compare(base: &Dist, logits: &[f32], target: u32) -> Compared {
    let (max, lse) = max_and_log_sum(logits);
    let lq = |i: u32| (logits[i as usize] - max) as f64 - lse;
    let mut skip: Vec<u32> = base.top.iter().map(|p| p.0).collect();
    skip.sort_unstable();
    let q_rest = log_sum_except(logits, max, &skip) - lse;
    let mut kld: f64 = base
        .top
        .iter()
        .map(|&(i, lp)| (lp as f64).exp() * (lp as f64 - lq(i)))
        .sum();
    if base.rest > f32::NEG_INFINITY {
        let p_rest = base.rest as f64;
        kld += p_rest.exp() * (p_rest - q_rest);
    }
    Compared {
        kld,
        nll: -lq(target),
        nll_base: -(base.target as f64),
        same_top: base.top.first().map(|p| p.0) == Some(argmax(logits)),
    }
}

/// Mean and standard error of the mean of values given by their sum and sum of squares
/// (llama-perplexity's `mean_and_uncertainty`).
pub fn mean_and_uncertainty(sum: f64, sum2: f64, count: usize) -> (f64, f64) {
    if count == 0 {
        return (0.0, 0.0);
    }
    let n = count as f64;
    let f = sum / n;
    let var = sum2 / n - f * f;
    let df = if var > 0.0 && count > 10 {
        (var / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (f, df)
}

/// The `fraction` percentile of sorted `values`, interpolated (llama-perplexity's).
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let Some(&last) = sorted.last() else {
        return 0.0;
    };
    if fraction <= 0.0 {
        return sorted[0];
    }
    if fraction >= 1.0 {
        return last;
    }
    let p = fraction * (sorted.len() - 1) as f64;
    let i = p as usize;
    let f = p - i as f64;
    (1.0 - f) * sorted[i] + f * sorted[(i + 1).min(sorted.len() - 1)]
}

/// A run against saved distributions, summarized as llama-perplexity's `--kl-divergence` does.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct KlSummary {
    pub positions: usize,
    pub mean_kld: f64,
    pub mean_kld_stderr: f64,
    pub kld_p99: f64,
    pub kld_max: f64,
    /// Share of positions whose most likely token is the saved one's.
    pub same_top: f64,
    pub same_top_stderr: f64,
    pub ppl: f64,
    pub ppl_base: f64,
    /// `ppl − ppl_base`.
    pub delta_ppl: f64,
    pub delta_ppl_stderr: f64,
}

/// Summarizes compared positions (llama-perplexity's statistics: standard errors of the means,
/// the covariance of the two log-likelihoods for the error of Δ perplexity).
pub fn summarize_kl(c: &[Compared]) -> KlSummary {
    let n = c.len();
    let sum = |f: &dyn Fn(&Compared) -> f64| c.iter().map(f).sum::<f64>();
    let (ln_ppl, ln_ppl_err) = mean_and_uncertainty(sum(&|x| x.nll), sum(&|x| x.nll * x.nll), n);
    let (ln_base, ln_base_err) =
        mean_and_uncertainty(sum(&|x| x.nll_base), sum(&|x| x.nll_base * x.nll_base), n);
    let (kld, kld_err) = mean_and_uncertainty(sum(&|x| x.kld), sum(&|x| x.kld * x.kld), n);
    let cov = if n < 10 {
        0.0
    } else {
        let nf = n as f64;
        (sum(&|x| x.nll * x.nll_base) / nf - (ln_ppl * ln_base)) / (nf - 1.0)
    };
    let (ppl, ppl_base) = (ln_ppl.exp(), ln_base.exp());
    let (ppl_err, base_err) = (ppl * ln_ppl_err, ppl_base * ln_base_err);
    let diff_var = ppl_err * ppl_err + base_err * base_err - 2.0 * ppl * ppl_base * cov;
    let mut sorted: Vec<f64> = c.iter().map(|x| x.kld).collect();
    sorted.sort_by(f64::total_cmp);
    let same = c.iter().filter(|x| x.same_top).count() as f64 / n.max(1) as f64;
    KlSummary {
        positions: n,
        mean_kld: kld,
        mean_kld_stderr: kld_err,
        kld_p99: percentile(&sorted, 0.99),
        kld_max: sorted.last().copied().unwrap_or(0.0),
        same_top: same,
        same_top_stderr: if n > 1 {
            (same * (1.0 - same) / (n - 1) as f64).sqrt()
        } else {
            0.0
        },
        ppl,
        ppl_base,
        delta_ppl: ppl - ppl_base,
        delta_ppl_stderr: diff_var.max(0.0).sqrt(),
    }
}

/// Compares `rows` (`[positions.len(), n_vocab]` logits) with saved distributions, in parallel;
/// `targets[i]` is the token that came after row `i`.
pub fn compare_rows(base: &[Dist], rows: &[f32], targets: &[u32]) -> Vec<Compared> {
    let n_vocab = rows.len() / base.len().max(1);
    base.par_iter()
        .zip(rows.par_chunks_exact(n_vocab))
        .zip(targets.par_iter())
        .map(|((b, r), &t)| compare(b, r, t))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..50)
            .map(|i| ((i * 37) % 11) as f32 * 0.7 - 2.0)
            .collect()
    }

    #[test]
    fn a_distribution_against_itself_has_no_divergence() {
        let l = logits();
        let d = summarize(&l, 0, 3, 5);
        let c = compare(&d, &l, 3);
        assert!(c.kld.abs() < 1e-6, "{c:?}");
        assert!((c.nll - c.nll_base).abs() < 1e-6);
        assert!(c.same_top);
        let total: f64 =
            d.top.iter().map(|p| (p.1 as f64).exp()).sum::<f64>() + (d.rest as f64).exp();
        assert!((total - 1.0).abs() < 1e-5, "probabilities sum to {total}");
    }

    #[test]
    fn divergence_is_positive_and_bounded_by_the_full_one() {
        let p = logits();
        let q: Vec<f32> = p
            .iter()
            .enumerate()
            .map(|(i, &x)| x + (i % 3) as f32 * 0.3)
            .collect();
        let c = compare(&summarize(&p, 0, 1, 4), &q, 1);
        let (lp, lq) = (log_softmax(&p), log_softmax(&q));
        let full: f64 = (0..p.len()).map(|i| lp[i].exp() * (lp[i] - lq[i])).sum();
        assert!(c.kld > 0.0 && c.kld <= full + 1e-9, "{} vs {full}", c.kld);
        let all = compare(&summarize(&p, 0, 1, p.len()), &q, 1);
        assert!((all.kld - full).abs() < 1e-6, "{} vs {full}", all.kld);
    }

    fn log_softmax(l: &[f32]) -> Vec<f64> {
        let (m, lse) = max_and_log_sum(l);
        l.iter().map(|&x| (x - m) as f64 - lse).collect()
    }

    #[test]
    fn files_round_trip_and_refuse_another_run() {
        let l = logits();
        let f = LogprobFile {
            vocab_hash: 0x0123_4567_89ab_cdef,
            n_vocab: l.len() as u32,
            top_k: 3,
            n_ctx: 4,
            tokens: vec![1, 2, 3, 4],
            dists: vec![summarize(&l, 2, 4, 3)],
        };
        let dir = std::env::temp_dir().join(format!("baicai-lp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.lp");
        let mut bytes = Vec::new();
        f.write(&mut bytes).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let g = LogprobFile::read(&path).unwrap();
        assert_eq!(f, g);
        assert!(g
            .check_same_run(&path, f.vocab_hash, 50, 4, &[1, 2, 3, 4])
            .is_ok());
        let e = g
            .check_same_run(&path, 7, 50, 4, &[1, 2, 3, 4])
            .unwrap_err();
        assert!(e.to_string().contains("different tokenizer"), "{e}");
        let e = g
            .check_same_run(&path, f.vocab_hash, 50, 4, &[1, 2, 9, 4])
            .unwrap_err();
        assert!(e.to_string().contains("token 2 is 3 there, 9 here"), "{e}");
        let e = g
            .check_same_run(&path, f.vocab_hash, 50, 8, &[1, 2, 3, 4])
            .unwrap_err();
        assert!(e.to_string().contains("-c 4"), "{e}");
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let e = LogprobFile::read(&path).unwrap_err();
        assert!(e.to_string().contains("bytes present"), "{e}");
        std::fs::write(&path, b"_logits_").unwrap();
        let e = LogprobFile::read(&path).unwrap_err();
        assert!(e.to_string().contains("not a baicai logprob file"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn hash_depends_on_every_text_and_the_boundaries() {
        let h = |v: &[&str]| hash_texts(v.len(), v.iter().copied());
        assert_ne!(h(&["ab", "c"]), h(&["a", "bc"]));
        assert_ne!(h(&["a"]), h(&["b"]));
        assert_eq!(h(&["a", "b"]), h(&["a", "b"]));
    }
}

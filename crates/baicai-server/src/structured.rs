//! Structured output by constrained decoding, over llguidance (the matcher llama.cpp and vLLM
//! use): a JSON schema or a Lark grammar is compiled once per request, and each choice's
//! sequence carries a [`GrammarConstraint`] that the engine asks for a token mask before every
//! sampled token.
//!
//! llguidance sees the vocabulary as a token trie built from baicai's tokenizer once, when the
//! model is loaded ([`Grammars::new`]): each token's bytes, control tokens marked as special
//! (so no grammar text can be spelled with them), and every end-of-generation token as an EOS.
//! Compiling happens during validation, so a schema llguidance cannot handle is a 400 that
//! quotes its error (which names the unsupported keyword) before anything is queued.

use std::sync::Arc;

use baicai_engine::constraint::{TokenConstraint, TokenMask};
use baicai_tokenizer::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

/// The byte llguidance's trie puts before the text of special tokens.
const SPECIAL_MARKER: u8 = 0xFF;

/// baicai's tokenizer as llguidance's tokenizer environment.
struct TokenizerEnvImpl {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for TokenizerEnvImpl {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => self.tokenizer.encode(text, false, false),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// What compiles grammars for the served model: llguidance's parser factory over its vocabulary.
pub struct Grammars {
    factory: ParserFactory,
    /// End-of-generation tokens: all a failed matcher allows.
    eog: Arc<[u32]>,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").finish_non_exhaustive()
    }
}

impl Grammars {
    /// Builds the token trie of `tokenizer` (a few hundred ms for a 150k vocabulary).
    ///
    /// # Errors
    /// llguidance refuses the vocabulary (it has no end-of-generation token, for one).
    pub fn new(tokenizer: Arc<Tokenizer>) -> Result<Grammars, String> {
        let n = tokenizer.vocab_size();
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                let bytes = tokenizer.token_bytes(id);
                if tokenizer.is_control(id) {
                    let mut w = vec![SPECIAL_MARKER];
                    w.extend_from_slice(&bytes);
                    w
                } else {
                    bytes
                }
            })
            .collect();
        let eog: Vec<u32> = tokenizer
            .eog_ids()
            .iter()
            .copied()
            .filter(|&t| (t as usize) < n)
            .collect();
        let eos = tokenizer
            .eos_id()
            .or_else(|| eog.first().copied())
            .ok_or("the model has no end-of-generation token")?;
        let mut info = TokRxInfo::new(n as u32, eos);
        info.tok_bos = tokenizer.bos_id();
        info.tok_end_of_turn = tokenizer.eot_id();
        let mut trie = TokTrie::from(&info, &words);
        if !eog.is_empty() {
            trie = trie.with_eos_tokens(&eog);
        }
        let eog: Arc<[u32]> = if eog.is_empty() {
            Arc::new([eos])
        } else {
            eog.into()
        };
        let env: TokEnv = Arc::new(TokenizerEnvImpl { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Grammars { factory, eog })
    }

    /// Compiles `grammar`.
    ///
    /// # Errors
    /// llguidance's message: the schema keyword or grammar rule it cannot handle.
    pub fn compile(&self, grammar: TopLevelGrammar) -> Result<Compiled, String> {
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| clean_error(&e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher_error(&matcher) {
            return Err(e);
        }
        Ok(Compiled {
            matcher: Arc::new(matcher),
            eog: self.eog.clone(),
        })
    }
}

fn matcher_error(m: &Matcher) -> Option<String> {
    m.is_error()
        .then(|| clean_error(&m.get_error().unwrap_or_default()))
}

/// llguidance's message without the grammar it quotes after it and without its position in
/// our generated grammar text: what the client's schema did wrong, on one line.
fn clean_error(e: &str) -> String {
    let e = e.split("\n   1 | ").next().unwrap_or(e);
    let e = match e.split_once("): ") {
        Some((pos, rest)) if pos.starts_with("at ") => rest,
        _ => e,
    };
    e.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A compiled grammar, ready to constrain any number of sequences.
#[derive(Clone)]
pub struct Compiled {
    matcher: Arc<Matcher>,
    eog: Arc<[u32]>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled").finish_non_exhaustive()
    }
}

impl Compiled {
    /// A constraint for one sequence, at the grammar's start.
    pub fn constraint(&self) -> GrammarConstraint {
        GrammarConstraint {
            matcher: self.matcher.as_ref().clone(),
            eog: self.eog.clone(),
        }
    }
}

/// One sequence's position in a grammar.
pub struct GrammarConstraint {
    matcher: Matcher,
    eog: Arc<[u32]>,
}

impl TokenConstraint for GrammarConstraint {
    fn mask(&mut self, mask: &mut TokenMask) {
        // A failed matcher (it should not: every token it is given, it allowed) allows only
        // end-of-generation, so the answer ends rather than leaving the grammar.
        match self.matcher.compute_mask_or_eos() {
            Ok(vob) => {
                let words = mask.words_mut();
                let n = words.len().min(vob.as_slice().len());
                words[..n].copy_from_slice(&vob.as_slice()[..n]);
            }
            Err(_) => self.eog.iter().for_each(|&t| mask.allow(t)),
        }
    }

    fn commit(&mut self, token: u32) {
        // An error leaves the matcher stopped, which `is_done` reports.
        let _ = self.matcher.consume_token(token);
    }

    fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }
}

//! Tokenizers for GGUF models: byte-level BPE (`tokenizer.ggml.model = gpt2`, Qwen, Llama 3,
//! DeepSeek) and SentencePiece BPE (`llama`, Gemma), streaming detokenization, and chat
//! templates.
//!
//! A key design decision made in this crate: **llama.cpp is the specification.** Token ids must
//! be exactly the ones llama.cpp produces for the same file, because the engine's outputs are
//! compared against llama.cpp token for token. So the algorithms follow llama.cpp's
//! (`llama-vocab.cpp`) rather than Hugging Face `tokenizers`: the same pre-tokenizer regex lists
//! per `tokenizer.ggml.pre`, the same merge priority and tie-breaks, the same special-token
//! partitioning (longest special token first, user-defined tokens matched even when specials are
//! not parsed), the same defaults for BOS/EOS and the same end-of-generation set detected from
//! token texts. Where llama.cpp's behaviour is an accident of its implementation (a normal `</s>`
//! token treated as end of generation, the `[UNK_BYTE_…]` rendering), it is reproduced and marked
//! in a comment. The reference is the llama.cpp vendored in llama-cpp-python 0.3.36 (ggml
//! 0c1e570), the build the test fixtures come from.
//!
//! The second decision: the core is independent of GGUF. [`Tokenizer::from_spec`] takes a plain
//! [`TokenizerSpec`]; [`Tokenizer::from_gguf`] only fills one from `tokenizer.ggml.*` keys. Symbols
//! inside the merge loops are ids or text slices, never fresh strings, so loading a 150k-merge
//! vocabulary and encoding a prompt stay cheap.

#![warn(missing_docs)]

mod bpe;
pub mod chat;
mod error;
mod gguf;
mod hf;
mod pretokenize;
mod special;
mod spm;
mod stream;
mod vocab;

pub use chat::{ChatMessage, ChatTemplate};
pub use error::{Result, TokenizerError};
pub use stream::StreamDecoder;
pub use vocab::TokenType;

use bpe::{Bpe, BpeScratch};
use special::{Fragment, SpecialMatcher};
use spm::SpmScratch;
use vocab::{attr, SpecialInput, Specials, Vocab};

/// The tokenization algorithm, from `tokenizer.ggml.model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenizerModel {
    /// `gpt2`: byte-level BPE with merges and a regex pre-tokenizer.
    #[default]
    Bpe,
    /// `llama`: SentencePiece BPE over scores, with byte fallback.
    Spm,
}

impl TokenizerModel {
    /// The model for a `tokenizer.ggml.model` value.
    ///
    /// # Errors
    /// [`TokenizerError::UnknownModel`] for anything but `gpt2` and `llama`.
    pub fn from_gguf_name(name: &str) -> Result<TokenizerModel> {
        match name {
            "gpt2" => Ok(TokenizerModel::Bpe),
            "llama" => Ok(TokenizerModel::Spm),
            other => Err(TokenizerError::UnknownModel(other.to_string())),
        }
    }

    /// The `tokenizer.ggml.model` value.
    pub fn gguf_name(self) -> &'static str {
        match self {
            TokenizerModel::Bpe => "gpt2",
            TokenizerModel::Spm => "llama",
        }
    }
}

/// Everything a tokenizer is built from, mirroring the `tokenizer.ggml.*` keys. `None` means "not
/// given", and the model's llama.cpp default applies.
#[derive(Debug, Clone, Default)]
pub struct TokenizerSpec {
    /// Algorithm (`tokenizer.ggml.model`).
    pub model: TokenizerModel,
    /// BPE pre-tokenizer name (`tokenizer.ggml.pre`); ignored for SPM; `None` = `default`.
    pub pre: Option<String>,
    /// Token texts; the index is the id (`tokenizer.ggml.tokens`).
    pub tokens: Vec<String>,
    /// SPM merge scores (`tokenizer.ggml.scores`).
    pub scores: Option<Vec<f32>>,
    /// Token types (`tokenizer.ggml.token_type`); `None`: all normal.
    pub token_types: Option<Vec<TokenType>>,
    /// BPE merges, `"left right"`, highest priority first (`tokenizer.ggml.merges`).
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`; detected from the token texts when absent.
    pub eot_id: Option<u32>,
    /// `tokenizer.ggml.eom_token_id`; detected from the token texts when absent.
    pub eom_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.fim_pad_token_id` (end of generation; detected when absent).
    pub fim_pad_id: Option<u32>,
    /// `tokenizer.ggml.fim_rep_token_id` (end of generation; detected when absent).
    pub fim_rep_id: Option<u32>,
    /// `tokenizer.ggml.fim_sep_token_id` (end of generation; detected when absent).
    pub fim_sep_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (default: SPM yes; BPE only for Llama-3-style pre).
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token` (default no).
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (default: SPM yes, BPE no).
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template` (Jinja).
    pub chat_template: Option<String>,
}

enum Algorithm {
    Bpe(Box<Bpe>),
    Spm {
        byte_tokens: Box<[Option<u32>; 256]>,
    },
}

/// A loaded tokenizer: encoding, decoding and vocabulary queries. Immutable and `Sync`; share it
/// behind an `Arc`.
pub struct Tokenizer {
    model: TokenizerModel,
    pre: String,
    vocab: Vocab,
    specials: Specials,
    algorithm: Algorithm,
    special_matcher: SpecialMatcher,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.model)
            .field("pre", &self.pre)
            .field("vocab_size", &self.vocab.len())
            .field("bos", &self.specials.bos)
            .field("eos", &self.specials.eos)
            .field("eog", &self.specials.eog)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds a tokenizer, applying llama.cpp's defaults for whatever `spec` leaves `None`.
    ///
    /// # Errors
    /// Empty vocabulary, duplicate tokens, per-token arrays shorter than the vocabulary, an
    /// unknown BPE pre-tokenizer, or `add_bos`/`add_eos` without the token id.
    pub fn from_spec(spec: TokenizerSpec) -> Result<Tokenizer> {
        let TokenizerSpec {
            model,
            pre,
            tokens,
            scores,
            token_types,
            merges,
            bos_id,
            eos_id,
            eot_id,
            eom_id,
            unk_id,
            pad_id,
            fim_pad_id,
            fim_rep_id,
            fim_sep_id,
            add_bos,
            add_eos,
            add_space_prefix,
            chat_template,
        } = spec;
        let mut vocab = Vocab::new(tokens, scores, token_types)?;
        let pre = pre.unwrap_or_default();
        // Per-model defaults, as llama_vocab::impl::load sets them before reading the keys.
        let (defaults, default_add_bos, default_space_prefix, clean_spaces, pre_cfg) = match model {
            TokenizerModel::Spm => {
                let d = Specials {
                    bos: Some(1),
                    eos: Some(2),
                    unk: Some(0),
                    ..Default::default()
                };
                (d, true, true, false, None)
            }
            TokenizerModel::Bpe => {
                let cfg = pretokenize::config(&pre)?;
                let d = Specials {
                    bos: (!cfg.no_default_bos).then_some(11),
                    eos: Some(11),
                    ..Default::default()
                };
                (d, cfg.add_bos, false, cfg.clean_spaces, Some(cfg))
            }
        };
        let specials = vocab::resolve_specials(
            &mut vocab,
            &SpecialInput {
                defaults,
                bos: bos_id,
                eos: eos_id,
                eot: eot_id,
                eom: eom_id,
                unk: unk_id,
                pad: pad_id,
                fim_pad: fim_pad_id,
                fim_rep: fim_rep_id,
                fim_sep: fim_sep_id,
            },
        );
        let add_bos = add_bos.unwrap_or(default_add_bos);
        let add_eos = add_eos.unwrap_or(false);
        if add_bos && specials.bos.is_none() {
            return Err(TokenizerError::MissingSpecialToken {
                flag: "tokenizer.ggml.add_bos_token",
                id_key: "tokenizer.ggml.bos_token_id",
            });
        }
        if add_eos && specials.eos.is_none() {
            return Err(TokenizerError::MissingSpecialToken {
                flag: "tokenizer.ggml.add_eos_token",
                id_key: "tokenizer.ggml.eos_token_id",
            });
        }
        let algorithm = match pre_cfg {
            Some(cfg) => Algorithm::Bpe(Box::new(Bpe::new(&vocab, &merges, &pre, cfg)?)),
            None => Algorithm::Spm {
                byte_tokens: Box::new(spm::byte_tokens(&vocab)),
            },
        };
        let special_matcher = SpecialMatcher::new(&vocab, vocab::special_cache(&vocab));
        Ok(Tokenizer {
            model,
            pre,
            vocab,
            specials,
            algorithm,
            special_matcher,
            add_bos,
            add_eos,
            add_space_prefix: add_space_prefix.unwrap_or(default_space_prefix),
            clean_spaces,
            chat_template,
        })
    }

    /// Builds the tokenizer described by a GGUF file's `tokenizer.*` metadata.
    ///
    /// # Errors
    /// Missing or mistyped keys (see [`TokenizerSpec::from_gguf`]) and the errors of
    /// [`Tokenizer::from_spec`].
    pub fn from_gguf(gguf: &baicai_gguf::Gguf) -> Result<Tokenizer> {
        Tokenizer::from_spec(TokenizerSpec::from_gguf(gguf)?)
    }

    /// Token ids of `text`. `add_special` adds BOS/EOS as the model asks (`add_bos`/`add_eos`);
    /// `parse_special` matches control tokens written in the text (`<|im_start|>`) as single
    /// tokens. User-defined tokens are always matched whole, as in llama.cpp.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let fragments = self
            .special_matcher
            .partition(&self.vocab, text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.specials.bos);
        }
        match &self.algorithm {
            Algorithm::Bpe(bpe) => {
                let mut scratch = BpeScratch::default();
                for f in fragments {
                    match f {
                        Fragment::Text(r) => {
                            bpe.encode(&self.vocab, &text[r], &mut out, &mut scratch)
                        }
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
            Algorithm::Spm { byte_tokens } => {
                let mut scratch = SpmScratch::default();
                let mut escaped = String::new();
                // A text fragment at the start or after a special token gets the space prefix.
                let mut after_special = true;
                for f in fragments {
                    match f {
                        Fragment::Text(r) => {
                            escaped.clear();
                            if self.add_space_prefix && after_special {
                                escaped.push('▁');
                            }
                            escaped.extend(text[r].chars().map(|c| if c == ' ' { '▁' } else { c }));
                            spm::encode(
                                &self.vocab,
                                byte_tokens,
                                self.specials.unk,
                                &escaped,
                                &mut out,
                                &mut scratch,
                            );
                            after_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            after_special = true;
                        }
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.specials.eos);
        }
        out
    }

    /// Appends the bytes of one token's piece (llama.cpp's `token_to_piece`): control and
    /// unknown tokens only when `special`, user-defined tokens always as their text, byte tokens
    /// as their byte, unused tokens as nothing.
    pub(crate) fn append_piece(&self, id: u32, special: bool, out: &mut Vec<u8>) {
        let Some(text) = self.vocab.get_text(id) else {
            return;
        };
        let a = self.vocab.attrs[id as usize];
        if a & (attr::CONTROL | attr::UNKNOWN) != 0 && !special {
            return;
        }
        if a & (attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) != 0 {
            out.extend_from_slice(text.as_bytes());
        } else if a & attr::NORMAL != 0 {
            match self.model {
                TokenizerModel::Bpe => bpe::decode_token_text(text, out),
                TokenizerModel::Spm => out.extend_from_slice(text.replace('▁', " ").as_bytes()),
            }
        } else if a & attr::BYTE != 0 {
            out.push(
                text.get(3..5)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .unwrap_or(0),
            );
        }
    }

    /// The bytes token `id` stands for, control tokens rendered as their text; empty for an id
    /// outside the vocabulary. A piece can be part of a UTF-8 character (byte tokens, byte-level
    /// BPE pieces).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let mut out = Vec::new();
        self.append_piece(id, true, &mut out);
        out
    }

    /// The bytes of a token sequence, as llama.cpp's `llama_detokenize`: with `skip_special`,
    /// control tokens render as nothing and a leading BOS / trailing EOS the model adds itself
    /// are dropped; otherwise control tokens render as their text. Ids outside the vocabulary
    /// render as nothing.
    pub fn decode_bytes(&self, ids: &[u32], skip_special: bool) -> Vec<u8> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if skip_special
            && self.add_bos
            && ids.first().is_some_and(|&i| Some(i) == self.specials.bos)
        {
            remove_space = false;
            ids = &ids[1..];
        }
        if skip_special && self.add_eos && ids.last().is_some_and(|&i| Some(i) == self.specials.eos)
        {
            ids = &ids[..ids.len() - 1];
        }
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let start = out.len();
            self.append_piece(id, !skip_special, &mut out);
            // The space SPM prefixed to the text is not part of it.
            if remove_space && out.get(start) == Some(&b' ') {
                out.remove(start);
            }
            remove_space = false;
        }
        if self.clean_spaces {
            clean_up_spaces(&mut out);
        }
        out
    }

    /// [`Tokenizer::decode_bytes`] as a string; bytes that are not valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, skip_special)).into_owned()
    }

    /// A [`StreamDecoder`] for this tokenizer's output.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder {
        StreamDecoder::new(skip_special)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The vocabulary text of token `id` (byte-level BPE texts are in GPT-2 byte characters, SPM
    /// texts use `▁` for spaces).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.get_text(id)
    }

    /// The id of the token whose vocabulary text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.id(text)
    }

    /// Whether `id` is a control (or unknown) token: rendered only when specials are not
    /// skipped, matched in text only when specials are parsed.
    pub fn is_control(&self, id: u32) -> bool {
        self.vocab.has(id, attr::CONTROL | attr::UNKNOWN)
    }

    /// Beginning-of-sequence token.
    pub fn bos_id(&self) -> Option<u32> {
        self.specials.bos
    }

    /// End-of-sequence token.
    pub fn eos_id(&self) -> Option<u32> {
        self.specials.eos
    }

    /// End-of-turn token (`<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`, …).
    pub fn eot_id(&self) -> Option<u32> {
        self.specials.eot
    }

    /// Unknown token.
    pub fn unk_id(&self) -> Option<u32> {
        self.specials.unk
    }

    /// Padding token.
    pub fn pad_id(&self) -> Option<u32> {
        self.specials.pad
    }

    /// Whether generating `id` ends generation: EOS, EOT, EOM, the FIM pad/repo/file-separator
    /// tokens, and every token whose text is a known end marker (llama.cpp's
    /// `special_eog_ids`).
    pub fn is_eog(&self, id: u32) -> bool {
        self.specials.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation ids, ascending.
    pub fn eog_ids(&self) -> &[u32] {
        &self.specials.eog
    }

    /// Whether `encode(.., add_special = true, ..)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., add_special = true, ..)` appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// The algorithm.
    pub fn model(&self) -> TokenizerModel {
        self.model
    }

    /// The BPE pre-tokenizer name as given (empty when absent or SPM).
    pub fn pre(&self) -> &str {
        &self.pre
    }

    /// The model's Jinja chat template, if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
}

/// llama.cpp's `clean_spaces` pass over detokenized bytes (BPE models whose pre-tokenizer asks
/// for it): drop the space before `?!.,`, around a lone `'`, and before `'s 'm 're 've`.
fn clean_up_spaces(text: &mut Vec<u8>) {
    // Each pass compacts in place, reading text[i-1] / text[i+1] as llama.cpp does.
    let mut total = text.len();
    // Pass 1: " ?", " !", " .", " ,".
    let n = total;
    total = usize::from(n > 0);
    for i in 1..n {
        let x = text[i];
        if text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        text[total] = x;
        total += 1;
    }
    // Pass 2: " ' " -> "'".
    let n = total;
    total = usize::from(n > 0);
    let mut i = 1;
    while i < n {
        let x = text[i];
        if x == b'\'' && i + 1 < n && text[i - 1] == b' ' && text[i + 1] == b' ' {
            total -= 1;
            i += 1;
            text[i] = 0;
        }
        text[total] = x;
        total += 1;
        i += 1;
    }
    // Pass 3: " 's", " 'm", " 're", " 've" lose the space; " 't", " 'd", " 'll" keep it.
    let n = total;
    total = usize::from(n > 0);
    for i in 1..n {
        let x = text[i];
        if text[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = text[i + 1];
            if matches!(x1, b's' | b'm') {
                total -= 1;
            } else if !matches!(x1, b't' | b'd') && i + 2 < n {
                let x2 = text[i + 2];
                if (x1 == b'r' || x1 == b'v') && x2 == b'e' {
                    total -= 1;
                }
            }
        }
        text[total] = x;
        total += 1;
    }
    text.truncate(total);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level BPE vocabulary: the 256 byte characters, merged tokens, and specials.
    fn tiny_bpe() -> Tokenizer {
        let mut tokens: Vec<String> = bpe::BYTE_CHARS.iter().map(|c| c.to_string()).collect();
        let merged = ["ab", "bc", "aa", "he", "ll", "hell", "hello", "Ġw", "Ġwo"];
        tokens.extend(merged.iter().map(|s| s.to_string()));
        tokens.extend(["<|im_start|>", "<|im_end|>", "<tool>"].map(String::from));
        let n = tokens.len();
        let mut types = vec![TokenType::Normal; n];
        types[n - 3] = TokenType::Control;
        types[n - 2] = TokenType::Control;
        types[n - 1] = TokenType::UserDefined;
        let merges = [
            "a b", "b c", "a a", "h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o",
        ];
        Tokenizer::from_spec(TokenizerSpec {
            model: TokenizerModel::Bpe,
            pre: Some("qwen2".into()),
            tokens,
            token_types: Some(types),
            merges: merges.map(String::from).to_vec(),
            eos_id: Some(n as u32 - 2),
            ..Default::default()
        })
        .unwrap()
    }

    fn ids_of(tok: &Tokenizer, texts: &[&str]) -> Vec<u32> {
        texts
            .iter()
            .map(|t| tok.token_id(t).unwrap_or_else(|| panic!("no token {t:?}")))
            .collect()
    }

    #[test]
    fn bpe_merges_by_rank_then_leftmost() {
        let tok = tiny_bpe();
        // "a b" outranks "b c"; of two equal "a a" candidates the left one merges first.
        assert_eq!(tok.encode("abc", false, false), ids_of(&tok, &["ab", "c"]));
        assert_eq!(tok.encode("aaa", false, false), ids_of(&tok, &["aa", "a"]));
        assert_eq!(
            tok.encode("hello wo", false, false),
            ids_of(&tok, &["hello", "Ġwo"])
        );
        assert_eq!(
            tok.decode(&tok.encode("hello wo", false, false), false),
            "hello wo"
        );
    }

    #[test]
    fn bpe_specials_control_only_when_parsed_user_defined_always() {
        let tok = tiny_bpe();
        let start = tok.token_id("<|im_start|>").unwrap();
        let tool = tok.token_id("<tool>").unwrap();
        assert_eq!(
            tok.encode("<|im_start|>ab", false, true),
            vec![start, tok.token_id("ab").unwrap()]
        );
        assert!(!tok.encode("<|im_start|>ab", false, false).contains(&start));
        assert!(tok.encode("x<tool>y", false, false).contains(&tool));
        let ids = tok.encode("<|im_start|>he<|im_end|>", false, true);
        assert_eq!(tok.decode(&ids, false), "<|im_start|>he<|im_end|>");
        assert_eq!(tok.decode(&ids, true), "he");
        assert!(tok.is_eog(tok.token_id("<|im_end|>").unwrap()));
        assert!(!tok.add_bos(), "qwen2-style BPE adds no BOS by default");
    }

    /// A SentencePiece vocabulary with byte fallback.
    fn tiny_spm(add_space_prefix: Option<bool>) -> Tokenizer {
        let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
        let mut types = vec![TokenType::Unknown, TokenType::Control, TokenType::Control];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(TokenType::Byte);
        }
        let pieces = [
            ("▁", -1.0),
            ("a", -2.0),
            ("b", -2.0),
            ("▁a", -1.5),
            ("ab", -0.5),
            ("▁ab", -0.1),
        ];
        let mut scores = vec![0.0; tokens.len()];
        for (p, s) in pieces {
            tokens.push(p.to_string());
            types.push(TokenType::Normal);
            scores.push(s);
        }
        Tokenizer::from_spec(TokenizerSpec {
            model: TokenizerModel::Spm,
            tokens,
            scores: Some(scores),
            token_types: Some(types),
            add_space_prefix,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn spm_merges_by_score_with_space_prefix_and_byte_fallback() {
        let tok = tiny_spm(None);
        assert_eq!(tok.bos_id(), Some(1));
        assert!(tok.add_bos());
        let ids = tok.encode("ab", true, false);
        assert_eq!(ids, [vec![1], ids_of(&tok, &["▁ab"])].concat());
        // Without the prefix: "ab" (score -0.5) merges before "▁a" (-1.5), then "▁ab" (-0.1).
        let tok2 = tiny_spm(Some(false));
        assert_eq!(tok2.encode(" ab", false, false), ids_of(&tok2, &["▁ab"]));
        assert_eq!(
            tok2.encode(" aab", false, false),
            ids_of(&tok2, &["▁a", "ab"])
        );
        assert_eq!(tok2.encode("ba", false, false), ids_of(&tok2, &["b", "a"]));
        // "é" is no token: its UTF-8 bytes become <0xC3><0xA9>.
        assert_eq!(
            tok2.encode("é", false, false),
            ids_of(&tok2, &["<0xC3>", "<0xA9>"])
        );
        // llama.cpp strips the prefixed space from the first token, except when a skipped BOS
        // comes first (then the space stays).
        assert_eq!(tok.decode(&ids[1..], true), "ab");
        assert_eq!(tok.decode(&ids, true), " ab");
        assert_eq!(tok.decode(&ids, false), "<s> ab");
        assert_eq!(
            tok2.decode(&tok2.encode("aé b", false, false), false),
            "aé b"
        );
    }

    #[test]
    fn stream_decoder_waits_for_byte_fallback_characters() {
        let tok = tiny_spm(Some(false));
        let text = "aé中🥬b";
        let ids = tok.encode(text, false, false);
        let mut dec = tok.stream_decoder(true);
        let mut out = String::new();
        for &id in &ids {
            let part = dec.push(&tok, id);
            assert!(!part.contains('\u{FFFD}'), "broken character after {id}");
            out.push_str(&part);
        }
        out.push_str(&dec.flush());
        assert_eq!(out, text);
    }

    #[test]
    fn spec_errors_name_the_problem() {
        let e = Tokenizer::from_spec(TokenizerSpec::default()).unwrap_err();
        assert!(matches!(e, TokenizerError::EmptyVocab), "{e}");
        let dup = TokenizerSpec {
            model: TokenizerModel::Spm,
            tokens: vec!["a".into(), "a".into()],
            ..Default::default()
        };
        let e = Tokenizer::from_spec(dup).unwrap_err().to_string();
        assert!(
            e.contains("\"a\"") && e.contains("0") && e.contains("1"),
            "{e}"
        );
        let short = TokenizerSpec {
            model: TokenizerModel::Spm,
            tokens: vec!["a".into(), "b".into()],
            scores: Some(vec![0.0]),
            ..Default::default()
        };
        let e = Tokenizer::from_spec(short).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.scores"), "{e}");
        assert!(TokenizerModel::from_gguf_name("t5")
            .unwrap_err()
            .to_string()
            .contains("'t5'"));
    }

    #[test]
    fn tokenizer_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<ChatTemplate>();
    }

    #[test]
    fn clean_spaces_matches_llamacpp_passes() {
        let run = |s: &str| {
            let mut v = s.as_bytes().to_vec();
            clean_up_spaces(&mut v);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(run("Hello , world !"), "Hello, world!");
        assert_eq!(run("it 's a dog ' s"), "it's a dog's");
        assert_eq!(run("we 're I 'll"), "we're I 'll");
        assert_eq!(run(""), "");
    }
}

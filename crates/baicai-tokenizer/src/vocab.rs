//! The vocabulary: token texts, scores, attributes, text → id lookup, and the special-token
//! bookkeeping llama.cpp derives at load time (default ids, EOT/EOG detection by text).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::{Result, TokenizerError};

/// Token type as stored in `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TokenType {
    /// 0: no type given.
    Undefined,
    /// 1: ordinary text piece.
    #[default]
    Normal,
    /// 2: the unknown token.
    Unknown,
    /// 3: control token (`<|im_start|>`, `<bos>`, …): matched in text only when parsing specials,
    /// rendered only when asked to.
    Control,
    /// 4: user-defined token: always matched as a whole in text, always rendered.
    UserDefined,
    /// 5: unused slot.
    Unused,
    /// 6: byte-fallback token `<0xXX>`.
    Byte,
}

impl TokenType {
    /// The type of a `tokenizer.ggml.token_type` value; unknown values are `Undefined`, as in
    /// llama.cpp.
    pub fn from_gguf(value: i64) -> TokenType {
        match value {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

/// Attribute bits (llama.cpp's `llama_token_attr`); a token can gain bits at load time, e.g. a
/// normal token whose text is a known end-of-turn marker becomes control.
pub(crate) mod attr {
    pub const UNKNOWN: u8 = 1 << 0;
    pub const UNUSED: u8 = 1 << 1;
    pub const NORMAL: u8 = 1 << 2;
    pub const CONTROL: u8 = 1 << 3;
    pub const USER_DEFINED: u8 = 1 << 4;
    pub const BYTE: u8 = 1 << 5;

    pub fn from_type(t: super::TokenType) -> u8 {
        use super::TokenType::*;
        match t {
            Undefined => 0,
            Normal => NORMAL,
            Unknown => UNKNOWN,
            Control => CONTROL,
            UserDefined => USER_DEFINED,
            Unused => UNUSED,
            Byte => BYTE,
        }
    }
}

/// FxHash (rustc's hasher): the maps here are keyed by vocabulary strings and id pairs fixed at
/// load time, so a fast non-keyed hash is safe and keeps loading 150k–260k entries cheap.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8-byte chunk")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Token texts, scores and attributes, with the text → id index.
pub(crate) struct Vocab {
    texts: Texts,
    pub scores: Vec<f32>,
    pub attrs: Vec<u8>,
    index: TextIndex,
}

/// All token texts in one string: token `id` is `all[offsets[id]..offsets[id + 1]]`. One
/// allocation instead of one per token, and lookups touch a few compact arrays (the merge table
/// of a 150k vocabulary is built from ~450k lookups, which are bound by cache misses).
struct Texts {
    all: String,
    offsets: Vec<u32>,
}

impl Texts {
    #[inline]
    fn get(&self, id: u32) -> &str {
        let i = id as usize;
        &self.all[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }
}

/// Open-addressing hash index from token text to id. The texts live once, in [`Texts`]; a slot
/// holds an id (or `EMPTY`), probed linearly.
struct TextIndex {
    slots: Vec<u32>,
    shift: u32,
}

const EMPTY: u32 = u32::MAX;

fn hash_text(s: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write(s.as_bytes());
    h.write_usize(s.len());
    h.finish()
}

impl TextIndex {
    /// Indexes `tokens`; on a duplicate text returns `Err((first id, second id))`.
    fn build(texts: &Texts) -> std::result::Result<TextIndex, (u32, u32)> {
        let cap = (texts.len() * 2).next_power_of_two().max(2);
        let mut index = TextIndex {
            slots: vec![EMPTY; cap],
            shift: 64 - cap.trailing_zeros(),
        };
        for id in 0..texts.len() as u32 {
            let text = texts.get(id);
            let mut i = index.start(text);
            loop {
                let slot = index.slots[i];
                if slot == EMPTY {
                    index.slots[i] = id;
                    break;
                }
                if texts.get(slot) == text {
                    return Err((slot, id));
                }
                i = (i + 1) & (index.slots.len() - 1);
            }
        }
        Ok(index)
    }

    /// First probe position: the high bits of the hash, which the final multiply mixes best.
    #[inline]
    fn start(&self, text: &str) -> usize {
        (hash_text(text) >> self.shift) as usize
    }

    #[inline]
    fn get(&self, texts: &Texts, text: &str) -> Option<u32> {
        let mut i = self.start(text);
        loop {
            let slot = self.slots[i];
            if slot == EMPTY {
                return None;
            }
            if texts.get(slot) == text {
                return Some(slot);
            }
            i = (i + 1) & (self.slots.len() - 1);
        }
    }
}

impl Vocab {
    /// Builds the vocabulary. Empty texts become `[EMPTY_<id>]` and duplicates are an error, as
    /// in llama.cpp.
    pub fn new(
        tokens: Vec<String>,
        scores: Option<Vec<f32>>,
        types: Option<Vec<TokenType>>,
    ) -> Result<Vocab> {
        let n = tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        let scores = match scores {
            Some(s) if s.len() < n => {
                return Err(TokenizerError::LengthMismatch {
                    field: "tokenizer.ggml.scores",
                    found: s.len(),
                    expected: n,
                })
            }
            Some(mut s) => {
                s.truncate(n);
                s
            }
            None => vec![0.0; n],
        };
        let attrs = match types {
            Some(t) if t.len() < n => {
                return Err(TokenizerError::LengthMismatch {
                    field: "tokenizer.ggml.token_type",
                    found: t.len(),
                    expected: n,
                })
            }
            Some(t) => t[..n].iter().map(|&t| attr::from_type(t)).collect(),
            None => vec![attr::NORMAL; n],
        };
        let mut all = String::with_capacity(tokens.iter().map(|t| t.len() + 1).sum());
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        for (i, text) in tokens.iter().enumerate() {
            if text.is_empty() {
                all.push_str(&format!("[EMPTY_{i}]"));
            } else {
                all.push_str(text);
            }
            offsets.push(u32::try_from(all.len()).map_err(|_| TokenizerError::VocabTooLarge)?);
        }
        drop(tokens);
        let texts = Texts { all, offsets };
        let index =
            TextIndex::build(&texts).map_err(|(first, second)| TokenizerError::DuplicateToken {
                text: texts.get(second).to_string(),
                first,
                second,
            })?;
        Ok(Vocab {
            texts,
            scores,
            attrs,
            index,
        })
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// The text of token `id` (which must be in the vocabulary).
    #[inline]
    pub fn text(&self, id: u32) -> &str {
        self.texts.get(id)
    }

    /// The text of token `id`, or `None` outside the vocabulary.
    #[inline]
    pub fn get_text(&self, id: u32) -> Option<&str> {
        ((id as usize) < self.len()).then(|| self.texts.get(id))
    }

    #[inline]
    pub fn id(&self, text: &str) -> Option<u32> {
        self.index.get(&self.texts, text)
    }

    #[inline]
    pub fn has(&self, id: u32, bits: u8) -> bool {
        self.attrs.get(id as usize).is_some_and(|&a| a & bits != 0)
    }

    fn add_attr(&mut self, id: u32, bits: u8) {
        self.attrs[id as usize] |= bits;
    }

    /// The first of `texts` (in list order) present in the vocabulary.
    fn find_first(&self, texts: &[&str]) -> Option<u32> {
        texts.iter().find_map(|t| self.id(t))
    }
}

/// Special token ids after llama.cpp's load-time rules.
#[derive(Debug, Clone, Default)]
pub(crate) struct Specials {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// Sorted end-of-generation ids.
    pub eog: Vec<u32>,
}

/// Ids given in the metadata (None: key absent) and the model's defaults.
pub(crate) struct SpecialInput {
    pub defaults: Specials,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

// Token texts llama.cpp recognises when the file does not name the id (llama-vocab.cpp,
// "auto-detect special tokens by text"). Where a vocabulary holds several, llama.cpp takes
// whichever its hash map yields first; we take the first in list order, which is deterministic.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Texts that end generation wherever they are in the vocabulary.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// gpt-oss markers llama.cpp always renders (forced to user-defined).
const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// Resolves the special ids and the end-of-generation set, adjusting attributes as llama.cpp
/// does: detected EOT/EOM/FIM/EOG tokens become control, control tokens named "unused" become
/// unused.
pub(crate) fn resolve_specials(vocab: &mut Vocab, input: &SpecialInput) -> Specials {
    let n = vocab.len() as u32;
    // A default outside the vocabulary is disabled; a file id outside it is ignored (llama.cpp
    // logs a warning and keeps the default).
    let pick = |default: Option<u32>, given: Option<u32>| {
        let default = default.filter(|&d| d < n);
        match given {
            Some(g) if g < n => Some(g),
            _ => default,
        }
    };
    let d = &input.defaults;
    let mut s = Specials {
        bos: pick(d.bos, input.bos),
        eos: pick(d.eos, input.eos),
        eot: pick(None, input.eot),
        eom: pick(None, input.eom),
        unk: pick(d.unk, input.unk),
        pad: pick(d.pad, input.pad),
        eog: Vec::new(),
    };
    let detect = |vocab: &mut Vocab, given: Option<u32>, texts: &[&str]| {
        given.or_else(|| {
            let id = vocab.find_first(texts)?;
            vocab.add_attr(id, attr::CONTROL);
            Some(id)
        })
    };
    s.eot = detect(vocab, s.eot, EOT_TEXTS);
    s.eom = detect(vocab, s.eom, EOM_TEXTS);
    detect(vocab, None, FIM_PRE_TEXTS);
    detect(vocab, None, FIM_SUF_TEXTS);
    detect(vocab, None, FIM_MID_TEXTS);
    let fim_pad = detect(vocab, pick(None, input.fim_pad), FIM_PAD_TEXTS);
    let fim_rep = detect(vocab, pick(None, input.fim_rep), FIM_REP_TEXTS);
    let fim_sep = detect(vocab, pick(None, input.fim_sep), FIM_SEP_TEXTS);

    for id in 0..vocab.len() {
        let a = &mut vocab.attrs[id];
        let text = vocab.texts.get(id as u32);
        if *a & attr::CONTROL != 0 && text.contains("unused") {
            *a |= attr::UNUSED;
        }
    }

    let mut eog: Vec<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
    for text in EOG_TEXTS {
        if let Some(id) = vocab.id(text) {
            eog.push(id);
            vocab.add_attr(id, attr::CONTROL);
        }
    }
    for text in ALWAYS_RENDERED {
        if let Some(id) = vocab.id(text) {
            vocab.attrs[id as usize] = attr::USER_DEFINED;
        }
    }
    eog.extend([s.eos, s.eot, s.eom].into_iter().flatten());
    eog.sort_unstable();
    eog.dedup();

    // o200k_harmony / solar-open: "<|end|>" ends a message, not generation, when the vocabulary
    // also has "<|return|>"+"<|call|>" or "<|calls|>"+"<|flush|>".
    let in_eog = |vocab: &Vocab, eog: &[u32], t: &str| {
        vocab.id(t).filter(|id| eog.binary_search(id).is_ok())
    };
    let has_call = in_eog(vocab, &eog, "<|call|>").or(in_eog(vocab, &eog, "<|calls|>"));
    let has_return = in_eog(vocab, &eog, "<|return|>");
    let has_flush = in_eog(vocab, &eog, "<|flush|>");
    if let Some(end) = in_eog(vocab, &eog, "<|end|>") {
        if has_call.is_some() && (has_return.is_some() || has_flush.is_some()) {
            eog.retain(|&e| e != end);
            vocab.attrs[end as usize] = attr::USER_DEFINED;
        }
    }
    // Gemma 4 and PLaMo: "</s>" is ordinary text when "<|tool_response>" or "<|plamo:eos|>" is
    // an end marker (it is one only for PaddleOCR).
    let normal_s_marker =
        in_eog(vocab, &eog, "<|tool_response>").or_else(|| in_eog(vocab, &eog, "<|plamo:eos|>"));
    if normal_s_marker.is_some() {
        if let Some(s_id) = in_eog(vocab, &eog, "</s>") {
            eog.retain(|&e| e != s_id);
            vocab.attrs[s_id as usize] = attr::NORMAL;
        }
    }
    s.eog = eog;
    s
}

/// Ids of control, user-defined and unknown tokens, longest text first (llama.cpp's
/// `cache_special_tokens`; ties, which llama.cpp leaves to `std::sort`, go by id).
pub(crate) fn special_cache(vocab: &Vocab) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..vocab.len() as u32)
        .filter(|&id| vocab.has(id, attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN))
        .collect();
    ids.sort_by_key(|&id| std::cmp::Reverse(vocab.text(id).len()));
    ids
}

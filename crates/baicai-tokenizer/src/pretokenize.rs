//! BPE pre-tokenizers: the regex lists llama.cpp applies before byte-level BPE, chosen by
//! `tokenizer.ggml.pre`.
//!
//! llama.cpp applies each regex of a list in turn to every fragment the previous one produced;
//! text a regex does not match stays a fragment of its own. It runs the `\p{..}` patterns over a
//! "collapsed" text (each non-ASCII code point replaced by one byte per Unicode category) with
//! `std::regex`, or hand-written equivalents for the GPT-2, Llama-3 and Qwen2 patterns; both give
//! the same splits as a Unicode-aware backtracking regex over the real text, which is what we run
//! (fancy-regex, for the `(?!\S)` lookaheads). Splits can differ only where llama.cpp's Unicode
//! tables and the `regex` crate's disagree (code points new in one Unicode version).

use std::ops::Range;

use fancy_regex::Regex;

use crate::error::{Result, TokenizerError};

// Regex lists as in llama.cpp's `llm_tokenizer_bpe` (llama-vocab.cpp), by pre-tokenizer type.
const GPT2: &[&str] = &[r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"];
const DEFAULT: &[&str] = &[
    r"[\p{P}\$\+<=>\^~\|]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];
const LLAMA3: &[&str] = &[
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];
const QWEN2: &[&str] = &[
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];
const QWEN35: &[&str] = &[
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];
const DEEPSEEK_LLM: &[&str] = &[
    "[\r\n]",
    "\\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+",
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    r"[一-龥ࠀ-一가-퟿]+",
    r"\p{N}+",
];
const DEEPSEEK_CODER: &[&str] = &[
    "[\r\n]",
    r"\s?\p{L}+",
    r"\s?\p{P}+",
    r"[一-龥ࠀ-一가-퟿]+",
    r"\p{N}",
];
const DEEPSEEK_V3: &[&str] = &[
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];
const FALCON: &[&str] = &[
    r"[\p{P}\$\+<=>\^~\|`]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"[0-9][0-9][0-9]",
];
const STARCODER: &[&str] = &[
    r"\p{N}",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
];
const CHATGLM4: &[&str] = &[
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];
const PORO: &[&str] = &[r" ?[^(\s|.,!?…。，、।۔،)]+"];
const GPT4O: &[&str] = &[
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];
const TEKKEN: &[&str] = &[
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];
const SEED_CODER: &[&str] = &[
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
];
const BAILINGMOE: &[&str] = &[
    r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
];

/// A pre-tokenizer's regex list and the flags llama.cpp sets with it.
#[derive(Clone, Copy)]
pub(crate) struct PreConfig {
    pub regexes: &'static [&'static str],
    /// Detokenization removes spaces before `?!.,` and in contractions (`clean_spaces`).
    pub clean_spaces: bool,
    /// A whole pre-tokenized word that is a token is emitted without merging.
    pub ignore_merges: bool,
    /// BOS is added unless `tokenizer.ggml.add_bos_token` says otherwise.
    pub add_bos: bool,
    /// The model has no default BOS id (ChatGLM).
    pub no_default_bos: bool,
}

const fn cfg(regexes: &'static [&'static str], clean_spaces: bool) -> PreConfig {
    PreConfig {
        regexes,
        clean_spaces,
        ignore_merges: false,
        add_bos: false,
        no_default_bos: false,
    }
}

/// (names, config) in llama.cpp's order; a missing `tokenizer.ggml.pre` means "default".
const TABLE: &[(&[&str], PreConfig)] = &[
    (&["default"], cfg(DEFAULT, true)),
    (
        &[
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
        ],
        PreConfig {
            regexes: LLAMA3,
            clean_spaces: true,
            ignore_merges: true,
            add_bos: true,
            no_default_bos: false,
        },
    ),
    (&["deepseek-llm"], cfg(DEEPSEEK_LLM, false)),
    (&["deepseek-coder"], cfg(DEEPSEEK_CODER, false)),
    (
        &["deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"],
        cfg(DEEPSEEK_V3, false),
    ),
    (&["falcon"], cfg(FALCON, true)),
    (&["mpt", "olmo", "jais", "exaone4"], cfg(GPT2, true)),
    (
        &[
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "modern-bert",
        ],
        cfg(GPT2, true),
    ),
    (&["trillion", "granite-docling"], cfg(GPT2, false)),
    (
        &["starcoder", "refact", "codeshell", "exaone", "minerva-7b"],
        cfg(STARCODER, true),
    ),
    (&["command-r", "smollm"], cfg(STARCODER, false)),
    (
        &[
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "f2llmv2",
            "hunyuan",
            "solar-open",
        ],
        cfg(QWEN2, false),
    ),
    (&["megrez", "stablelm2"], cfg(QWEN2, true)),
    (&["qwen35"], cfg(QWEN35, false)),
    (&["dbrx", "smaug-bpe"], cfg(LLAMA3, true)),
    (&["poro-chat"], cfg(PORO, false)),
    (&["bloom", "gpt3-finnish"], cfg(PORO, true)),
    (
        &["chatglm-bpe"],
        PreConfig {
            regexes: CHATGLM4,
            clean_spaces: true,
            ignore_merges: false,
            add_bos: false,
            no_default_bos: true,
        },
    ),
    (
        &["glm4", "glm5"],
        PreConfig {
            regexes: CHATGLM4,
            clean_spaces: true,
            ignore_merges: true,
            add_bos: false,
            no_default_bos: true,
        },
    ),
    (
        &["tekken"],
        PreConfig {
            regexes: TEKKEN,
            clean_spaces: false,
            ignore_merges: true,
            add_bos: true,
            no_default_bos: false,
        },
    ),
    (
        &["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"],
        cfg(GPT4O, false),
    ),
    (&["seed-coder"], cfg(SEED_CODER, false)),
    (
        &["bailingmoe", "bailingmoe2", "llada-moe"],
        cfg(BAILINGMOE, false),
    ),
    (&["grok-2"], cfg(QWEN2, false)),
];

/// The configuration for a `tokenizer.ggml.pre` name.
///
/// # Errors
/// [`TokenizerError::UnknownPreTokenizer`] listing the supported names.
pub(crate) fn config(name: &str) -> Result<PreConfig> {
    let name = if name.is_empty() { "default" } else { name };
    TABLE
        .iter()
        .find(|(names, _)| names.contains(&name))
        .map(|(_, c)| *c)
        .ok_or_else(|| TokenizerError::UnknownPreTokenizer {
            name: name.to_string(),
            supported: TABLE
                .iter()
                .flat_map(|(n, _)| n.iter())
                .copied()
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Compiled regex list of one pre-tokenizer.
pub(crate) struct PreTokenizer {
    regexes: Vec<Regex>,
}

impl PreTokenizer {
    pub fn new(name: &str, patterns: &[&str]) -> Result<PreTokenizer> {
        let regexes = patterns
            .iter()
            .map(|p| {
                Regex::new(p).map_err(|e| TokenizerError::Regex {
                    pre: name.to_string(),
                    pattern: p.to_string(),
                    message: e.to_string(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(PreTokenizer { regexes })
    }

    /// Splits `text` into words (byte ranges, in order, covering all of `text`).
    pub fn split(&self, text: &str) -> Vec<Range<usize>> {
        let mut words = Vec::new();
        if !text.is_empty() {
            words.push(0..text.len());
        }
        for re in &self.regexes {
            let mut next = Vec::with_capacity(words.len() * 2);
            for w in words {
                split_one(re, text, w, &mut next);
            }
            words = next;
        }
        words
    }
}

/// Matches of `re` in `text[range]` and the unmatched gaps between them, in order.
fn split_one(re: &Regex, text: &str, range: Range<usize>, out: &mut Vec<Range<usize>>) {
    let base = range.start;
    let hay = &text[range.clone()];
    let mut last = 0;
    for m in re.find_iter(hay) {
        // A backtracking-limit error leaves the rest of the fragment unsplit rather than failing
        // the whole encode; the patterns here are linear in practice.
        let Ok(m) = m else { break };
        if m.start() == m.end() {
            continue;
        }
        if m.start() > last {
            out.push(base + last..base + m.start());
        }
        out.push(base + m.start()..base + m.end());
        last = m.end();
    }
    if last < hay.len() {
        out.push(base + last..range.end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words<'a>(pre: &str, text: &'a str) -> Vec<&'a str> {
        let c = config(pre).unwrap();
        let p = PreTokenizer::new(pre, c.regexes).unwrap();
        p.split(text).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn every_supported_pattern_compiles() {
        for (names, c) in TABLE {
            PreTokenizer::new(names[0], c.regexes).unwrap();
        }
    }

    #[test]
    fn qwen2_splits_digits_and_keeps_leading_space_run() {
        assert_eq!(
            words("qwen2", "  leading 123"),
            vec![" ", " leading", " ", "1", "2", "3"]
        );
        assert_eq!(words("qwen2", "a\n\nb"), vec!["a", "\n\n", "b"]);
        assert_eq!(words("qwen2", "it's"), vec!["it", "'s"]);
    }

    #[test]
    fn llama3_groups_three_digits() {
        assert_eq!(words("llama-bpe", "12345"), vec!["123", "45"]);
    }

    #[test]
    fn deepseek_v3_splits_cjk_digits_and_symbol_runs() {
        assert_eq!(
            words("deepseek-v3", "+~= 1234中文ab"),
            vec!["+~=", " ", "123", "4", "中文", "ab"]
        );
        assert_eq!(words("deepseek-v3", "a.b"), vec!["a", ".b"]);
    }

    #[test]
    fn unknown_pre_lists_supported_names() {
        let e = config("nope").err().unwrap().to_string();
        assert!(
            e.contains("'nope'") && e.contains("qwen2") && e.contains("llama-bpe"),
            "{e}"
        );
    }
}

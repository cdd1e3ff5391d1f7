//! Typed errors of this crate.

use baicai_gguf::GgufError;

/// Errors from building a tokenizer or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// Reading a `tokenizer.*` metadata key failed (missing required key, wrong type, I/O).
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// `tokenizer.ggml.model` names an algorithm this crate does not implement.
    #[error(
        "unsupported tokenizer model '{0}' (tokenizer.ggml.model); supported: \
         'gpt2' (byte-level BPE), 'llama' (SentencePiece)"
    )]
    UnknownModel(String),
    /// `tokenizer.ggml.pre` names a BPE pre-tokenizer this crate does not know.
    #[error("unsupported BPE pre-tokenizer '{name}' (tokenizer.ggml.pre); supported: {supported}")]
    UnknownPreTokenizer {
        /// The name found in the file.
        name: String,
        /// Comma-separated list of the names this crate accepts.
        supported: String,
    },
    /// The vocabulary (`tokenizer.ggml.tokens`) is empty.
    #[error("the vocabulary (tokenizer.ggml.tokens) is empty")]
    EmptyVocab,
    /// The token texts add up to more than 4 GiB.
    #[error("the vocabulary's token texts exceed 4 GiB")]
    VocabTooLarge,
    /// A per-token array is shorter than the vocabulary.
    #[error("{field} has {found} entries but the vocabulary has {expected} tokens")]
    LengthMismatch {
        /// The metadata key of the short array.
        field: &'static str,
        /// Its length.
        found: usize,
        /// The vocabulary size.
        expected: usize,
    },
    /// The same token text appears twice in the vocabulary.
    #[error("duplicate token {text:?} in the vocabulary at ids {first} and {second}")]
    DuplicateToken {
        /// The token text.
        text: String,
        /// Its first id.
        first: u32,
        /// The id that repeats it.
        second: u32,
    },
    /// A token id in the metadata is negative or does not fit in `u32`.
    #[error("{field}: token id {value} is not a valid id")]
    InvalidTokenId {
        /// The metadata key.
        field: &'static str,
        /// The value found.
        value: i64,
    },
    /// `add_bos`/`add_eos` is set but the corresponding token id is not.
    #[error("{flag} is true, but {id_key} is not set")]
    MissingSpecialToken {
        /// The flag key, e.g. `tokenizer.ggml.add_bos_token`.
        flag: &'static str,
        /// The id key, e.g. `tokenizer.ggml.bos_token_id`.
        id_key: &'static str,
    },
    /// A pre-tokenizer regular expression failed to compile.
    #[error("pre-tokenizer '{pre}': invalid regex {pattern:?}: {message}")]
    Regex {
        /// The pre-tokenizer name.
        pre: String,
        /// The pattern.
        pattern: String,
        /// The regex engine's message.
        message: String,
    },
    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// A Hugging Face `tokenizer.json` / `tokenizer_config.json` could not be used.
    #[error("{path}: {what}")]
    HfFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        what: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

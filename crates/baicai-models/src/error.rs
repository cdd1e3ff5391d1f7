//! Errors of model loading and running.

/// Errors of model loading and running.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] baicai_gguf::GgufError),
    #[error("unsupported architecture '{found}' (supported: {supported})")]
    UnsupportedArch { found: String, supported: String },
    #[error("tensor '{0}' is missing from the model file")]
    MissingTensor(String),
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    BadShape {
        name: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("tensor '{name}' has type {ty}, which is not supported (supported: {supported})")]
    UnsupportedType {
        name: String,
        ty: String,
        supported: String,
    },
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// A configuration value breaks a rule: the key as the file spells it (`deepseek2.block_count`,
    /// `num_hidden_layers`), the value written there, and the rule.
    #[error("{key} = {value}: {rule}")]
    BadValue {
        key: String,
        value: String,
        rule: String,
    },
    #[error("context full: {needed} tokens needed, the cache holds {capacity}")]
    ContextFull { needed: usize, capacity: usize },
    #[error("a forward pass needs at least one sequence with at least one token")]
    EmptyBatch,
    #[error("token id {id} is outside the vocabulary of {n_vocab}")]
    BadToken { id: u32, n_vocab: usize },
}

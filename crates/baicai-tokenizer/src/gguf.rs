//! Building a [`TokenizerSpec`] from a GGUF file's `tokenizer.*` metadata.

use baicai_gguf::{Gguf, GgufError};

use crate::error::{Result, TokenizerError};
use crate::{TokenType, TokenizerModel, TokenizerSpec};

/// An optional token id key, checked to fit in `u32`.
fn id(gguf: &Gguf, key: &'static str) -> Result<Option<u32>> {
    match gguf.get_u64(key)? {
        None => Ok(None),
        Some(v) => u32::try_from(v)
            .map(Some)
            .map_err(|_| TokenizerError::InvalidTokenId {
                field: key,
                value: v as i64,
            }),
    }
}

impl TokenizerSpec {
    /// Reads `tokenizer.ggml.{model, pre, tokens, scores, token_type, merges, *_token_id,
    /// add_bos_token, add_eos_token, add_space_prefix}` and `tokenizer.chat_template`.
    ///
    /// # Errors
    /// A missing `tokenizer.ggml.model` or `tokenizer.ggml.tokens`, missing merges for a BPE
    /// model, an unsupported model name, or a key of the wrong type.
    pub fn from_gguf(gguf: &Gguf) -> Result<TokenizerSpec> {
        let model = TokenizerModel::from_gguf_name(gguf.require_str("tokenizer.ggml.model")?)?;
        let tokens: Vec<String> = gguf
            .get_str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| GgufError::MissingKey {
                key: "tokenizer.ggml.tokens".into(),
            })?
            .into_iter()
            .map(str::to_string)
            .collect();
        let merges: Vec<String> = match gguf.get_str_array("tokenizer.ggml.merges")? {
            Some(m) => m.into_iter().map(str::to_string).collect(),
            None if model == TokenizerModel::Bpe => {
                return Err(GgufError::MissingKey {
                    key: "tokenizer.ggml.merges".into(),
                }
                .into())
            }
            None => Vec::new(),
        };
        let token_types = gguf
            .get_i64_array("tokenizer.ggml.token_type")?
            .map(|v| v.into_iter().map(TokenType::from_gguf).collect());
        Ok(TokenizerSpec {
            model,
            pre: gguf.get_str("tokenizer.ggml.pre")?.map(str::to_string),
            tokens,
            scores: gguf.get_f32_array("tokenizer.ggml.scores")?,
            token_types,
            merges,
            bos_id: id(gguf, "tokenizer.ggml.bos_token_id")?,
            eos_id: id(gguf, "tokenizer.ggml.eos_token_id")?,
            eot_id: id(gguf, "tokenizer.ggml.eot_token_id")?,
            eom_id: id(gguf, "tokenizer.ggml.eom_token_id")?,
            unk_id: id(gguf, "tokenizer.ggml.unknown_token_id")?,
            pad_id: id(gguf, "tokenizer.ggml.padding_token_id")?,
            fim_pad_id: id(gguf, "tokenizer.ggml.fim_pad_token_id")?,
            fim_rep_id: id(gguf, "tokenizer.ggml.fim_rep_token_id")?,
            fim_sep_id: id(gguf, "tokenizer.ggml.fim_sep_token_id")?,
            add_bos: gguf.get_bool("tokenizer.ggml.add_bos_token")?,
            add_eos: gguf.get_bool("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: gguf.get_bool("tokenizer.ggml.add_space_prefix")?,
            chat_template: gguf.get_str("tokenizer.chat_template")?.map(str::to_string),
        })
    }
}

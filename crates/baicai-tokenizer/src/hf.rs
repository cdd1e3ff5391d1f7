//! Byte-level BPE tokenizers from Hugging Face `tokenizer.json` (+ `tokenizer_config.json` for
//! the special tokens, BOS flag and chat template), mapped onto a [`TokenizerSpec`] so that the
//! same BPE, special-token and streaming code serves GGUF and checkpoint folders.

use std::path::Path;

use serde_json::Value;

use crate::{Result, TokenType, TokenizerError, TokenizerModel, TokenizerSpec};

fn bad(path: &Path, what: impl Into<String>) -> TokenizerError {
    TokenizerError::HfFile {
        path: path.display().to_string(),
        what: what.into(),
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| bad(path, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| bad(path, format!("not JSON: {e}")))
}

/// The llama.cpp pre-tokenizer whose regex the `pre_tokenizer` section uses.
fn guess_pre(pre: &Value) -> &'static str {
    let text = pre.to_string();
    if text.contains("\\\\p{N}{1,3}") {
        "llama-bpe"
    } else if text.contains("\\\\p{N}") && text.contains("Split") {
        "qwen2"
    } else {
        "default"
    }
}

fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

impl TokenizerSpec {
    /// Reads a byte-level BPE `tokenizer.json` and, if present, the `tokenizer_config.json`
    /// beside it.
    ///
    /// # Errors
    /// Unreadable files, a model other than byte-level BPE, inconsistent ids.
    pub fn from_hf_dir(dir: &Path) -> Result<TokenizerSpec> {
        let path = dir.join("tokenizer.json");
        let tj = read_json(&path)?;
        let model = &tj["model"];
        if model["type"].as_str() != Some("BPE") {
            return Err(bad(
                &path,
                format!(
                    "model type {} is not supported (byte-level BPE only)",
                    model["type"]
                ),
            ));
        }
        let vocab = model["vocab"]
            .as_object()
            .ok_or_else(|| bad(&path, "model.vocab missing"))?;
        let mut entries: Vec<(u32, String, TokenType)> = Vec::with_capacity(vocab.len());
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .filter(|&i| i < u32::MAX as u64)
                .ok_or_else(|| bad(&path, format!("bad id for {text:?}")))?;
            entries.push((id as u32, text.clone(), TokenType::Normal));
        }
        for t in tj["added_tokens"].as_array().into_iter().flatten() {
            let (Some(id), Some(text)) = (t["id"].as_u64(), t["content"].as_str()) else {
                continue;
            };
            let ty = if t["special"].as_bool().unwrap_or(false) {
                TokenType::Control
            } else {
                TokenType::UserDefined
            };
            match entries.iter_mut().find(|e| e.0 == id as u32) {
                Some(e) => {
                    e.1 = text.to_string();
                    e.2 = ty;
                }
                None => entries.push((id as u32, text.to_string(), ty)),
            }
        }
        entries.sort_by_key(|e| e.0);
        let n = entries.last().map_or(0, |e| e.0 as usize + 1);
        if n > entries.len() {
            // Holes in the id space become unused placeholder tokens.
            let mut full: Vec<(u32, String, TokenType)> = (0..n as u32)
                .map(|i| (i, format!("<unused_{i}>"), TokenType::Unused))
                .collect();
            for e in entries {
                let i = e.0 as usize;
                full[i] = e;
            }
            entries = full;
        }
        let merges: Vec<String> = model["merges"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| match m {
                Value::String(s) => Some(s.clone()),
                Value::Array(p) if p.len() == 2 => {
                    Some(format!("{} {}", p[0].as_str()?, p[1].as_str()?))
                }
                _ => None,
            })
            .collect();
        let id_of = |text: &str| entries.iter().find(|e| e.1 == text).map(|e| e.0);
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = if cfg_path.exists() {
            read_json(&cfg_path)?
        } else {
            Value::Null
        };
        let bos_id = token_text(&cfg["bos_token"]).and_then(|t| id_of(&t));
        let eos_id = token_text(&cfg["eos_token"]).and_then(|t| id_of(&t));
        Ok(TokenizerSpec {
            model: TokenizerModel::Bpe,
            pre: Some(guess_pre(&tj["pre_tokenizer"]).to_string()),
            token_types: Some(entries.iter().map(|e| e.2).collect()),
            tokens: entries.into_iter().map(|e| e.1).collect(),
            merges,
            bos_id,
            eos_id,
            add_bos: Some(cfg["add_bos_token"].as_bool().unwrap_or(false) && bos_id.is_some()),
            add_eos: Some(cfg["add_eos_token"].as_bool().unwrap_or(false) && eos_id.is_some()),
            chat_template: cfg["chat_template"].as_str().map(String::from),
            ..TokenizerSpec::default()
        })
    }
}

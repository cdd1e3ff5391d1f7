//! GGUF container: header, metadata, tensor infos, split files, memory-mapped tensor data.
//!
//! A key design decision made in this crate: tensor data is never copied. [`Gguf::tensor_data`]
//! hands out slices of the memory map, so a model's weights stay in the page cache and a model
//! larger than RAM still runs. Every length and offset read from a file is checked against the
//! bytes that remain before anything is allocated, so a hostile file gets an error naming the
//! field and byte offset instead of a panic or an unbounded allocation.
//!
//! This crate knows nothing of models or kernels: [`GgmlType`] only carries what the container
//! needs to size tensors (block length and block bytes).

// API contract (skeleton; implementation pending).

use std::collections::BTreeMap;
use std::path::Path;

/// Errors from reading or writing GGUF files.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is malformed: `what` names the field, `offset` the byte offset where it starts.
    #[error("{path}: invalid GGUF at byte offset {offset}: {what}")]
    Format { path: String, offset: u64, what: String },
    /// A metadata key exists but has another type than asked for.
    #[error("metadata key '{key}' has type {found}, expected {expected}")]
    WrongType { key: String, found: &'static str, expected: &'static str },
    /// A required metadata key is missing.
    #[error("metadata key '{key}' is missing")]
    MissingKey { key: String },
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// ggml tensor types as numbered in the GGUF spec.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// One tensor's description. `shape` is in ggml order: `shape[0]` is the innermost (contiguous)
/// dimension, i.e. the row length of a weight matrix `[rows = shape[1], cols = shape[0]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Index of the split file that holds the data (0 for single files).
    pub file_index: usize,
    /// Offset of the data relative to the start of that file's data section.
    pub offset: u64,
    /// Size in bytes of the data (checked to lie inside the file).
    pub n_bytes: u64,
}

/// An opened GGUF model: one file or all parts of a split model.
pub struct Gguf {
    _private: (),
}

impl Gguf {
    /// Opens a GGUF file; a path named `name-00001-of-0000N.gguf` opens all N parts, and
    /// metadata and tensors of all parts are merged.
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        let _ = path;
        todo!()
    }
    /// GGUF version of the (first) file.
    pub fn version(&self) -> u32 {
        todo!()
    }
    /// All metadata, merged over split parts.
    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        todo!()
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata().get(key)
    }
    /// Any integer type converted to u64 (negative -> WrongType). None if missing.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        let _ = key;
        todo!()
    }
    /// F32 or F64 (or integer) as f32. None if missing.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        let _ = key;
        todo!()
    }
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        let _ = key;
        todo!()
    }
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        let _ = key;
        todo!()
    }
    /// The required variants error with MissingKey.
    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_u64(key)?.ok_or_else(|| GgufError::MissingKey { key: key.into() })
    }
    pub fn require_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.get_f32(key)?.ok_or_else(|| GgufError::MissingKey { key: key.into() })
    }
    pub fn require_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get_str(key)?.ok_or_else(|| GgufError::MissingKey { key: key.into() })
    }
    /// Array accessors: element types must match (ints convertible). None if missing.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        let _ = key;
        todo!()
    }
    pub fn get_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>, GgufError> {
        let _ = key;
        todo!()
    }
    pub fn get_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
        let _ = key;
        todo!()
    }
    /// All tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        todo!()
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let _ = name;
        todo!()
    }
    /// The tensor's bytes, a view into the memory map.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let _ = info;
        todo!()
    }
    /// Total size in bytes of all files.
    pub fn file_size(&self) -> u64 {
        todo!()
    }
}

//! GGUF container: header, metadata, tensor infos, split files, memory-mapped tensor data.
//!
//! A key design decision made in this crate: tensor data is never copied. [`Gguf::tensor_data`]
//! hands out slices of the memory map, so a model's weights stay in the page cache and a model
//! larger than RAM still runs. Every length and offset read from a file is checked against the
//! bytes that remain before anything is allocated, so a hostile file gets an error naming the
//! field and byte offset instead of a panic or an unbounded allocation.
//!
//! The parser works on any byte slice ([`parse`], [`Gguf::from_bytes`]), so tests and the
//! `gguf_parse` fuzz target (in `fuzz/`) drive exactly the code that reads real files; the only
//! `unsafe` is the `mmap` call in [`Gguf::open`] and the `madvise` in [`will_need`]. GGUF v2 and v3 are read (v1, with 32-bit counts,
//! is rejected). Split models (`<prefix>-00001-of-0000N.gguf`, as llama.cpp's `gguf-split` writes
//! them) open as one [`Gguf`] whose tensors carry the index of the part holding them.
//! [`GgufWriter`] writes files for tests and tools, streaming tensor bytes in declared order.
//!
//! This crate knows nothing of models or kernels: [`GgmlType`] only carries what the container
//! needs to size tensors (block length and block bytes).

mod parse;
mod split;
mod types;
mod value;
mod writer;

pub use parse::{
    parse, parse_named, Parsed, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS,
    MAX_METADATA_VALUES,
};
pub use split::{
    split_file_name, split_metadata, split_name_parts, KEY_SPLIT_COUNT, KEY_SPLIT_NO,
    KEY_SPLIT_TENSORS_COUNT,
};
pub use writer::{write_to_vec, GgufWriter, TensorSpec};

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Tells the OS that `bytes` (a tensor's data, say) will be read soon: for a memory-mapped file
/// it starts reading the pages that are not in memory, in the background, so several tensors'
/// reads from disk overlap instead of each waiting for its page faults. Advisory: does nothing
/// where the OS does not support it, and ignores errors (the data is read on use either way).
pub fn will_need(bytes: &[u8]) {
    #[cfg(unix)]
    {
        if bytes.is_empty() {
            return;
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096);
        let start = bytes.as_ptr() as usize & !(page - 1);
        let end = bytes.as_ptr() as usize + bytes.len();
        // SAFETY: MADV_WILLNEED only schedules reads of the pages in the range; it never changes
        // memory contents or mappings, and where part of the range is not mapped it fails with
        // ENOMEM, which is ignored. The range is `bytes` rounded out to whole pages.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_WILLNEED);
        }
    }
    #[cfg(not(unix))]
    let _ = bytes;
}

/// Tells the OS that the whole pages inside `bytes` will not be read again, so it may drop them
/// from this process's memory: a mapped file's pages are read again from the file if they ever
/// are; pages of anonymous memory (a file read into memory) are freed, and read as zeros
/// afterwards. Pages that `bytes` shares with neighbouring data are left alone. Used once a
/// tensor has been repacked into memory of its own, so the copy replaces the original rather than
/// doubling it.
///
/// # Safety
/// Nothing may read `bytes` again while expecting the old contents (anonymous memory reads as
/// zeros afterwards).
pub unsafe fn dont_need(bytes: &[u8]) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096);
        let start = (bytes.as_ptr() as usize).next_multiple_of(page);
        let end = (bytes.as_ptr() as usize + bytes.len()) & !(page - 1);
        if end > start {
            // SAFETY: the range is whole pages inside `bytes`, which the caller no longer reads;
            // MADV_DONTNEED changes no mapping, and errors (ENOMEM, EINVAL) leave memory as it
            // was and are ignored (the advice only saves memory).
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = bytes;
}

/// Errors from reading or writing GGUF files.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file (or split part) concerned.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is malformed: `what` names the field, `offset` the byte offset where it starts.
    /// [`GgufWriter`] also reports misuse this way (`offset`: bytes written so far).
    #[error("{path}: invalid GGUF at byte offset {offset}: {what}")]
    Format {
        /// The file (`<memory>` for in-memory input, `<stream>` for a writer without a path).
        path: String,
        /// Byte offset of the offending field.
        offset: u64,
        /// What is wrong, naming the field, the metadata key or tensor, and the limit.
        what: String,
    },
    /// A metadata key exists but has another type than asked for.
    #[error("metadata key '{key}' has type {found}, expected {expected}")]
    WrongType {
        /// The metadata key.
        key: String,
        /// The type found, e.g. `"i32"` or `"array of string"`.
        found: &'static str,
        /// The type asked for.
        expected: &'static str,
    },
    /// A required metadata key is missing.
    #[error("metadata key '{key}' is missing")]
    MissingKey {
        /// The metadata key.
        key: String,
    },
}

/// A metadata value. Variants are in GGUF type-id order (`U8` = 0 … `F64` = 12); the typed
/// accessors of [`Gguf`] and [`Value::to_u64`] and friends convert between integer widths.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // each variant is the GGUF type of the same name
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    /// UTF-8 (checked when read).
    String(String),
    /// Elements of one type (arrays of arrays may differ in element type per inner array).
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// ggml tensor types as numbered in the GGUF spec. Variant names are llama.cpp's spelling
/// ([`GgmlType::name`]); ids, block lengths and block sizes are in [`GgmlType::id`],
/// [`GgmlType::block_len`] and [`GgmlType::block_bytes`].
#[allow(non_camel_case_types, missing_docs)]
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
    /// Tensor name as stored, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Shape in ggml order, at most 4 dimensions.
    pub shape: Vec<u64>,
    /// Storage type.
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
    version: u32,
    alignment: u64,
    metadata: BTreeMap<String, Value>,
    key_order: Vec<String>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    files: Vec<FileData>,
}

impl std::fmt::Debug for Gguf {
    /// A summary: the files, version and counts (not the whole vocabulary).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("paths", &self.paths())
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Where a model's bytes live once it is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Residency {
    /// Memory-mapped from the file: nothing is read until used, pages the OS can drop and read
    /// again, so a model larger than RAM still runs (from the page cache and the disk).
    #[default]
    Mapped,
    /// Read into anonymous memory once, on 2 MiB pages where the OS grants them. For systems whose
    /// page cache holds files in 4 KiB pages (a mapped file is then walked through 4 KiB
    /// mappings): generation streams the weights with far fewer TLB misses. Needs memory for the
    /// whole file, and load time to read it.
    Resident,
}

/// The bytes of one file: a read-only map of the file or of memory it was read into, or an
/// owned buffer for in-memory files.
enum Bytes {
    Mapped(memmap2::Mmap),
    Resident(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) | Bytes::Resident(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// One opened file (one split part) and where its data section starts.
struct FileData {
    path: PathBuf,
    bytes: Bytes,
    data_offset: u64,
}

impl Gguf {
    /// Opens a GGUF file; a path named `name-00001-of-0000N.gguf` opens all N parts, and
    /// metadata and tensors of all parts are merged.
    ///
    /// Any part of a split model may be named; part 1 is found from the name. Metadata comes from
    /// part 1 (as llama.cpp reads it); tensors of every part are listed with their
    /// [`TensorInfo::file_index`].
    ///
    /// The files are memory-mapped read-only and must not be truncated or rewritten while the
    /// `Gguf` lives (as with any mmap-based loader, llama.cpp's included).
    ///
    /// # Errors
    /// [`GgufError::Io`] when a file (or a split part, named) cannot be opened or mapped;
    /// [`GgufError::Format`] when a file is not valid GGUF or the parts disagree.
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        split::open(path, Residency::Mapped)
    }

    /// [`Gguf::open`] with the tensor data held as `residency` says.
    ///
    /// # Errors
    /// As [`Gguf::open`]; with [`Residency::Resident`] also when the memory cannot be allocated
    /// or the file cannot be read.
    pub fn open_with(path: &Path, residency: Residency) -> Result<Gguf, GgufError> {
        split::open(path, residency)
    }

    /// How the tensor data is held (files from [`Gguf::from_bytes`] count as resident).
    pub fn residency(&self) -> Residency {
        match self.files.first().map(|f| &f.bytes) {
            Some(Bytes::Mapped(_)) => Residency::Mapped,
            _ => Residency::Resident,
        }
    }

    /// Parses a GGUF file held in memory (for tests and fuzzing); errors name it `<memory>`.
    ///
    /// # Errors
    /// As [`parse`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Gguf, GgufError> {
        let parsed = parse(&bytes)?;
        Self::from_parts(vec![(
            PathBuf::from("<memory>"),
            Bytes::Owned(bytes),
            parsed,
        )])
    }

    /// Builds the merged view of one or more parsed files; part `i` gets `file_index` `i`.
    fn from_parts(parts: Vec<(PathBuf, Bytes, Parsed)>) -> Result<Gguf, GgufError> {
        let mut tensors = Vec::new();
        let mut by_name = HashMap::new();
        let mut files = Vec::with_capacity(parts.len());
        let mut first = None;
        for (file_index, (path, bytes, parsed)) in parts.into_iter().enumerate() {
            for mut t in parsed.tensors {
                if by_name.contains_key(&t.name) {
                    return Err(GgufError::Format {
                        path: path.display().to_string(),
                        offset: 0,
                        what: format!("tensor '{}' appears in more than one split part", t.name),
                    });
                }
                t.file_index = file_index;
                by_name.insert(t.name.clone(), tensors.len());
                tensors.push(t);
            }
            files.push(FileData {
                path,
                bytes,
                data_offset: parsed.data_offset,
            });
            if first.is_none() {
                first = Some((
                    parsed.version,
                    parsed.alignment,
                    parsed.metadata,
                    parsed.key_order,
                ));
            }
        }
        let (version, alignment, metadata, key_order) =
            first.unwrap_or((3, DEFAULT_ALIGNMENT, BTreeMap::new(), Vec::new()));
        Ok(Gguf {
            version,
            alignment,
            metadata,
            key_order,
            tensors,
            by_name,
            files,
        })
    }

    /// GGUF version of the (first) file.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data in the (first) file (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// All metadata, merged over split parts.
    ///
    /// Split parts after the first repeat only the `split.*` keys, so this is the first part's
    /// metadata.
    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }

    /// Metadata keys in the order the (first) file lists them.
    pub fn metadata_keys_in_file_order(&self) -> &[String] {
        &self.key_order
    }

    /// The value of metadata key `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata().get(key)
    }

    /// Any integer type converted to u64 (negative -> WrongType). None if missing.
    ///
    /// # Errors
    /// [`GgufError::WrongType`] when the value is not a non-negative integer.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.get_with(key, "non-negative integer", Value::to_u64)
    }

    /// F32 or F64 (or integer) as f32. None if missing.
    ///
    /// # Errors
    /// [`GgufError::WrongType`] when the value is not a number.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.get_with(key, "f32", |v| v.to_f64().map(|x| x as f32))
    }

    /// A bool value. None if missing.
    ///
    /// # Errors
    /// [`GgufError::WrongType`] when the value is not a bool.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.get_with(key, "bool", Value::as_bool)
    }

    /// A string value. None if missing.
    ///
    /// # Errors
    /// [`GgufError::WrongType`] when the value is not a string.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.get_with(key, "string", Value::as_str)
    }

    /// Like [`Gguf::get_u64`], but a missing key is an error.
    ///
    /// # Errors
    /// [`GgufError::MissingKey`] or [`GgufError::WrongType`].
    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_u64(key)?
            .ok_or_else(|| GgufError::MissingKey { key: key.into() })
    }

    /// Like [`Gguf::get_f32`], but a missing key is an error.
    ///
    /// # Errors
    /// [`GgufError::MissingKey`] or [`GgufError::WrongType`].
    pub fn require_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.get_f32(key)?
            .ok_or_else(|| GgufError::MissingKey { key: key.into() })
    }

    /// Like [`Gguf::get_str`], but a missing key is an error.
    ///
    /// # Errors
    /// [`GgufError::MissingKey`] or [`GgufError::WrongType`].
    pub fn require_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get_str(key)?
            .ok_or_else(|| GgufError::MissingKey { key: key.into() })
    }

    /// Array accessors: element types must match (ints convertible). None if missing.
    ///
    /// # Errors
    /// [`GgufError::WrongType`] when the value is not an array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        self.get_array_with(key, "array of string", Value::as_str)
    }

    /// An array of numbers (floats or integers) as f32. None if missing.
    ///
    /// # Errors
    /// [`GgufError::WrongType`] when the value is not an array of numbers.
    pub fn get_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>, GgufError> {
        self.get_array_with(key, "array of f32", |v| v.to_f64().map(|x| x as f32))
    }

    /// An array of integers as i64. None if missing.
    ///
    /// # Errors
    /// [`GgufError::WrongType`] when the value is not an array of integers that fit in i64.
    pub fn get_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
        self.get_array_with(key, "array of i64", Value::to_i64)
    }

    fn get_with<'s, T>(
        &'s self,
        key: &str,
        expected: &'static str,
        convert: impl Fn(&'s Value) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match convert(v) {
            Some(x) => Ok(Some(x)),
            None => Err(GgufError::WrongType {
                key: key.into(),
                found: v.type_name(),
                expected,
            }),
        }
    }

    fn get_array_with<'s, T>(
        &'s self,
        key: &str,
        expected: &'static str,
        convert: impl Fn(&'s Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let Some(items) = v.as_array() else {
            return Err(GgufError::WrongType {
                key: key.into(),
                found: v.type_name(),
                expected,
            });
        };
        items
            .iter()
            .map(|item| {
                convert(item).ok_or_else(|| GgufError::WrongType {
                    key: key.into(),
                    found: Value::array_of_name(item),
                    expected,
                })
            })
            .collect::<Result<Vec<T>, _>>()
            .map(Some)
    }

    /// All tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's bytes, a view into the memory map.
    ///
    /// # Panics
    /// When `info` does not come from this `Gguf` and does not lie inside its files.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let file = &self.files[info.file_index];
        // Offsets and sizes were checked at parse time to lie inside the data section.
        let start = (file.data_offset + info.offset) as usize;
        &file.bytes.as_slice()[start..start + info.n_bytes as usize]
    }

    /// Total size in bytes of all files.
    pub fn file_size(&self) -> u64 {
        self.files
            .iter()
            .map(|f| f.bytes.as_slice().len() as u64)
            .sum()
    }

    /// Paths of the opened files, split parts in order (`<memory>` for [`Gguf::from_bytes`]).
    pub fn paths(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }
}

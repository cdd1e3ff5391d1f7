//! [`GgufWriter`]: writes a GGUF v3 file whose header is known up front and whose tensor bytes
//! are streamed in declared order, so a file larger than RAM can be written.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::parse::{value_type_id, DEFAULT_ALIGNMENT, MAX_DIMS};
use crate::{GgmlType, GgufError, Value};

/// A tensor to be written: name, shape in ggml order (`shape[0]` innermost) and type.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Shape in ggml order (`shape[0]` is the contiguous dimension).
    pub shape: Vec<u64>,
    /// Storage type.
    pub ggml_type: GgmlType,
}

impl TensorSpec {
    /// A tensor spec from its parts.
    pub fn new(name: impl Into<String>, shape: &[u64], ggml_type: GgmlType) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
            ggml_type,
        }
    }
}

/// A tensor declared in the header, with its computed place in the data section.
struct Planned {
    name: String,
    n_bytes: u64,
}

/// Writes one GGUF file: [`GgufWriter::begin`] writes the header (metadata and tensor infos),
/// then [`GgufWriter::write_tensor_data`] is called with each tensor's bytes in declared order
/// (a tensor may arrive in several chunks), then [`GgufWriter::finish`] checks that every tensor
/// was written in full.
///
/// Every tensor starts at a multiple of the alignment (`general.alignment` if the metadata sets
/// it, else 32) and is followed by zero padding up to the next multiple, as gguf-py does.
pub struct GgufWriter<W: Write> {
    out: W,
    path: String,
    alignment: u64,
    tensors: Vec<Planned>,
    /// Index of the tensor being written.
    current: usize,
    /// Bytes of the current tensor written so far.
    written: u64,
    /// Bytes written to `out` so far.
    pos: u64,
}

impl GgufWriter<BufWriter<File>> {
    /// Creates the file at `path` and writes its header.
    ///
    /// # Errors
    /// As [`GgufWriter::begin`], and [`GgufError::Io`] when the file cannot be created.
    pub fn create<K: AsRef<str>>(
        path: &Path,
        metadata: &[(K, Value)],
        tensors: &[TensorSpec],
    ) -> Result<Self, GgufError> {
        let name = path.display().to_string();
        let file = File::create(path).map_err(|source| GgufError::Io {
            path: name.clone(),
            source,
        })?;
        Self::begin_named(BufWriter::new(file), name, 3, metadata, tensors)
    }
}

impl<W: Write> GgufWriter<W> {
    /// Writes a GGUF v3 header (metadata and tensor infos) to `out`.
    ///
    /// # Errors
    /// [`GgufError::Format`] when the header could not be read back: a duplicate key or tensor
    /// name, an array whose elements differ in type, a `general.alignment` that is not a u32 power
    /// of two, more than 4 dimensions, a shape whose `shape[0]` is not a multiple of the type's
    /// block length or whose size overflows; [`GgufError::Io`] when writing fails.
    pub fn begin<K: AsRef<str>>(
        out: W,
        metadata: &[(K, Value)],
        tensors: &[TensorSpec],
    ) -> Result<Self, GgufError> {
        Self::begin_named(out, "<stream>".into(), 3, metadata, tensors)
    }

    /// Like [`GgufWriter::begin`] with another version number in the header (v2 files are laid
    /// out as v3; other numbers make files a reader should reject, for tests).
    ///
    /// # Errors
    /// As [`GgufWriter::begin`].
    pub fn begin_with_version<K: AsRef<str>>(
        out: W,
        version: u32,
        metadata: &[(K, Value)],
        tensors: &[TensorSpec],
    ) -> Result<Self, GgufError> {
        Self::begin_named(out, "<stream>".into(), version, metadata, tensors)
    }

    fn begin_named<K: AsRef<str>>(
        out: W,
        path: String,
        version: u32,
        metadata: &[(K, Value)],
        tensors: &[TensorSpec],
    ) -> Result<Self, GgufError> {
        let mut w = GgufWriter {
            out,
            path,
            alignment: DEFAULT_ALIGNMENT,
            tensors: Vec::new(),
            current: 0,
            written: 0,
            pos: 0,
        };
        let mut header = Vec::new();
        header.extend_from_slice(&crate::GGUF_MAGIC);
        header.extend_from_slice(&version.to_le_bytes());
        header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());

        let mut keys = HashSet::new();
        for (i, (key, value)) in metadata.iter().enumerate() {
            let key = key.as_ref();
            if !keys.insert(key) {
                return Err(w.err(format!("metadata key {i} ('{key}'): duplicate key")));
            }
            if key == "general.alignment" {
                match value {
                    Value::U32(a) if a.is_power_of_two() => w.alignment = u64::from(*a),
                    v => {
                        return Err(w.err(format!(
                            "'general.alignment' = {v:?} must be a u32 power of two"
                        )))
                    }
                }
            }
            put_string(&mut header, key);
            header.extend_from_slice(&value_type_id(value).to_le_bytes());
            put_value(&mut header, value)
                .map_err(|e| w.err(format!("metadata key {i} ('{key}'): {e}")))?;
        }

        let mut names = HashSet::new();
        let mut offset = 0u64;
        for (i, t) in tensors.iter().enumerate() {
            let ctx = || format!("tensor {i} ('{}')", t.name);
            if !names.insert(t.name.as_str()) {
                return Err(w.err(format!("{}: duplicate tensor name", ctx())));
            }
            if t.shape.len() > MAX_DIMS as usize {
                return Err(w.err(format!(
                    "{}: {} dimensions exceed {MAX_DIMS}",
                    ctx(),
                    t.shape.len()
                )));
            }
            let n_bytes = t
                .ggml_type
                .checked_tensor_bytes(&t.shape)
                .map_err(|e| w.err(format!("{}: {e}", ctx())))?;
            put_string(&mut header, &t.name);
            header.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in &t.shape {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset = n_bytes
                .checked_next_multiple_of(w.alignment)
                .and_then(|padded| offset.checked_add(padded))
                .ok_or_else(|| w.err(format!("{}: data section size overflows u64", ctx())))?;
            w.tensors.push(Planned {
                name: t.name.clone(),
                n_bytes,
            });
        }
        w.write(&header)?;
        w.pad()?;
        w.skip_empty_tensors()?;
        Ok(w)
    }

    fn err(&self, what: String) -> GgufError {
        GgufError::Format {
            path: self.path.clone(),
            offset: self.pos,
            what,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        self.out.write_all(bytes).map_err(|source| GgufError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes zeros up to the next multiple of the alignment.
    fn pad(&mut self) -> Result<(), GgufError> {
        let n = self.pos.next_multiple_of(self.alignment) - self.pos;
        self.write(&vec![0u8; n as usize])
    }

    /// Zero-byte tensors are complete as soon as they are reached.
    fn skip_empty_tensors(&mut self) -> Result<(), GgufError> {
        while self.current < self.tensors.len() && self.tensors[self.current].n_bytes == 0 {
            self.current += 1;
        }
        Ok(())
    }

    /// Appends `data` to tensor `name`'s bytes. Tensors must be written in declared order; a
    /// tensor may be written in several chunks. Padding follows each tensor once it is complete.
    ///
    /// # Errors
    /// [`GgufError::Format`] when `name` is not the tensor due next or `data` overruns its size;
    /// [`GgufError::Io`] when writing fails.
    pub fn write_tensor_data(&mut self, name: &str, data: &[u8]) -> Result<(), GgufError> {
        let Some(t) = self.tensors.get(self.current) else {
            return Err(self.err(format!(
                "tensor '{name}': all declared tensors are already written"
            )));
        };
        if t.name != name {
            return Err(self.err(format!(
                "tensor '{name}' written out of order: '{}' is due next",
                t.name
            )));
        }
        let n_bytes = t.n_bytes;
        let left = n_bytes - self.written;
        if data.len() as u64 > left {
            return Err(self.err(format!(
                "tensor '{name}': {} bytes given but only {left} of its {n_bytes} bytes remain",
                data.len()
            )));
        }
        self.write(data)?;
        self.written += data.len() as u64;
        if self.written == n_bytes {
            self.pad()?;
            self.current += 1;
            self.written = 0;
            self.skip_empty_tensors()?;
        }
        Ok(())
    }

    /// Checks that every declared tensor was written in full, flushes, and returns the output.
    ///
    /// # Errors
    /// [`GgufError::Format`] naming the first incomplete tensor; [`GgufError::Io`] when flushing
    /// fails.
    pub fn finish(mut self) -> Result<W, GgufError> {
        if let Some(t) = self.tensors.get(self.current) {
            return Err(self.err(format!(
                "tensor '{}' has {} of its {} bytes written ({} tensors declared, {} complete)",
                t.name,
                self.written,
                t.n_bytes,
                self.tensors.len(),
                self.current
            )));
        }
        self.out.flush().map_err(|source| GgufError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(self.out)
    }
}

/// Writes a whole GGUF v3 file into memory: metadata, then each tensor with its bytes.
///
/// # Errors
/// As [`GgufWriter::begin`] and [`GgufWriter::write_tensor_data`] (bytes of the wrong length).
pub fn write_to_vec<K: AsRef<str>>(
    metadata: &[(K, Value)],
    tensors: &[(TensorSpec, &[u8])],
) -> Result<Vec<u8>, GgufError> {
    let specs: Vec<TensorSpec> = tensors.iter().map(|(s, _)| s.clone()).collect();
    let mut w = GgufWriter::begin(Vec::new(), metadata, &specs)?;
    for (spec, data) in tensors {
        w.write_tensor_data(&spec.name, data)?;
    }
    w.finish()
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends a value's payload (without its type id). Arrays must hold one element type.
fn put_value(out: &mut Vec<u8>, v: &Value) -> Result<(), String> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            // An empty array has no element to take a type from; u8 reads back the same.
            let elem = items.first().map_or(0, value_type_id);
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for (j, item) in items.iter().enumerate() {
                if value_type_id(item) != elem {
                    return Err(format!(
                        "array element {j} is {} but element 0 is {}",
                        item.type_name(),
                        items[0].type_name()
                    ));
                }
                put_value(out, item)?;
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
    Ok(())
}

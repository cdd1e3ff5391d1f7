//! The GGUF parser over a byte slice: every length and count is checked against the bytes that
//! remain before anything is allocated, and every error names the field and its byte offset.

use std::collections::BTreeMap;

use crate::{GgmlType, GgufError, TensorInfo, Value};

/// `GGUF` in little-endian byte order, as the first four bytes of every file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`: tensors have at most four dimensions.
pub const MAX_DIMS: u32 = 4;
/// How deeply arrays may nest (an array of arrays is depth 2). Real files use depth 1.
pub const MAX_ARRAY_DEPTH: u32 = 8;

/// Most metadata values (array elements included) one file may hold. A value takes 32 bytes in
/// memory however few it takes in the file (a u8 takes one), so this bounds what a hostile file
/// can make the reader allocate; real models hold a few million at most (vocabulary, scores,
/// token types and merges of a 262k-token vocabulary come to about 1.3M).
pub const MAX_METADATA_VALUES: u64 = 1 << 24;

/// Value type ids as numbered in the GGUF spec.
mod type_id {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// The GGUF type id of a value (`Value::Array` is 9 whatever its elements).
pub(crate) fn value_type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => type_id::U8,
        Value::I8(_) => type_id::I8,
        Value::U16(_) => type_id::U16,
        Value::I16(_) => type_id::I16,
        Value::U32(_) => type_id::U32,
        Value::I32(_) => type_id::I32,
        Value::F32(_) => type_id::F32,
        Value::Bool(_) => type_id::BOOL,
        Value::String(_) => type_id::STRING,
        Value::Array(_) => type_id::ARRAY,
        Value::U64(_) => type_id::U64,
        Value::I64(_) => type_id::I64,
        Value::F64(_) => type_id::F64,
    }
}

/// The smallest number of bytes one value of type `id` can occupy: its fixed size, or for a
/// string its u64 length, or for an array its element type and u64 count. `None` for unknown ids.
fn min_value_bytes(id: u32) -> Option<usize> {
    Some(match id {
        type_id::U8 | type_id::I8 | type_id::BOOL => 1,
        type_id::U16 | type_id::I16 => 2,
        type_id::U32 | type_id::I32 | type_id::F32 => 4,
        type_id::U64 | type_id::I64 | type_id::F64 | type_id::STRING => 8,
        type_id::ARRAY => 12,
        _ => return None,
    })
}

/// The parsed header of one GGUF file: everything but the tensor bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Alignment of the data section and of tensor offsets (`general.alignment`, default 32).
    pub alignment: u64,
    /// All metadata key/value pairs.
    pub metadata: BTreeMap<String, Value>,
    /// Metadata keys in file order.
    pub key_order: Vec<String>,
    /// Tensor infos in file order, `file_index` 0, sizes checked to lie inside the data section.
    pub tensors: Vec<TensorInfo>,
    /// Byte offset of the data section from the start of the file.
    pub data_offset: u64,
    /// Size in bytes of the data section (the bytes from `data_offset` to the end of the input).
    pub data_len: u64,
}

/// Parses a GGUF file held in memory. Errors name the file as `<memory>`.
///
/// # Errors
/// [`GgufError::Format`] naming the field and byte offset when the bytes are not a valid GGUF v2
/// or v3 file.
pub fn parse(bytes: &[u8]) -> Result<Parsed, GgufError> {
    parse_named(bytes, "<memory>")
}

/// Parses a GGUF file held in memory; `path` is only used in error messages.
///
/// # Errors
/// As [`parse`].
pub fn parse_named(bytes: &[u8], path: &str) -> Result<Parsed, GgufError> {
    Reader {
        buf: bytes,
        pos: 0,
        path,
        values: 0,
    }
    .parse()
}

/// Context for an error message, formatted only when an error happens.
type Ctx<'c> = &'c dyn Fn() -> String;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a str,
    /// Metadata values read so far, array elements included.
    values: u64,
}

impl<'a> Reader<'a> {
    fn err(&self, offset: usize, what: String) -> GgufError {
        GgufError::Format {
            path: self.path.to_string(),
            offset: offset as u64,
            what,
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, ctx: Ctx, field: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(self.err(
                self.pos,
                format!(
                    "{}: {field} needs {n} bytes but only {} remain",
                    ctx(),
                    self.remaining()
                ),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, ctx: Ctx, field: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N, ctx, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, ctx: Ctx, field: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(ctx, field)?))
    }

    fn u64(&mut self, ctx: Ctx, field: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(ctx, field)?))
    }

    /// Checks that `count` items of at least `min_bytes` each can fit in the bytes that remain,
    /// and returns the count as usize (safe to pass to `Vec::with_capacity`).
    fn check_count(
        &self,
        count: u64,
        min_bytes: usize,
        at: usize,
        ctx: Ctx,
        field: &str,
    ) -> Result<usize, GgufError> {
        let need = count.checked_mul(min_bytes as u64);
        match need {
            Some(need) if need <= self.remaining() as u64 => Ok(count as usize),
            _ => Err(self.err(
                at,
                format!(
                    "{}: {field} {count} needs at least {min_bytes} bytes each, more than the {} bytes remaining",
                    ctx(),
                    self.remaining()
                ),
            )),
        }
    }

    fn string(&mut self, ctx: Ctx, field: &str) -> Result<String, GgufError> {
        let at = self.pos;
        let len = self.u64(ctx, "string length")?;
        if len > self.remaining() as u64 {
            return Err(self.err(
                at,
                format!(
                    "{}: {field} length {len} exceeds the {} bytes remaining",
                    ctx(),
                    self.remaining()
                ),
            ));
        }
        let bytes = self.take(len as usize, ctx, field)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(self.err(
                at + 8 + e.valid_up_to(),
                format!(
                    "{}: {field} is not valid UTF-8 (at byte {} of {len})",
                    ctx(),
                    e.valid_up_to()
                ),
            )),
        }
    }

    fn value(&mut self, id: u32, depth: u32, ctx: Ctx) -> Result<Value, GgufError> {
        let at = self.pos;
        Ok(match id {
            type_id::U8 => Value::U8(self.array::<1>(ctx, "u8 value")?[0]),
            type_id::I8 => Value::I8(i8::from_le_bytes(self.array(ctx, "i8 value")?)),
            type_id::U16 => Value::U16(u16::from_le_bytes(self.array(ctx, "u16 value")?)),
            type_id::I16 => Value::I16(i16::from_le_bytes(self.array(ctx, "i16 value")?)),
            type_id::U32 => Value::U32(self.u32(ctx, "u32 value")?),
            type_id::I32 => Value::I32(i32::from_le_bytes(self.array(ctx, "i32 value")?)),
            type_id::F32 => Value::F32(f32::from_le_bytes(self.array(ctx, "f32 value")?)),
            type_id::BOOL => match self.array::<1>(ctx, "bool value")?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(
                        self.err(at, format!("{}: bool value {b} is neither 0 nor 1", ctx()))
                    )
                }
            },
            type_id::STRING => Value::String(self.string(ctx, "string")?),
            type_id::ARRAY => self.array_value(depth + 1, ctx)?,
            type_id::U64 => Value::U64(self.u64(ctx, "u64 value")?),
            type_id::I64 => Value::I64(i64::from_le_bytes(self.array(ctx, "i64 value")?)),
            type_id::F64 => Value::F64(f64::from_le_bytes(self.array(ctx, "f64 value")?)),
            _ => {
                return Err(self.err(
                    at,
                    format!("{}: value type id {id} is unknown (0..=12)", ctx()),
                ))
            }
        })
    }

    fn array_value(&mut self, depth: u32, ctx: Ctx) -> Result<Value, GgufError> {
        let at = self.pos;
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.err(
                at,
                format!("{}: arrays nest deeper than {MAX_ARRAY_DEPTH}", ctx()),
            ));
        }
        let elem = self.u32(ctx, "array element type")?;
        let Some(min) = min_value_bytes(elem) else {
            return Err(self.err(
                at,
                format!(
                    "{}: array element type id {elem} is unknown (0..=12)",
                    ctx()
                ),
            ));
        };
        let count_at = self.pos;
        let count = self.u64(ctx, "array count")?;
        let n = self.check_count(count, min, count_at, ctx, "array count")?;
        self.values += count;
        if self.values > MAX_METADATA_VALUES {
            return Err(self.err(
                count_at,
                format!(
                    "{}: array count {count} takes the metadata past {MAX_METADATA_VALUES} values (the limit)",
                    ctx()
                ),
            ));
        }
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(elem, depth, ctx)?);
        }
        Ok(Value::Array(items))
    }

    fn parse(mut self) -> Result<Parsed, GgufError> {
        let header = || "header".to_string();
        let magic: [u8; 4] = self.array(&header, "magic")?;
        if magic != GGUF_MAGIC {
            return Err(self.err(
                0,
                format!("magic {magic:02x?} is not \"GGUF\"; not a GGUF file"),
            ));
        }
        let version = self.u32(&header, "version")?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(self.err(
                    4,
                    "GGUF version 1 is not supported (32-bit counts; re-convert the model with a current llama.cpp)"
                        .into(),
                ))
            }
            v => return Err(self.err(4, format!("GGUF version {v} is not supported (2 or 3)"))),
        }
        let at = self.pos;
        let tensor_count = self.u64(&header, "tensor_count")?;
        // A tensor info takes at least a name length, n_dims, type and offset: 24 bytes.
        let tensor_count = self.check_count(tensor_count, 24, at, &header, "tensor_count")?;
        let at = self.pos;
        let kv_count = self.u64(&header, "kv_count")?;
        // A key/value pair takes at least a key length, a type id and a one-byte value: 13 bytes.
        let kv_count = self.check_count(kv_count, 13, at, &header, "kv_count")?;

        let mut metadata = BTreeMap::new();
        let mut key_order = Vec::with_capacity(kv_count);
        for i in 0..kv_count {
            let key_at = self.pos;
            let key = self.string(&|| format!("metadata key {i}"), "key")?;
            let ctx = || format!("metadata key {i} ('{key}')");
            let id = self.u32(&ctx, "value type")?;
            let value = self.value(id, 0, &ctx)?;
            if metadata.contains_key(&key) {
                return Err(self.err(key_at, format!("{}: duplicate key", ctx())));
            }
            key_order.push(key.clone());
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(v) => {
                return Err(self.err(
                    0,
                    format!("metadata 'general.alignment' = {v:?} is not a non-zero power of two of type u32"),
                ))
            }
        };

        let mut tensors = Vec::with_capacity(tensor_count);
        let mut offset_positions = Vec::with_capacity(tensor_count);
        let mut names = std::collections::HashSet::with_capacity(tensor_count);
        for i in 0..tensor_count {
            let info_at = self.pos;
            let name = self.string(&|| format!("tensor info {i}"), "name")?;
            let ctx = || format!("tensor info {i} ('{name}')");
            let at = self.pos;
            let n_dims = self.u32(&ctx, "n_dims")?;
            if n_dims > MAX_DIMS {
                return Err(self.err(at, format!("{}: n_dims {n_dims} exceeds {MAX_DIMS}", ctx())));
            }
            let mut shape = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                let at = self.pos;
                let dim = self.u64(&ctx, "dims")?;
                if dim > i64::MAX as u64 {
                    return Err(
                        self.err(at, format!("{}: dims[{d}] = {dim} exceeds i64::MAX", ctx()))
                    );
                }
                shape.push(dim);
            }
            let at = self.pos;
            let type_id = self.u32(&ctx, "type")?;
            let Some(ggml_type) = GgmlType::from_id(type_id) else {
                return Err(self.err(at, format!("{}: ggml type id {type_id} is unknown", ctx())));
            };
            let n_bytes = ggml_type
                .checked_tensor_bytes(&shape)
                .map_err(|e| self.err(info_at, format!("{}: {e}", ctx())))?;
            let at = self.pos;
            let offset = self.u64(&ctx, "offset")?;
            if offset % alignment != 0 {
                return Err(self.err(
                    at,
                    format!(
                        "{}: offset {offset} is not a multiple of the alignment {alignment}",
                        ctx()
                    ),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(self.err(info_at, format!("{}: duplicate tensor name", ctx())));
            }
            offset_positions.push(at);
            tensors.push(TensorInfo {
                name,
                shape,
                ggml_type,
                file_index: 0,
                offset,
                n_bytes,
            });
        }

        let end_of_infos = self.pos as u64;
        let data_offset = end_of_infos
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| self.err(self.pos, "data section offset overflows u64".into()))?;
        let file_len = self.buf.len() as u64;
        let data_len = file_len.saturating_sub(data_offset);
        if data_offset > file_len && !tensors.is_empty() {
            return Err(self.err(
                self.pos,
                format!(
                    "data section starts at {data_offset} (infos end at {end_of_infos}, alignment {alignment}) \
                     past the end of the file ({file_len} bytes)"
                ),
            ));
        }
        for (i, (t, &at)) in tensors.iter().zip(&offset_positions).enumerate() {
            match t.offset.checked_add(t.n_bytes) {
                Some(end) if end <= data_len => {}
                _ => {
                    return Err(self.err(
                        at,
                        format!(
                            "tensor info {i} ('{}'): data at offset {} + {} bytes lies outside the {data_len}-byte \
                             data section (the file is truncated or the offset is corrupt)",
                            t.name, t.offset, t.n_bytes
                        ),
                    ))
                }
            }
        }
        check_no_overlap(&tensors).map_err(|what| self.err(data_offset as usize, what))?;

        Ok(Parsed {
            version,
            alignment,
            metadata,
            key_order,
            tensors,
            data_offset,
            data_len,
        })
    }
}

/// Tensors must not share bytes (zero-sized tensors share nothing).
fn check_no_overlap(tensors: &[TensorInfo]) -> Result<(), String> {
    let mut order: Vec<usize> = (0..tensors.len())
        .filter(|&i| tensors[i].n_bytes > 0)
        .collect();
    order.sort_by_key(|&i| tensors[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        // Both ends were checked to lie inside the data section, so this cannot overflow.
        if a.offset + a.n_bytes > b.offset {
            return Err(format!(
                "tensor '{}' (offset {}, {} bytes) overlaps tensor '{}' (offset {})",
                a.name, a.offset, a.n_bytes, b.name, b.offset
            ));
        }
    }
    Ok(())
}

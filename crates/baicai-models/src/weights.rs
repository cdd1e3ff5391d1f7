//! Weight handles: views into memory-mapped files (GGUF or safetensors), checked at load, under
//! one canonical naming (llama.cpp's GGUF names; safetensors names are mapped onto it in
//! [`crate::hf`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use baicai_gguf::{GgmlType, Gguf, TensorInfo};
use baicai_kernels::kernel::PACK_ROWS;
use baicai_kernels::quant::packed;
use baicai_kernels::{DType, Weight};
use rayon::prelude::*;

use crate::error::ModelError;

/// Maps a GGUF tensor type onto a kernel storage type.
pub fn dtype_of(t: GgmlType) -> Option<DType> {
    Some(match t {
        GgmlType::F32 => DType::F32,
        GgmlType::F16 => DType::F16,
        GgmlType::BF16 => DType::BF16,
        GgmlType::Q4_0 => DType::Q4_0,
        GgmlType::Q4_1 => DType::Q4_1,
        GgmlType::Q5_0 => DType::Q5_0,
        GgmlType::Q5_1 => DType::Q5_1,
        GgmlType::Q8_0 => DType::Q8_0,
        GgmlType::Q2_K => DType::Q2_K,
        GgmlType::Q3_K => DType::Q3_K,
        GgmlType::Q4_K => DType::Q4_K,
        GgmlType::Q5_K => DType::Q5_K,
        GgmlType::Q6_K => DType::Q6_K,
        GgmlType::IQ4_NL => DType::IQ4_NL,
        GgmlType::IQ4_XS => DType::IQ4_XS,
        GgmlType::MXFP4 => DType::MXFP4,
        _ => return None,
    })
}

/// Tensor types models can hold, for error messages.
pub const SUPPORTED_TYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4";

/// What a tensor's bytes live in.
#[derive(Clone)]
pub enum Backing {
    /// A tensor of a GGUF file (its memory map).
    Gguf(Arc<Gguf>, TensorInfo),
    /// A whole memory-mapped file (a safetensors shard).
    Mapped(Arc<memmap2::Mmap>),
    /// Bytes made at load (a format converted to a supported type, a transposed matrix).
    Owned(Arc<Vec<u8>>),
}

/// A byte range of a [`Backing`].
#[derive(Clone)]
pub struct Bytes {
    backing: Backing,
    start: usize,
    len: usize,
}

impl Bytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        let base: &[u8] = match &self.backing {
            Backing::Gguf(g, info) => g.tensor_data(info),
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        };
        &base[self.start..self.start + self.len]
    }

    /// Whether the bytes were made at load rather than mapped from the file.
    pub fn is_owned(&self) -> bool {
        matches!(self.backing, Backing::Owned(_))
    }

    /// Bytes made at load.
    pub fn owned(v: Vec<u8>) -> Bytes {
        let len = v.len();
        Bytes {
            backing: Backing::Owned(Arc::new(v)),
            start: 0,
            len,
        }
    }

    /// A range of a mapped file.
    pub fn mapped(m: Arc<memmap2::Mmap>, start: usize, len: usize) -> Bytes {
        Bytes {
            backing: Backing::Mapped(m),
            start,
            len,
        }
    }
}

/// One stored tensor: shape in ggml order (`shape[0]` contiguous), storage type, bytes.
#[derive(Clone)]
pub struct TensorEntry {
    pub shape: Vec<u64>,
    pub dtype: DType,
    pub bytes: Bytes,
}

/// A weight matrix `[rows, cols]`, ready for [`WeightStore::matmul`].
#[derive(Clone)]
pub struct Linear {
    /// Canonical name, for messages and traces.
    pub name: String,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    bytes: Bytes,
    /// Whether `bytes` hold the rows packed in groups of 8 (`baicai_kernels::quant::packed`).
    packed: bool,
}

impl std::fmt::Debug for Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Linear({} {} [{}, {}])",
            self.name,
            self.dtype.name(),
            self.rows,
            self.cols
        )
    }
}

impl Linear {
    /// Rows `r0..r0 + n` as their own matrix (one expert of a stacked tensor, one head).
    ///
    /// # Panics
    /// If the rows are not all in the matrix (a bug of the caller: loaders slice by the shapes
    /// they checked).
    pub fn rows_slice(&self, r0: usize, n: usize) -> Linear {
        let rb = self.dtype.row_bytes(self.cols).expect("checked at load");
        assert!(
            r0 + n <= self.rows,
            "rows {r0}..{} of {} [{} rows]",
            r0 + n,
            self.name,
            self.rows
        );
        if self.packed && !(r0.is_multiple_of(PACK_ROWS) && n.is_multiple_of(PACK_ROWS)) {
            // A slice that cuts a packed group: its rows in the plain layout, copied.
            let data = self.bytes.as_slice();
            let mut v = Vec::with_capacity(n * rb);
            for r in r0..r0 + n {
                packed::unpack_row(self.dtype, data, self.cols, r, &mut v);
            }
            return Linear {
                name: self.name.clone(),
                dtype: self.dtype,
                rows: n,
                cols: self.cols,
                bytes: Bytes::owned(v),
                packed: false,
            };
        }
        let mut bytes = self.bytes.clone();
        bytes.start += r0 * rb;
        bytes.len = n * rb;
        Linear {
            name: self.name.clone(),
            dtype: self.dtype,
            rows: n,
            cols: self.cols,
            bytes,
            packed: self.packed,
        }
    }

    /// The kernel view.
    pub fn weight(&self) -> Weight<'_> {
        Weight {
            dtype: self.dtype,
            data: self.bytes.as_slice(),
            rows: self.rows,
            cols: self.cols,
            packed: self.packed,
        }
    }

    /// Whether the rows are packed in groups of 8 for the packed kernels.
    pub fn is_packed(&self) -> bool {
        self.packed
    }

    /// Row `r` decoded into `out` (`[cols]`).
    fn decode_row(&self, r: usize, out: &mut [f32]) {
        let row_bytes = self.dtype.row_bytes(self.cols).expect("checked at load");
        let data = self.bytes.as_slice();
        if self.packed {
            let mut v = Vec::with_capacity(row_bytes);
            packed::unpack_row(self.dtype, data, self.cols, r, &mut v);
            baicai_kernels::dequantize_row(self.dtype, &v, out);
        } else {
            baicai_kernels::dequantize_row(self.dtype, &data[r * row_bytes..][..row_bytes], out);
        }
    }

    /// Bytes of the matrix.
    pub fn n_bytes(&self) -> u64 {
        self.bytes.len as u64
    }

    /// Whether it was made at load (not a view of the file).
    pub fn is_owned(&self) -> bool {
        self.bytes.is_owned()
    }
}

/// The `rows` × `cols` matrix of `e` packed into memory of its own, a slice of groups at a time,
/// each slice's original pages released once packed (mapped from the file or read into memory,
/// not bytes made at load), so the copy replaces the original rather than doubling it even
/// while it is made. `None` where the format or the shape has no packed layout.
fn pack_released(e: &TensorEntry, rows: usize, cols: usize) -> Option<Vec<u8>> {
    /// Bytes packed between releases.
    const SLICE: usize = 2 << 20;
    let row_bytes = e.dtype.row_bytes(cols)?;
    let src = e.bytes.as_slice().get(..rows.checked_mul(row_bytes)?)?;
    let group = PACK_ROWS * row_bytes;
    if !packed::packable(e.dtype) || !rows.is_multiple_of(PACK_ROWS) {
        return None;
    }
    if group == 0 || !src.len().is_multiple_of(group) {
        return None;
    }
    // Zeroed memory is not touched until written, so it grows as the slices are packed. The
    // slices go to all threads (a 9.6 GiB DeepSeek-V2-Lite file: 26 s of packing on one).
    let mut out = vec![0u8; src.len()];
    let per_slice = (SLICE / group).max(1) * group;
    let release = !e.bytes.is_owned();
    src.par_chunks(per_slice)
        .zip(out.par_chunks_mut(per_slice))
        .for_each(|(s, d)| {
            // Whole groups of the packable format, as long as each other: checked above.
            packed::pack_into(e.dtype, s, cols, d).expect("whole groups");
            if release {
                // SAFETY: every later request of this tensor is served from the packed copy
                // (see `make_linear`), so these original bytes are not read again.
                unsafe { baicai_gguf::dont_need(s) };
            }
        });
    Some(out)
}

/// Tensors by canonical name, checked for presence, shape and type when taken.
pub struct WeightStore {
    tensors: HashMap<String, TensorEntry>,
    /// GGUF tensors of types without kernels: name → type name.
    unsupported: HashMap<String, String>,
    /// Whether matrices of formats with a packed layout are packed as they are taken.
    pack: bool,
    /// How each tensor of a packable format was served so far, by name: a tensor taken twice
    /// (tied embeddings) is packed once, and one served in its own layout is never released.
    packed: Mutex<HashMap<String, Packing>>,
}

/// How a tensor of a packable format was served (see [`WeightStore::set_packing`]).
enum Packing {
    /// In the file's layout: its bytes are in use.
    Plain,
    /// Packed as `rows` × `cols`; the file's bytes were released.
    Packed {
        cols: usize,
        rows: usize,
        bytes: Bytes,
    },
}

impl WeightStore {
    /// The tensors of a GGUF file.
    pub fn new(gguf: Arc<Gguf>) -> WeightStore {
        let mut tensors = HashMap::new();
        let mut unsupported = HashMap::new();
        for info in gguf.tensors() {
            // Integer tables (DeepSeek-V4's `ffn_gate_tid2eid`, I32) are held as f32; the model
            // checks every value.
            if info.ggml_type == GgmlType::I32 {
                let vals: Vec<u8> = gguf
                    .tensor_data(info)
                    .chunks_exact(4)
                    .flat_map(|c| {
                        (i32::from_le_bytes(c.try_into().expect("4")) as f32).to_le_bytes()
                    })
                    .collect();
                let entry = TensorEntry {
                    shape: info.shape.clone(),
                    dtype: DType::F32,
                    bytes: Bytes::owned(vals),
                };
                tensors.insert(info.name.clone(), entry);
                continue;
            }
            // Types without kernels are only named when a model asks for them (see `entry`).
            let Some(dtype) = dtype_of(info.ggml_type) else {
                unsupported.insert(info.name.clone(), info.ggml_type.name().to_string());
                continue;
            };
            let len = info.n_bytes as usize;
            let bytes = Bytes {
                backing: Backing::Gguf(gguf.clone(), info.clone()),
                start: 0,
                len,
            };
            tensors.insert(
                info.name.clone(),
                TensorEntry {
                    shape: info.shape.clone(),
                    dtype,
                    bytes,
                },
            );
        }
        WeightStore {
            tensors,
            unsupported,
            pack: false,
            packed: Mutex::default(),
        }
    }

    /// Tensors from another source (safetensors), already under canonical names.
    pub fn from_entries(tensors: HashMap<String, TensorEntry>) -> WeightStore {
        WeightStore {
            tensors,
            unsupported: HashMap::new(),
            pack: false,
            packed: Mutex::default(),
        }
    }

    /// Packs, from now on, the matrices this store hands out whose format has a packed layout
    /// and whose row count (per matrix of a stack) is a multiple of 8: once, at load, into memory
    /// of their own (as many bytes as the file's), after which the packed kernels serve every
    /// matmul of them. Mapped file pages they came from are no longer read.
    pub fn set_packing(&mut self, on: bool) {
        self.pack = on;
    }

    /// The tensors under their canonical names, for a caller that re-encodes some (a test that
    /// dequantizes a loaded checkpoint's MXFP4 experts) and builds a store again with
    /// [`WeightStore::from_entries`]. GGUF tensors of types without kernels are left out.
    pub fn into_entries(self) -> HashMap<String, TensorEntry> {
        self.tensors
    }

    fn entry(&self, name: &str) -> Result<&TensorEntry, ModelError> {
        if let Some(ty) = self.unsupported.get(name) {
            return Err(ModelError::UnsupportedType {
                name: name.into(),
                ty: ty.clone(),
                supported: SUPPORTED_TYPES.into(),
            });
        }
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
    }

    /// Whether the file has a tensor of this name.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.unsupported.contains_key(name)
    }

    fn check_shape(name: &str, found: &[u64], expected: Vec<u64>) -> Result<(), ModelError> {
        if found != expected.as_slice() {
            return Err(ModelError::BadShape {
                name: name.into(),
                found: found.to_vec(),
                expected,
            });
        }
        Ok(())
    }

    /// The matrix `rows` × `cols` of entry `e`; packed where the store packs and `group_rows`
    /// (the rows of each matrix a caller will slice out: all of them, or one expert's) allow.
    fn make_linear(
        &self,
        name: &str,
        e: &TensorEntry,
        rows: usize,
        cols: usize,
        group_rows: usize,
    ) -> Result<Linear, ModelError> {
        if e.dtype.row_bytes(cols).is_none() {
            return Err(ModelError::Config(format!(
                "tensor '{name}': row length {cols} is not a multiple of the {} block length {}",
                e.dtype.name(),
                e.dtype.block_len()
            )));
        }
        let mut lin = Linear {
            name: name.into(),
            dtype: e.dtype,
            rows,
            cols,
            bytes: e.bytes.clone(),
            packed: false,
        };
        // Bytes made at load (a checkpoint's converted experts) stay as they are: the store
        // keeps them for its entry, so a packed copy would double them rather than replace them.
        if !self.pack || e.bytes.is_owned() || !baicai_kernels::dispatch::pack_at_load(e.dtype) {
            return Ok(lin);
        }
        let aligned = group_rows.is_multiple_of(PACK_ROWS) && rows.is_multiple_of(PACK_ROWS);
        let mut seen = self.packed.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = match seen.get(name) {
            // Served in its own layout before: it stays so (its bytes are still in use).
            Some(Packing::Plain) => return Ok(lin),
            Some(Packing::Packed {
                cols: c,
                rows: r,
                bytes,
            }) => {
                if *c == cols && aligned {
                    bytes.clone()
                } else {
                    // The original bytes were released: a request that cannot use these groups
                    // gets the tensor unpacked from the packed copy.
                    let mut v = Vec::with_capacity(bytes.len);
                    for i in 0..*r {
                        packed::unpack_row(e.dtype, bytes.as_slice(), *c, i, &mut v);
                    }
                    lin.bytes = Bytes::owned(v);
                    return Ok(lin);
                }
            }
            None => {
                let v = if aligned {
                    pack_released(e, rows, cols)
                } else {
                    None
                };
                let Some(v) = v else {
                    seen.insert(name.to_string(), Packing::Plain);
                    return Ok(lin);
                };
                let b = Bytes::owned(v);
                let state = Packing::Packed {
                    cols,
                    rows,
                    bytes: b.clone(),
                };
                seen.insert(name.to_string(), state);
                b
            }
        };
        lin.bytes = bytes;
        lin.packed = true;
        Ok(lin)
    }

    /// A matrix of `rows` outputs by `cols` inputs (GGUF shape `[cols, rows]`).
    ///
    /// # Errors
    /// Missing tensor, other shape, or unsupported type.
    pub fn linear(&self, name: &str, rows: usize, cols: usize) -> Result<Linear, ModelError> {
        let e = self.entry(name)?;
        Self::check_shape(name, &e.shape, vec![cols as u64, rows as u64])?;
        self.make_linear(name, e, rows, cols, rows)
    }

    /// `n` stacked matrices of `rows` × `cols` (GGUF shape `[cols, rows, n]`, e.g. the routed
    /// experts of a MoE layer), one [`Linear`] each.
    ///
    /// # Errors
    /// Missing tensor, other shape, or unsupported type.
    pub fn stacked(
        &self,
        name: &str,
        n: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<Linear>, ModelError> {
        let e = self.entry(name)?;
        Self::check_shape(name, &e.shape, vec![cols as u64, rows as u64, n as u64])?;
        // The shape matched a tensor of the file, whose size the container checked.
        let all_rows = rows.checked_mul(n).ok_or_else(|| {
            ModelError::Config(format!("tensor '{name}': {n} × {rows} rows overflow"))
        })?;
        let all = self.make_linear(name, e, all_rows, cols, rows)?;
        Ok((0..n).map(|i| all.rows_slice(i * rows, rows)).collect())
    }

    /// A vector of `n` values decoded to f32 (norm weights, biases).
    ///
    /// # Errors
    /// Missing tensor, other shape, or unsupported type.
    pub fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
        let e = self.entry(name)?;
        Self::check_shape(name, &e.shape, vec![n as u64])?;
        let lin = self.make_linear(name, e, 1, n, 1)?;
        let mut out = vec![0.0; n];
        self.row(&lin, 0, &mut out);
        Ok(out)
    }

    /// An optional vector: `None` when the tensor is absent.
    ///
    /// # Errors
    /// As [`WeightStore::vector`] when present.
    pub fn vector_opt(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>, ModelError> {
        if self.has(name) {
            self.vector(name, n).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The kernel view of a weight.
    pub fn weight<'a>(&self, lin: &'a Linear) -> Weight<'a> {
        lin.weight()
    }

    /// Decodes row `r` of a weight into `out` (`[cols]`): embedding lookup.
    pub fn row(&self, lin: &Linear, r: usize, out: &mut [f32]) {
        lin.decode_row(r, out);
    }

    /// `out[t, :] = W x[t, :]` for `n_tokens` rows of `x`.
    pub fn matmul(&self, lin: &Linear, x: &[f32], n_tokens: usize, out: &mut [f32]) {
        baicai_kernels::matmul(&lin.weight(), x, n_tokens, out);
    }

    /// Several matmuls of one input (q/k/v, gate/up) with one activation quantization and one
    /// parallel region; each output is bit-identical to [`WeightStore::matmul`]'s.
    pub fn matmul_many(
        &self,
        lins: &[&Linear],
        x: &[f32],
        n_tokens: usize,
        outs: &mut [&mut [f32]],
    ) {
        let ws: Vec<Weight<'_>> = lins.iter().map(|l| l.weight()).collect();
        baicai_kernels::matmul_many(&ws, x, n_tokens, outs);
    }

    /// `out[t, :] = W[r0..r0 + rows] x[t, :]`: a block of rows (one head of a per-head
    /// projection).
    pub fn matmul_rows(
        &self,
        lin: &Linear,
        r0: usize,
        rows: usize,
        x: &[f32],
        n_tokens: usize,
        out: &mut [f32],
    ) {
        self.matmul(&lin.rows_slice(r0, rows), x, n_tokens, out);
    }

    /// Bytes of a weight.
    pub fn bytes(&self, lin: &Linear) -> u64 {
        lin.n_bytes()
    }
}

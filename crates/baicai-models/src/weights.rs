//! Weight handles: views into the memory-mapped file, checked at load.

use std::sync::Arc;

use baicai_gguf::{GgmlType, Gguf, TensorInfo};
use baicai_kernels::{DType, Weight};

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
        _ => return None,
    })
}

/// Tensor types models can hold, for error messages.
pub const SUPPORTED_TYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS";

/// A weight matrix `[rows, cols]` in the file, ready for [`Linear::weight`].
#[derive(Debug, Clone)]
pub struct Linear {
    /// Canonical (GGUF) name, for messages and traces.
    pub name: String,
    info: TensorInfo,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
}

/// Loads tensors by name from a file, checking presence, shape and type.
pub struct WeightStore {
    gguf: Arc<Gguf>,
}

impl WeightStore {
    pub fn new(gguf: Arc<Gguf>) -> WeightStore {
        WeightStore { gguf }
    }

    /// The underlying file.
    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }

    fn info(&self, name: &str) -> Result<&TensorInfo, ModelError> {
        self.gguf.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))
    }

    /// Whether the file has a tensor of this name.
    pub fn has(&self, name: &str) -> bool {
        self.gguf.tensor(name).is_some()
    }

    /// A matrix of `rows` outputs by `cols` inputs (GGUF shape `[cols, rows]`).
    ///
    /// # Errors
    /// Missing tensor, other shape, or unsupported type.
    pub fn linear(&self, name: &str, rows: usize, cols: usize) -> Result<Linear, ModelError> {
        let info = self.info(name)?;
        let expected = vec![cols as u64, rows as u64];
        if info.shape != expected {
            return Err(ModelError::BadShape {
                name: name.into(),
                found: info.shape.clone(),
                expected,
            });
        }
        self.checked_linear(name, info.clone(), rows, cols)
    }

    fn checked_linear(
        &self,
        name: &str,
        info: TensorInfo,
        rows: usize,
        cols: usize,
    ) -> Result<Linear, ModelError> {
        let dtype = dtype_of(info.ggml_type).ok_or_else(|| ModelError::UnsupportedType {
            name: name.into(),
            ty: info.ggml_type.name().to_string(),
            supported: SUPPORTED_TYPES.into(),
        })?;
        if dtype.row_bytes(cols).is_none() {
            return Err(ModelError::Config(format!(
                "tensor '{name}': row length {cols} is not a multiple of the {} block length {}",
                dtype.name(),
                dtype.block_len()
            )));
        }
        Ok(Linear { name: name.into(), info, dtype, rows, cols })
    }

    /// `n` stacked matrices of `rows` × `cols` (GGUF shape `[cols, rows, n]`, e.g. the routed
    /// experts of a MoE layer), held as one [`Linear`] of `n * rows` rows.
    ///
    /// # Errors
    /// Missing tensor, other shape, or unsupported type.
    pub fn stacked(&self, name: &str, n: usize, rows: usize, cols: usize) -> Result<Linear, ModelError> {
        let info = self.info(name)?;
        let expected = vec![cols as u64, rows as u64, n as u64];
        if info.shape != expected {
            return Err(ModelError::BadShape { name: name.into(), found: info.shape.clone(), expected });
        }
        let mut flat = info.clone();
        flat.shape = vec![cols as u64, (rows * n) as u64];
        self.checked_linear(name, flat, rows * n, cols)
    }

    /// A vector of `n` values decoded to f32 (norm weights, biases).
    ///
    /// # Errors
    /// Missing tensor, other shape, or unsupported type.
    pub fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
        let info = self.info(name)?;
        if info.shape != [n as u64] {
            return Err(ModelError::BadShape {
                name: name.into(),
                found: info.shape.clone(),
                expected: vec![n as u64],
            });
        }
        let lin = Linear {
            name: name.into(),
            info: info.clone(),
            dtype: dtype_of(info.ggml_type).ok_or_else(|| ModelError::UnsupportedType {
                name: name.into(),
                ty: info.ggml_type.name().to_string(),
                supported: SUPPORTED_TYPES.into(),
            })?,
            rows: 1,
            cols: n,
        };
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
    pub fn weight(&self, lin: &Linear) -> Weight<'_> {
        Weight {
            dtype: lin.dtype,
            data: self.gguf.tensor_data(&lin.info),
            rows: lin.rows,
            cols: lin.cols,
        }
    }

    /// Decodes row `r` of a weight into `out` (`[cols]`): embedding lookup.
    pub fn row(&self, lin: &Linear, r: usize, out: &mut [f32]) {
        let row_bytes = lin.dtype.row_bytes(lin.cols).expect("checked at load");
        let data = self.gguf.tensor_data(&lin.info);
        baicai_kernels::dequantize_row(lin.dtype, &data[r * row_bytes..(r + 1) * row_bytes], out);
    }

    /// `out[t, :] = W x[t, :]` for `n_tokens` rows of `x`.
    pub fn matmul(&self, lin: &Linear, x: &[f32], n_tokens: usize, out: &mut [f32]) {
        baicai_kernels::matmul(&self.weight(lin), x, n_tokens, out);
    }

    /// `out[t, :] = W[r0..r0 + rows] x[t, :]`: a block of rows (one expert of a stacked tensor,
    /// one head of a per-head projection).
    pub fn matmul_rows(
        &self,
        lin: &Linear,
        r0: usize,
        rows: usize,
        x: &[f32],
        n_tokens: usize,
        out: &mut [f32],
    ) {
        let rb = lin.dtype.row_bytes(lin.cols).expect("checked at load");
        let data = self.gguf.tensor_data(&lin.info);
        let w = Weight { dtype: lin.dtype, data: &data[r0 * rb..(r0 + rows) * rb], rows, cols: lin.cols };
        baicai_kernels::matmul(&w, x, n_tokens, out);
    }

    /// Bytes of a tensor in the file.
    pub fn bytes(&self, lin: &Linear) -> u64 {
        lin.info.n_bytes
    }
}

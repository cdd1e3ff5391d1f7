//! Quantized checkpoint tensors, each a weight with a scale companion, turned at load into what
//! the kernels take:
//!
//! - FP8 E4M3 weights with 128×128 block scales → F32. DeepSeek-V3/R1 name the scales
//!   `….weight_scale_inv` and store them as F32; DeepSeek-V4 names them `….scale` and stores E8M0
//!   bytes (dtype `F8_E8M0`, or `U8`), as llama.cpp's converter reads them (`dequant_model` in
//!   `conversion/deepseek.py`: `2^(e - 127)` repeated over each tile).
//! - MXFP4 in the checkpoints' packed form (DeepSeek-V4's routed experts: `….weight` U8 or I8
//!   `[rows, cols/2]`, element `2i` in the low nibble of byte `i`, with `….scale` E8M0
//!   `[rows, cols/32]`) → GGUF MXFP4 blocks, bits moved and none changed, so the experts run on
//!   the MXFP4 kernels as from llama.cpp's GGUF (`_write_mxfp4_expert_tensor`).
//!
//! Every shape and scale count is checked against the weight's before a byte is read, with an
//! error naming the tensor.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use baicai_kernels::quant::fp8;
use baicai_kernels::quant::mxfp4::repack_mxfp4;
use memmap2::Mmap;

use super::err;
use super::safetensors::RawTensor;
use crate::error::ModelError;

/// FP8 tile edge, rows and columns (DeepSeek's `weight_block_size` [128, 128]).
const FP8_BLOCK: usize = 128;
/// Values per MXFP4 scale.
const MXFP4_GROUP: usize = 32;

/// A quantized weight and its scale tensor, with their bytes.
pub(super) struct Scaled<'a> {
    weight: &'a RawTensor,
    weight_bytes: &'a [u8],
    scale: &'a RawTensor,
    scale_bytes: &'a [u8],
}

impl<'a> Scaled<'a> {
    /// `weight` and `scale` with their bytes in the mapped shards.
    pub(super) fn new(weight: &'a RawTensor, scale: &'a RawTensor, maps: &'a [Arc<Mmap>]) -> Self {
        Scaled {
            weight,
            weight_bytes: &maps[weight.file][weight.start..weight.end],
            scale,
            scale_bytes: &maps[scale.file][scale.start..scale.end],
        }
    }
}

/// Scale names of FP8 weights: DeepSeek-V3's, then DeepSeek-V4's.
pub(super) const FP8_SCALES: &[&str] = &[".weight_scale_inv", ".scale"];
/// Scale name of packed MXFP4 weights.
pub(super) const MXFP4_SCALES: &[&str] = &[".scale"];

/// The scale tensor of quantized weight `w` (`….weight`): the first `…{suffix}` of `suffixes`
/// that the checkpoint holds.
///
/// # Errors
/// None is present, naming the weight and the names looked for.
pub(super) fn scale_of<'a>(
    dir: &Path,
    w: &RawTensor,
    suffixes: &[&str],
    by_name: &HashMap<String, &'a RawTensor>,
) -> Result<&'a RawTensor, ModelError> {
    let base = w.name.strip_suffix(".weight").unwrap_or(&w.name);
    let names: Vec<String> = suffixes.iter().map(|s| format!("{base}{s}")).collect();
    names
        .iter()
        .find_map(|n| by_name.get(n).copied())
        .ok_or_else(|| {
            err(
                dir,
                format!(
                    "tensor '{}' is {} but has no scales ('{}')",
                    w.name,
                    w.dtype,
                    names.join("' or '")
                ),
            )
        })
}

/// Whether a scale tensor's dtype is one E8M0 byte per scale.
fn is_e8m0(dtype: &str) -> bool {
    matches!(dtype, "F8_E8M0" | "U8")
}

/// A 2-D tensor's `[rows, cols]`, or an error naming it.
fn matrix(dir: &Path, t: &RawTensor, what: &str) -> Result<(usize, usize), ModelError> {
    match t.shape[..] {
        [r, c] => Ok((r as usize, c as usize)),
        _ => Err(err(
            dir,
            format!("{what} '{}' has shape {:?}, expected 2-D", t.name, t.shape),
        )),
    }
}

/// FP8 E4M3 `[rows, cols]` times its 128×128 block scales (F32, or E8M0 bytes), as F32
/// little-endian bytes.
///
/// # Errors
/// A weight that is not 2-D, scales of another dtype, or scales other than
/// `[ceil(rows/128), ceil(cols/128)]` (or that many in another shape), naming the tensor.
pub(super) fn fp8_to_f32(dir: &Path, q: &Scaled<'_>) -> Result<Vec<u8>, ModelError> {
    let (rows, cols) = matrix(dir, q.weight, "FP8 tensor")?;
    let grid = fp8::BlockGrid::square(rows, cols, FP8_BLOCK);
    let s = q.scale;
    let f32_scales: Vec<f32>;
    let (scales, count) = match s.dtype.as_str() {
        "F32" => {
            f32_scales = q
                .scale_bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            (fp8::BlockScales::F32(&f32_scales), f32_scales.len())
        }
        d if is_e8m0(d) => (fp8::BlockScales::E8M0(q.scale_bytes), q.scale_bytes.len()),
        other => {
            let want = "expected F32 or E8M0 (F8_E8M0, U8)";
            let what = format!("'{}' (scales of FP8 '{}')", s.name, q.weight.name);
            return Err(err(dir, format!("{what} has dtype {other}; {want}")));
        }
    };
    // The tile grid `[ceil(rows/128), ceil(cols/128)]`, as both releases store it; its size
    // alone where the scales come flat.
    let tiles = [rows.div_ceil(FP8_BLOCK) as u64, grid.scale_cols() as u64];
    if count != grid.scale_count() || (s.shape.len() == 2 && s.shape != tiles) {
        return Err(err(
            dir,
            format!(
                "'{}' holds {count} scales {:?}; FP8 '{}' [{rows}, {cols}] in {FP8_BLOCK}×{FP8_BLOCK} tiles needs {tiles:?}",
                s.name, s.shape, q.weight.name
            ),
        ));
    }
    let values = fp8::dequant_e4m3_block_scaled(q.weight_bytes, scales, grid);
    Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// Packed MXFP4 `[rows, cols/2]` with E8M0 scales `[rows, cols/32]` as GGUF MXFP4 blocks:
/// returns the ggml shape `[cols, rows]` and the blocks' bytes.
///
/// # Errors
/// A weight or scale that is not 2-D, a row length that is not whole groups of 32, scales of
/// another dtype or shape, naming the tensor.
pub(super) fn mxfp4_to_gguf(dir: &Path, q: &Scaled<'_>) -> Result<(Vec<u64>, Vec<u8>), ModelError> {
    let (rows, packed) = matrix(dir, q.weight, "packed MXFP4 tensor")?;
    let cols = 2 * packed;
    if cols % MXFP4_GROUP != 0 {
        return Err(err(
            dir,
            format!(
                "packed MXFP4 tensor '{}' [{rows}, {packed}]: {packed} bytes a row hold {cols} values, not whole groups of {MXFP4_GROUP}",
                q.weight.name
            ),
        ));
    }
    let s = q.scale;
    if !is_e8m0(&s.dtype) {
        return Err(err(
            dir,
            format!(
                "'{}' (scales of MXFP4 '{}') has dtype {}; expected E8M0 (F8_E8M0, U8)",
                s.name, q.weight.name, s.dtype
            ),
        ));
    }
    let want = [rows as u64, (cols / MXFP4_GROUP) as u64];
    if s.shape != want {
        return Err(err(
            dir,
            format!(
                "'{}' has shape {:?}; MXFP4 '{}' [{rows}, {packed}] ({cols} values a row) needs {want:?}, one scale per {MXFP4_GROUP}",
                s.name, s.shape, q.weight.name
            ),
        ));
    }
    let shape = vec![cols as u64, rows as u64];
    Ok((shape, repack_mxfp4(q.weight_bytes, q.scale_bytes)))
}

//! Safetensors shards: the header of each file (tensor names, dtypes, shapes, byte ranges,
//! checked against the file before anything is read), the shard list of a folder, and decoding
//! of the stored types that need it (F16/BF16 vectors, FP8 E4M3 with block scales).

use std::path::{Path, PathBuf};

use baicai_kernels::DType;
use serde_json::Value;

use super::err;
use crate::error::ModelError;

/// One tensor as a safetensors header describes it.
#[derive(Debug)]
pub(super) struct RawTensor {
    pub(super) name: String,
    pub(super) dtype: String,
    pub(super) shape: Vec<u64>,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) file: usize,
}

/// Parses a safetensors header: u64 little-endian length, then that many bytes of JSON.
pub(super) fn parse_header(
    path: &Path,
    bytes: &[u8],
    file: usize,
) -> Result<Vec<RawTensor>, ModelError> {
    if bytes.len() < 8 {
        return Err(err(
            path,
            "file shorter than the 8-byte safetensors header length",
        ));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n > (bytes.len() - 8) as u64 || n > 100 << 20 {
        return Err(err(
            path,
            format!("header length {n} exceeds the file ({} bytes)", bytes.len()),
        ));
    }
    let header: Value = serde_json::from_slice(&bytes[8..8 + n as usize])
        .map_err(|e| err(path, format!("header is not JSON: {e}")))?;
    let obj = header
        .as_object()
        .ok_or_else(|| err(path, "header is not a JSON object"))?;
    let data_start = 8 + n as usize;
    let data_len = bytes.len() - data_start;
    let mut out = Vec::new();
    for (name, t) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t["dtype"]
            .as_str()
            .ok_or_else(|| err(path, format!("tensor '{name}': no dtype")))?;
        let shape: Vec<u64> = t["shape"]
            .as_array()
            .ok_or_else(|| err(path, format!("tensor '{name}': no shape")))?
            .iter()
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| err(path, format!("tensor '{name}': bad shape")))
            })
            .collect::<Result<_, _>>()?;
        let offs = t["data_offsets"].as_array().filter(|a| a.len() == 2);
        let offs = offs.ok_or_else(|| err(path, format!("tensor '{name}': no data_offsets")))?;
        let (s, e) = (
            offs[0].as_u64().unwrap_or(u64::MAX),
            offs[1].as_u64().unwrap_or(u64::MAX),
        );
        if s > e || e > data_len as u64 {
            return Err(err(
                path,
                format!("tensor '{name}': data {s}..{e} outside the {data_len} data bytes"),
            ));
        }
        let elem = match dtype {
            "F32" => 4,
            "F16" | "BF16" => 2,
            "F8_E4M3" | "F8_E8M0" | "U8" | "I8" => 1,
            "I32" => 4,
            "I64" => 8,
            _ => 0,
        };
        let count = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        if elem > 0 && count.and_then(|c| c.checked_mul(elem)) != Some(e - s) {
            return Err(err(
                path,
                format!(
                    "tensor '{name}': {} bytes do not hold shape {shape:?} of {dtype}",
                    e - s
                ),
            ));
        }
        out.push(RawTensor {
            name: name.clone(),
            dtype: dtype.to_string(),
            shape,
            start: data_start + s as usize,
            end: data_start + e as usize,
            file,
        });
    }
    Ok(out)
}

/// The shard files of a folder.
pub(super) fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|e| {
        err(
            dir,
            format!("no model.safetensors and no readable index ({e})"),
        )
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| err(&index, e))?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| err(&index, "no weight_map"))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    files.sort();
    files.dedup();
    for f in &files {
        if f.contains('/') || f.contains("..") {
            return Err(err(
                &index,
                format!("shard name '{f}' is not a plain file name"),
            ));
        }
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Little-endian F32, F16 or BF16 values as f32.
pub(super) fn decode_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_safetensors_headers_are_rejected() {
        let p = Path::new("x.safetensors");
        assert!(parse_header(p, &[1, 2, 3], 0).is_err());
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(parse_header(p, &huge, 0)
            .unwrap_err()
            .to_string()
            .contains("header length"));
        let mk = |json: &str, data: usize| {
            let mut v = (json.len() as u64).to_le_bytes().to_vec();
            v.extend_from_slice(json.as_bytes());
            v.extend(std::iter::repeat_n(0u8, data));
            v
        };
        let out_of_range = mk(
            r#"{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}}"#,
            8,
        );
        assert!(parse_header(p, &out_of_range, 0)
            .unwrap_err()
            .to_string()
            .contains("outside"));
        let wrong_size = mk(
            r#"{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#,
            8,
        );
        assert!(parse_header(p, &wrong_size, 0)
            .unwrap_err()
            .to_string()
            .contains("do not hold"));
        let overflow = mk(
            r#"{"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 8]}}"#,
            8,
        );
        assert!(parse_header(p, &overflow, 0).is_err());
        let ok = mk(
            r#"{"__metadata__": {}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#,
            8,
        );
        assert_eq!(parse_header(p, &ok, 0).unwrap().len(), 1);
    }
}

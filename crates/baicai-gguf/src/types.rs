//! [`GgmlType`]: ids, names and block sizes as ggml defines them.

use crate::GgmlType;

/// One row of the type table: the type, its id in GGUF files, its llama.cpp name, and its block
/// (elements per block, bytes per block). Sizes match ggml's `ggml_type_traits` and gguf-py's
/// `GGML_QUANT_SIZES`.
struct TypeRow {
    ty: GgmlType,
    id: u32,
    name: &'static str,
    block_len: u64,
    block_bytes: u64,
}

const fn row(
    ty: GgmlType,
    id: u32,
    name: &'static str,
    block_len: u64,
    block_bytes: u64,
) -> TypeRow {
    TypeRow {
        ty,
        id,
        name,
        block_len,
        block_bytes,
    }
}

const TABLE: [TypeRow; 32] = [
    row(GgmlType::F32, 0, "F32", 1, 4),
    row(GgmlType::F16, 1, "F16", 1, 2),
    row(GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    row(GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    row(GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    row(GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    row(GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    row(GgmlType::Q8_1, 9, "Q8_1", 32, 40),
    row(GgmlType::Q2_K, 10, "Q2_K", 256, 84),
    row(GgmlType::Q3_K, 11, "Q3_K", 256, 110),
    row(GgmlType::Q4_K, 12, "Q4_K", 256, 144),
    row(GgmlType::Q5_K, 13, "Q5_K", 256, 176),
    row(GgmlType::Q6_K, 14, "Q6_K", 256, 210),
    row(GgmlType::Q8_K, 15, "Q8_K", 256, 292),
    row(GgmlType::IQ2_XXS, 16, "IQ2_XXS", 256, 66),
    row(GgmlType::IQ2_XS, 17, "IQ2_XS", 256, 74),
    row(GgmlType::IQ3_XXS, 18, "IQ3_XXS", 256, 98),
    row(GgmlType::IQ1_S, 19, "IQ1_S", 256, 50),
    row(GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 18),
    row(GgmlType::IQ3_S, 21, "IQ3_S", 256, 110),
    row(GgmlType::IQ2_S, 22, "IQ2_S", 256, 82),
    row(GgmlType::IQ4_XS, 23, "IQ4_XS", 256, 136),
    row(GgmlType::I8, 24, "I8", 1, 1),
    row(GgmlType::I16, 25, "I16", 1, 2),
    row(GgmlType::I32, 26, "I32", 1, 4),
    row(GgmlType::I64, 27, "I64", 1, 8),
    row(GgmlType::F64, 28, "F64", 1, 8),
    row(GgmlType::IQ1_M, 29, "IQ1_M", 256, 56),
    row(GgmlType::BF16, 30, "BF16", 1, 2),
    row(GgmlType::TQ1_0, 34, "TQ1_0", 256, 54),
    row(GgmlType::TQ2_0, 35, "TQ2_0", 256, 66),
    row(GgmlType::MXFP4, 39, "MXFP4", 32, 17),
];

impl GgmlType {
    /// Every type this crate knows, in id order.
    pub const ALL: [GgmlType; 32] = {
        let mut all = [GgmlType::F32; 32];
        let mut i = 0;
        while i < TABLE.len() {
            all[i] = TABLE[i].ty;
            i += 1;
        }
        all
    };

    fn row(self) -> &'static TypeRow {
        // The table lists every variant exactly once (checked by a unit test).
        TABLE.iter().find(|r| r.ty == self).unwrap_or(&TABLE[0])
    }

    /// The type with GGUF/ggml type id `id`; `None` for ids this crate does not know (including
    /// the removed Q4_2/Q4_3 ids 4 and 5 and the repacked types 31–33).
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TABLE.iter().find(|r| r.id == id).map(|r| r.ty)
    }

    /// The type id as stored in GGUF tensor infos.
    pub fn id(self) -> u32 {
        self.row().id
    }

    /// The name as llama.cpp spells it, e.g. `"Q4_K"`.
    pub fn name(self) -> &'static str {
        self.row().name
    }

    /// The type whose llama.cpp name is `name` (exact spelling, e.g. `"Q4_K"`).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        TABLE.iter().find(|r| r.name == name).map(|r| r.ty)
    }

    /// Elements per block (1 for plain types like F32).
    pub fn block_len(self) -> u64 {
        self.row().block_len
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        self.row().block_bytes
    }

    /// Whether this is a block-quantized type (block length above 1).
    pub fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// Bytes of a tensor of this type with `shape` (ggml order), or `None` when `shape[0]` is not
    /// a multiple of the block length or the size overflows `u64`.
    pub fn tensor_bytes(self, shape: &[u64]) -> Option<u64> {
        self.checked_tensor_bytes(shape).ok()
    }

    /// Like [`GgmlType::tensor_bytes`], with a message saying what is wrong.
    pub(crate) fn checked_tensor_bytes(self, shape: &[u64]) -> Result<u64, String> {
        let ne0 = shape.first().copied().unwrap_or(1);
        if ne0 % self.block_len() != 0 {
            return Err(format!(
                "dims[0] = {ne0} is not a multiple of the {} block length {}",
                self.name(),
                self.block_len()
            ));
        }
        let mut n: u64 = 1;
        for &d in shape {
            n = n
                .checked_mul(d)
                .ok_or_else(|| format!("element count of shape {shape:?} overflows u64"))?;
        }
        (n / self.block_len())
            .checked_mul(self.block_bytes())
            .ok_or_else(|| {
                format!(
                    "byte size of shape {shape:?} as {} overflows u64",
                    self.name()
                )
            })
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_every_variant_once_with_unique_ids() {
        for (i, a) in TABLE.iter().enumerate() {
            for b in &TABLE[i + 1..] {
                assert_ne!(a.ty, b.ty);
                assert_ne!(a.id, b.id);
                assert_ne!(a.name, b.name);
            }
            assert_eq!(GgmlType::from_id(a.id), Some(a.ty));
            assert_eq!(a.ty.id(), a.id);
            assert_eq!(GgmlType::from_name(a.name), Some(a.ty));
            assert_eq!(format!("{:?}", a.ty), a.name);
        }
        assert_eq!(GgmlType::ALL.len(), TABLE.len());
    }

    #[test]
    fn block_sizes_match_ggml() {
        let cases = [
            (GgmlType::Q4_K, 256, 144),
            (GgmlType::Q6_K, 256, 210),
            (GgmlType::Q5_0, 32, 22),
            (GgmlType::Q8_0, 32, 34),
            (GgmlType::IQ4_XS, 256, 136),
            (GgmlType::IQ2_XXS, 256, 66),
            (GgmlType::IQ1_M, 256, 56),
            (GgmlType::MXFP4, 32, 17),
            (GgmlType::BF16, 1, 2),
        ];
        for (t, len, bytes) in cases {
            assert_eq!((t.block_len(), t.block_bytes()), (len, bytes), "{t}");
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::from_id(40), None);
    }

    #[test]
    fn tensor_bytes_checks_blocks_and_overflow() {
        assert_eq!(
            GgmlType::Q8_0.tensor_bytes(&[896, 151936]),
            Some(896 / 32 * 34 * 151936)
        );
        assert_eq!(GgmlType::Q4_K.tensor_bytes(&[100, 2]), None);
        assert_eq!(GgmlType::F32.tensor_bytes(&[u64::MAX, 2]), None);
        assert_eq!(GgmlType::F32.tensor_bytes(&[u64::MAX / 2]), None);
        assert_eq!(GgmlType::F32.tensor_bytes(&[]), Some(4));
    }
}

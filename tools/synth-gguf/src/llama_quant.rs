//! The per-tensor type choices of llama.cpp's `llama-quantize … Q4_K_M` (`src/llama-quant.cpp`),
//! as far as the models written here need them.

use baicai_gguf::GgmlType;

/// `general.file_type` of `LLAMA_FTYPE_MOSTLY_Q4_K_M`.
pub const FTYPE_MOSTLY_Q4_K_M: u32 = 15;

/// llama-quantize's `use_more_bits`: the first and last eighth of the layers and every third
/// layer between get more bits.
pub fn use_more_bits(i_layer: u64, n_layer: u64) -> bool {
    let (i, n) = (i_layer as i64, n_layer as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// llama-quantize's `tensor_type_fallback`: a 256-block type whose rows do not fit falls back to
/// a 32-block type of similar size.
///
/// # Panics
/// When `ty` does not fit `row` and has no 32-block fallback here.
pub fn fit_rows(ty: GgmlType, row: u64) -> GgmlType {
    if row.is_multiple_of(ty.block_len()) {
        return ty;
    }
    match ty {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => panic!("no 32-block fallback for {}", other.name()),
    }
}

/// Q4_K_M's choice for `ffn_down*` in layer `il` of `n_layer`: Q6_K where `use_more_bits`, else
/// Q4_K (before [`fit_rows`]).
pub fn ffn_down_type(il: u64, n_layer: u64) -> GgmlType {
    if use_more_bits(il, n_layer) {
        GgmlType::Q6_K
    } else {
        GgmlType::Q4_K
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_more_bits_marks_13_of_27_layers() {
        let layers: Vec<u64> = (0..27).filter(|&i| use_more_bits(i, 27)).collect();
        assert_eq!(layers, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26]);
    }

    #[test]
    fn use_more_bits_on_two_layers_marks_only_the_last() {
        // n / 8 = 0 and 7n / 8 = 1: layer 0 is neither in the first eighth nor a third one.
        assert!(!use_more_bits(0, 2));
        assert!(use_more_bits(1, 2));
    }
}

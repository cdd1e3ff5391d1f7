//! Helpers shared by the oracle tests: reading a reference's token lists, comparing logits.

use serde_json::Value;

/// A JSON array of token ids.
pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// The largest `|logits - reference|` over a prompt's positions (`reference`: one row of
/// `vocab` logits per position), as `(difference, position, token)`.
pub fn worst_logit(logits: &[f32], reference: &Value, vocab: usize) -> (f32, usize, usize) {
    let mut worst = (0f32, 0, 0);
    for (t, row) in reference.as_array().unwrap().iter().enumerate() {
        for (i, r) in row.as_array().unwrap().iter().enumerate() {
            let d = (logits[t * vocab + i] - r.as_f64().unwrap() as f32).abs();
            if d > worst.0 {
                worst = (d, t, i);
            }
        }
    }
    worst
}

/// Index of the largest value (the first of equals).
pub fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b }) as u32
}

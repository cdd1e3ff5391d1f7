//! The f16-cache attention against the f32 one: same result up to f16 rounding of q and of the
//! probabilities, sliding window included; plus an ignored decode timing of both.

use baicai_models::layers::{attention, attention_f16, AttnParams};
use half::f16;

/// A small deterministic generator (xorshift), uniform in `[-a, a)`.
struct Rng(u64);

impl Rng {
    fn next(&mut self, a: f32) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }
}

fn setup(n_ctx: usize, n_head_kv: usize, d: usize) -> (Vec<f32>, Vec<f32>, Vec<f16>, Vec<f16>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut r = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| f16::from_f32(rng.next(2.0)).to_f32())
            .collect()
    };
    let k = r(n_ctx * n_head_kv * d);
    let v = r(n_ctx * n_head_kv * d);
    let k16 = k.iter().map(|&x| f16::from_f32(x)).collect();
    let v16 = v.iter().map(|&x| f16::from_f32(x)).collect();
    (k, v, k16, v16)
}

#[test]
fn f16_attention_matches_f32_attention() {
    let (n_head, n_head_kv, d, n_ctx, n) = (4, 2, 64, 40, 5);
    let (k, v, k16, v16) = setup(n_ctx, n_head_kv, d);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let q: Vec<f32> = (0..n * n_head * d).map(|_| rng.next(0.3)).collect();
    for window in [None, Some(7)] {
        let p = AttnParams {
            n_head,
            n_head_kv,
            head_dim_k: d,
            head_dim_v: d,
            scale: 0.125,
            pos0: n_ctx - n,
            window,
        };
        let (mut a, mut b) = (vec![0.0; n * n_head * d], vec![0.0; n * n_head * d]);
        attention(&q, &k, &v, p, &mut a);
        attention_f16(&q, &k16, &v16, p, &mut b);
        let max = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(max < 5e-3, "window {window:?}: max |Δ| {max}");
    }
}

#[test]
#[ignore = "timing, prints only"]
fn decode_attention_timing() {
    for (n_head, n_head_kv, d) in [(14, 2, 64), (4, 1, 256)] {
        let n_ctx = 1024;
        let (k, v, k16, v16) = setup(n_ctx, n_head_kv, d);
        let q = vec![0.1f32; n_head * d];
        let p = AttnParams {
            n_head,
            n_head_kv,
            head_dim_k: d,
            head_dim_v: d,
            scale: 0.125,
            pos0: n_ctx - 1,
            window: None,
        };
        let mut o = vec![0.0; n_head * d];
        let reps = 2000;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            attention(&q, &k, &v, p, &mut o);
        }
        let f32_us = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            attention_f16(&q, &k16, &v16, p, &mut o);
        }
        let f16_us = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
        eprintln!(
            "heads {n_head}/{n_head_kv} d {d} ctx {n_ctx}: f32 {f32_us:.1} µs, f16 {f16_us:.1} µs"
        );
    }
}

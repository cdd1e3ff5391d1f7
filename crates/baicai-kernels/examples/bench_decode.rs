//! Times the matmuls of one decode step of Qwen2.5-0.5B (Q4_K_M layout: Q5_0 q/k/o/gate/up, Q8_0
//! v and output head, Q6_K/Q4_K ffn_down alternating), 24 layers, weights all distinct (as in the
//! model: nothing is reused from cache between tokens). Reports ms per token and the effective
//! weight bandwidth, to compare with `baicai bench` tg and see what the rest of the step costs.
//!
//! ```text
//! cargo run --release -p baicai-kernels --example bench_decode -- [--threads 1,2]
//! ```

use std::time::Instant;

use baicai_kernels::{matmul, matmul_many, DType, Weight};

const N_EMBD: usize = 896;
const N_FF: usize = 4864;
const N_KV: usize = 128;
const N_VOCAB: usize = 151_936;
const LAYERS: usize = 24;

/// Pseudo-random weight bytes with every block's first f16 a small normal value.
fn weight_bytes(dtype: DType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let n = rows * dtype.row_bytes(cols).unwrap();
    let mut s = seed | 1;
    let mut bytes: Vec<u8> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    // Scales spread as a model's are (log-uniform over [1e-3, 3e-2]): a kernel that looked them
    // up in a table would miss in cache as on real weights (a constant scale hid that).
    for b in bytes.chunks_exact_mut(dtype.block_bytes()) {
        let scale = 1e-3 * 30f32.powf(f32::from(b[2]) / 255.0);
        b[..2].copy_from_slice(&half::f16::from_f32(scale).to_le_bytes());
    }
    bytes
}

struct Layer {
    q: Vec<u8>,
    k: Vec<u8>,
    v: Vec<u8>,
    o: Vec<u8>,
    gate: Vec<u8>,
    up: Vec<u8>,
    down: Vec<u8>,
    down_type: DType,
}

fn w(dtype: DType, data: &[u8], rows: usize, cols: usize) -> Weight<'_> {
    Weight {
        packed: false,
        dtype,
        data,
        rows,
        cols,
    }
}

fn main() {
    let threads: Vec<usize> = match std::env::args().nth(1).as_deref() {
        Some("--threads") => std::env::args()
            .nth(2)
            .expect("--threads LIST")
            .split(',')
            .map(|v| v.parse().unwrap())
            .collect(),
        _ => vec![1, 2],
    };
    let layers: Vec<Layer> = (0..LAYERS as u64)
        .map(|i| {
            let down_type = if i % 2 == 0 { DType::Q6_K } else { DType::Q4_K };
            Layer {
                q: weight_bytes(DType::Q5_0, N_EMBD, N_EMBD, 7 * i + 1),
                k: weight_bytes(DType::Q5_0, N_KV, N_EMBD, 7 * i + 2),
                v: weight_bytes(DType::Q8_0, N_KV, N_EMBD, 7 * i + 3),
                o: weight_bytes(DType::Q5_0, N_EMBD, N_EMBD, 7 * i + 4),
                gate: weight_bytes(DType::Q5_0, N_FF, N_EMBD, 7 * i + 5),
                up: weight_bytes(DType::Q5_0, N_FF, N_EMBD, 7 * i + 6),
                down: weight_bytes(down_type, N_EMBD, N_FF, 7 * i + 7),
                down_type,
            }
        })
        .collect();
    let head = weight_bytes(DType::Q8_0, N_VOCAB, N_EMBD, 999);
    let bytes: usize = layers
        .iter()
        .map(|l| l.q.len() + l.k.len() + l.v.len() + l.o.len() + 2 * l.up.len() + l.down.len())
        .sum::<usize>()
        + head.len();

    let x: Vec<f32> = (0..N_FF).map(|i| ((i % 97) as f32 - 48.0) / 50.0).collect();
    let (mut q, mut k, mut v) = (vec![0.0; N_EMBD], vec![0.0; N_KV], vec![0.0; N_KV]);
    let (mut g, mut u, mut o) = (vec![0.0; N_FF], vec![0.0; N_FF], vec![0.0; N_EMBD]);
    let mut logits = vec![0.0; N_VOCAB];
    let xe = &x[..N_EMBD];
    let mut step = || {
        for l in &layers {
            let qkv = [
                w(DType::Q5_0, &l.q, N_EMBD, N_EMBD),
                w(DType::Q5_0, &l.k, N_KV, N_EMBD),
                w(DType::Q8_0, &l.v, N_KV, N_EMBD),
            ];
            matmul_many(&qkv, xe, 1, &mut [&mut q, &mut k, &mut v]);
            matmul(&w(DType::Q5_0, &l.o, N_EMBD, N_EMBD), xe, 1, &mut o);
            let gate_up = [
                w(DType::Q5_0, &l.gate, N_FF, N_EMBD),
                w(DType::Q5_0, &l.up, N_FF, N_EMBD),
            ];
            matmul_many(&gate_up, xe, 1, &mut [&mut g, &mut u]);
            matmul(&w(l.down_type, &l.down, N_EMBD, N_FF), &x, 1, &mut o);
        }
        matmul(&w(DType::Q8_0, &head, N_VOCAB, N_EMBD), xe, 1, &mut logits);
    };
    println!(
        "{:.1} MiB of weights per token",
        bytes as f64 / (1 << 20) as f64
    );
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap();
        pool.install(|| {
            step();
            let mut best = f64::MAX;
            for _ in 0..5 {
                let start = Instant::now();
                for _ in 0..10 {
                    step();
                }
                best = best.min(start.elapsed().as_secs_f64() / 10.0);
            }
            println!(
                "threads {t}: {:.2} ms per token ({:.1} tok/s), {:.1} GB/s",
                best * 1e3,
                1.0 / best,
                bytes as f64 / best / 1e9
            );
        });
    }
}

//! Decode-time streaming speed of MoE expert matmuls, DeepSeek-V2-Lite shapes (Q4_K_M layout:
//! Q4_K gate/up `[1408, 2048]`, Q8_0 down `[2048, 1408]`): per step, 6 of 64 experts of one of
//! 8 layers (~2.6 GB of weights in all, so nothing stays in cache), gate/up in one
//! `matmul_batch` and down in another, as `Experts::forward` runs them. Prints GB/s of weights
//! streamed, to compare with the machine's read bandwidth (`baicai bench` measures it).
//!
//! ```text
//! cargo run --release -p baicai-kernels --example bench_experts -- [--threads 2] [--steps 400]
//! ```

use std::time::Instant;

use baicai_kernels::{matmul_batch, DType, MatJob, Weight};

const D: usize = 2048;
const FF: usize = 1408;
const EXPERTS: usize = 64;
const USED: usize = 6;
const LAYERS: usize = 8;

/// `n` pseudo-random weight bytes in an anonymous mapping, on 2 MiB pages when `HUGE` is set.
fn bytes(n: usize, seed: u64, block: usize) -> memmap2::MmapMut {
    let mut s = seed | 1;
    let mut v = memmap2::MmapMut::map_anon(n).unwrap();
    if std::env::var_os("HUGE").is_some() {
        v.advise(memmap2::Advice::HugePage).unwrap();
    }
    for b in v.iter_mut() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *b = s as u8;
    }
    for b in v.chunks_exact_mut(block) {
        b[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        if block == 144 {
            b[2..4].copy_from_slice(&half::f16::from_f32(0.001).to_le_bytes());
        }
    }
    v
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, def: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(def, |v| v.parse().unwrap())
    };
    let threads = arg("--threads", 2);
    let steps = arg("--steps", 400);
    let gate_t = DType::Q4_K;
    let down_t = DType::Q8_0;
    let g_bytes = FF * gate_t.row_bytes(D).unwrap();
    let d_bytes = D * down_t.row_bytes(FF).unwrap();
    let layers: Vec<(memmap2::MmapMut, memmap2::MmapMut, memmap2::MmapMut)> = (0..LAYERS)
        .map(|l| {
            let l = l as u64;
            (
                bytes(EXPERTS * g_bytes, 3 * l + 1, 144),
                bytes(EXPERTS * g_bytes, 3 * l + 2, 144),
                bytes(EXPERTS * d_bytes, 3 * l + 3, 34),
            )
        })
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let x: Vec<f32> = (0..D).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect();
    let mut rng = 12345u64;
    pool.install(|| {
        let t0 = Instant::now();
        let (mut gu_time, mut down_time) = (0.0, 0.0);
        for step in 0..steps {
            let (gate, up, down) = &layers[step % LAYERS];
            let mut chosen = Vec::new();
            while chosen.len() < USED {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let e = (rng % EXPERTS as u64) as usize;
                if !chosen.contains(&e) {
                    chosen.push(e);
                }
            }
            let mut g = vec![vec![0.0f32; FF]; USED];
            let mut u = vec![vec![0.0f32; FF]; USED];
            let t = Instant::now();
            let mut jobs = Vec::new();
            for ((&e, g), u) in chosen.iter().zip(&mut g).zip(&mut u) {
                for (data, out) in [(gate, g), (up, u)] {
                    jobs.push(MatJob {
                        w: Weight {
                            packed: false,
                            dtype: gate_t,
                            data: &data[e * g_bytes..(e + 1) * g_bytes],
                            rows: FF,
                            cols: D,
                        },
                        x: &x,
                        n_tokens: 1,
                        out,
                    });
                }
            }
            matmul_batch(&mut jobs);
            drop(jobs);
            gu_time += t.elapsed().as_secs_f64();
            let mut o = vec![vec![0.0f32; D]; USED];
            let t = Instant::now();
            let mut jobs: Vec<MatJob> = chosen
                .iter()
                .zip(&g)
                .zip(&mut o)
                .map(|((&e, g), o)| MatJob {
                    w: Weight {
                        packed: false,
                        dtype: down_t,
                        data: &down[e * d_bytes..(e + 1) * d_bytes],
                        rows: D,
                        cols: FF,
                    },
                    x: g,
                    n_tokens: 1,
                    out: o,
                })
                .collect();
            matmul_batch(&mut jobs);
            down_time += t.elapsed().as_secs_f64();
        }
        let total = t0.elapsed().as_secs_f64();
        let gu = (steps * USED * 2 * g_bytes) as f64;
        let dn = (steps * USED * d_bytes) as f64;
        println!(
            "threads {threads}: gate/up {:.1} GB/s, down {:.1} GB/s, overall {:.1} GB/s",
            gu / gu_time / 1e9,
            dn / down_time / 1e9,
            (gu + dn) / total / 1e9
        );
    });
}

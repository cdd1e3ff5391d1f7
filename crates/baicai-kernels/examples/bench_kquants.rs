//! Scalar against AVX2 dot products for Q4_K and Q6_K weights × Q8_K activations over a 896×4864
//! matrix (rows of 4864 values: Qwen2.5-0.5B's `ffn_down`), one thread, in GB/s of weight bytes.
//!
//! "hot" reuses one matrix (it stays in L2/L3); "streamed" cycles through enough copies to exceed
//! the last-level cache, which is what decode sees. On a shared machine wall-clock figures drop
//! when the thread is descheduled, so each is also given per second of this thread's CPU time
//! (from /proc/thread-self/stat, 10 ms resolution; "-" where that is unavailable).
//!
//! `cargo run --release -p baicai-kernels --example bench_kquants`

use std::hint::black_box;
use std::time::{Duration, Instant};

use baicai_kernels::dispatch::{dot_fn, quant_fn, DotFn, Isa};
use baicai_kernels::dtype::{DType, QK_K};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROWS: usize = 896;
const N: usize = 4864;
/// Copies for the streamed runs: 64 MiB or more of weights, twice a 32 MiB L3.
const STREAM_BYTES: usize = 64 << 20;

/// Random weight bytes with finite f16 super-block scales (d, and dmin where the type has one).
fn weights(rng: &mut StdRng, dtype: DType, rows: usize) -> Vec<u8> {
    let bb = dtype.block_bytes();
    let mut w = vec![0u8; rows * dtype.row_bytes(N).unwrap()];
    rng.fill(&mut w[..]);
    let scale_offsets: &[usize] = match dtype {
        DType::Q4_K => &[0, 2],
        DType::Q6_K => &[208],
        _ => unreachable!(),
    };
    for block in w.chunks_exact_mut(bb) {
        for &off in scale_offsets {
            let v = f16::from_f32(rng.gen_range(-0.05..0.05));
            block[off..off + 2].copy_from_slice(&v.to_bits().to_le_bytes());
        }
    }
    w
}

/// CPU time of the calling thread in seconds (Linux: utime + stime, in USER_HZ = 100 ticks).
fn thread_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the parenthesised command name start at field 3 (state); 14 and 15 are
    // utime and stime.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Throughput of one run in GB/s of weight bytes: by wall clock and by thread CPU time.
struct Rate {
    wall: f64,
    cpu: Option<f64>,
}

/// Runs `dot` over every row of every matrix until at least `min` has passed.
fn measure(dot: DotFn, mats: &[Vec<u8>], row_bytes: usize, a: &[u8], min: Duration) -> Rate {
    let mut bytes = 0usize;
    let cpu0 = thread_cpu_secs();
    let start = Instant::now();
    let mut sink = 0f32;
    while start.elapsed() < min {
        for m in mats {
            for row in m.chunks_exact(row_bytes) {
                sink += dot(N, black_box(row), a);
            }
            bytes += m.len();
        }
    }
    black_box(sink);
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu0
        .zip(thread_cpu_secs())
        .map(|(c0, c1)| c1 - c0)
        .filter(|&c| c > 0.0);
    Rate {
        wall: bytes as f64 / wall / 1e9,
        cpu: cpu.map(|c| bytes as f64 / c / 1e9),
    }
}

fn fmt_cpu(r: &Rate) -> String {
    r.cpu.map_or("-".to_string(), |c| format!("{c:.2}"))
}

fn main() {
    let avx2 = Isa::detect() == Isa::Avx2;
    let mut rng = StdRng::seed_from_u64(7);
    let x: Vec<f32> = (0..N).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let mut a = vec![0u8; DType::Q8_K.row_bytes(N).unwrap()];
    quant_fn(DType::Q8_K, Isa::Scalar)(&x, &mut a);
    assert_eq!(N % QK_K, 0);

    let min = Duration::from_secs(1);
    println!("{ROWS}x{N} matrix, 1 thread, GB/s of weight bytes (wall clock | per CPU second)");
    println!(
        "{:<6} {:<9} {:>15} {:>15} {:>8}",
        "type", "set", "scalar", "avx2", "speedup"
    );
    for dtype in [DType::Q4_K, DType::Q6_K] {
        let row_bytes = dtype.row_bytes(N).unwrap();
        let one = weights(&mut rng, dtype, ROWS);
        let copies = STREAM_BYTES.div_ceil(one.len());
        let streamed: Vec<Vec<u8>> = (0..copies)
            .map(|_| weights(&mut rng, dtype, ROWS))
            .collect();
        for (set, mats) in [
            ("hot", std::slice::from_ref(&one)),
            ("streamed", &streamed[..]),
        ] {
            let scalar = measure(dot_fn(dtype, Isa::Scalar), mats, row_bytes, &a, min);
            let simd = if avx2 {
                measure(dot_fn(dtype, Isa::Avx2), mats, row_bytes, &a, min)
            } else {
                Rate {
                    wall: f64::NAN,
                    cpu: None,
                }
            };
            let cell = |r: &Rate| format!("{:.2} | {}", r.wall, fmt_cpu(r));
            println!(
                "{:<6} {:<9} {:>15} {:>15} {:>7.1}x",
                dtype.name(),
                set,
                cell(&scalar),
                cell(&simd),
                simd.wall / scalar.wall
            );
        }
    }
}

//! Times `matmul` on the shapes of Qwen2.5-0.5B's FFN, for decode (1 token: reports weight GB/s,
//! the memory-bound figure) and prefill (512 tokens: reports GFLOP/s), with 1 and 2 threads, and
//! each time as a fraction of the roofline: first it measures the machine's int8 dot-product peak
//! (AVX-512 VNNI and AVX2) and memory read bandwidth per thread count, and the bound of a shape is
//! the larger of streaming its weights once and doing its multiply-adds at the peak of the path
//! the kernels take (`--no-avx512`: AVX2's).
//!
//! ```text
//! cargo run --release -p baicai-kernels --example bench_matmul -- [TYPE…] [--tokens 1,512] [--threads 1,2] [--shapes RxC,…] [--hot] [--no-avx512]
//! ```
//! `--packed` also times each packable format packed in groups of 8 rows (as the models load
//! them), labelled `TYPE/8`.
//! TYPE defaults to `Q5_0 Q8_0`; any [`DType`] name works once its kernels exist. `--shapes`
//! replaces the FFN shapes (`4864x896,896x4864`) with others, e.g. `4096x4096`. Decode and small
//! batches (up to [`SMALL_BATCH`] tokens) cycle through enough copies of the weights to exceed
//! the last-level cache, so the figure is DRAM bandwidth, not cache bandwidth; `--hot` keeps one
//! copy (kernel speed from cache).

use std::time::{Duration, Instant};

use baicai_kernels::roofline::{bound, int8_peak, read_bandwidth, Limit};
use baicai_kernels::{matmul, DType, Weight};

/// Token counts up to this stream weights from memory as decode does (copies cycle).
const SMALL_BATCH: usize = 16;

/// Total weight bytes decode cycles through (well above a 32 MiB L3).
const DECODE_BYTES: usize = 256 << 20;
/// Minimum time measured per configuration.
const MIN_TIME: Duration = Duration::from_millis(1500);
/// Minimum time of one group of calls.
const GROUP_TIME: Duration = Duration::from_millis(50);

struct Args {
    types: Vec<DType>,
    tokens: Vec<usize>,
    threads: Vec<usize>,
    /// Weight shapes `(rows, cols)`.
    shapes: Vec<(usize, usize)>,
    /// Decode on one copy of the weights (cache-resident for the small shapes): kernel speed
    /// rather than memory bandwidth.
    hot: bool,
    /// The AVX-512 kernels are off: the AVX2 peak bounds the arithmetic.
    avx2_only: bool,
    /// Also time the weights packed in groups of 8 rows (formats that have the layout).
    packed: bool,
}

fn parse_list(s: &str) -> Vec<usize> {
    s.split(',')
        .map(|v| v.parse().expect("a comma-separated list of numbers"))
        .collect()
}

/// `ROWSxCOLS,…`.
fn parse_shapes(s: &str) -> Vec<(usize, usize)> {
    s.split(',')
        .map(|v| {
            let (r, c) = v.split_once('x').expect("a shape is ROWSxCOLS");
            (
                r.parse().expect("rows: a number"),
                c.parse().expect("cols: a number"),
            )
        })
        .collect()
}

fn parse_args() -> Args {
    let mut args = Args {
        types: Vec::new(),
        tokens: vec![1, 512],
        threads: vec![1, 2],
        shapes: vec![(4864, 896), (896, 4864)],
        hot: false,
        avx2_only: false,
        packed: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--tokens" => args.tokens = parse_list(&it.next().expect("--tokens LIST")),
            "--threads" => args.threads = parse_list(&it.next().expect("--threads LIST")),
            "--shapes" => args.shapes = parse_shapes(&it.next().expect("--shapes LIST")),
            "--hot" => args.hot = true,
            "--packed" => args.packed = true,
            "--no-avx512" => {
                baicai_kernels::dispatch::disable_avx512();
                args.avx2_only = true;
            }
            name => {
                let t = DType::ALL
                    .iter()
                    .find(|t| t.name().eq_ignore_ascii_case(name));
                args.types
                    .push(*t.unwrap_or_else(|| panic!("unknown type {name}")));
            }
        }
    }
    if args.types.is_empty() {
        args.types = vec![DType::Q5_0, DType::Q8_0];
    }
    args
}

/// Pseudo-random bytes (xorshift), with every block's first f16 (the scale in legacy formats)
/// set to a small normal value so sums stay finite (MXFP4: its E8M0 scale byte to 2^-8).
fn weight_bytes(dtype: DType, n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut bytes: Vec<u8> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    if dtype == DType::MXFP4 {
        for b in bytes.chunks_exact_mut(dtype.block_bytes()) {
            b[0] = 120;
        }
    } else if dtype.block_len() > 1 {
        for b in bytes.chunks_exact_mut(dtype.block_bytes()) {
            b[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        }
    }
    bytes
}

/// Runs `f` in groups of at least [`GROUP_TIME`] until [`MIN_TIME`] has passed; returns seconds per
/// call of the fastest group and of all calls. The machine is shared, so the fastest group is the
/// better estimate of what the code can do; the mean shows how noisy the run was.
fn time(mut f: impl FnMut()) -> (f64, f64) {
    f();
    let start = Instant::now();
    let (mut best, mut calls) = (f64::MAX, 0u32);
    while start.elapsed() < MIN_TIME {
        let group = Instant::now();
        let mut n = 0u32;
        while group.elapsed() < GROUP_TIME {
            f();
            n += 1;
        }
        best = best.min(group.elapsed().as_secs_f64() / n as f64);
        calls += n;
    }
    (best, start.elapsed().as_secs_f64() / calls as f64)
}

fn main() {
    let args = parse_args();
    // Per thread count: (bandwidth bytes/s, int8 peak ops/s).
    let limits: Vec<(f64, f64)> = args
        .threads
        .iter()
        .map(|&threads| {
            let pool = pool(threads);
            let bw = pool.install(|| read_bandwidth(DECODE_BYTES as u64, 3));
            let peak = int8_peak(threads);
            let best = peak.best(args.avx2_only).unwrap_or(f64::NAN);
            let gops = |p: Option<f64>| p.map_or("-".into(), |p| format!("{:.0}", p / 1e9));
            println!(
                "{threads} threads: memory {:.1} GB/s, int8 peak VNNI {} / AVX2 {} GOP/s",
                bw / 1e9,
                gops(peak.vnni),
                gops(peak.avx2)
            );
            (bw, best)
        })
        .collect();
    println!(
        "{:<6} {:>11} {:>6} {:>7} {:>9} {:>14} {:>14} {:>11}",
        "type", "rows×cols", "tokens", "threads", "best ms", "best rate", "mean rate", "of bound"
    );
    let layouts: Vec<(DType, bool)> = args
        .types
        .iter()
        .flat_map(|&t| {
            let p = args.packed && baicai_kernels::quant::packed::packable(t);
            [(t, false)].into_iter().chain(p.then_some((t, true)))
        })
        .collect();
    for &(dtype, packed) in &layouts {
        for &(rows, cols) in &args.shapes {
            let Some(row_bytes) = dtype.row_bytes(cols) else {
                continue;
            };
            let bytes = rows * row_bytes;
            for &n_tokens in &args.tokens {
                let copies = if n_tokens <= SMALL_BATCH && !args.hot {
                    DECODE_BYTES.div_ceil(bytes)
                } else {
                    1
                };
                let data: Vec<Vec<u8>> = (0..copies)
                    .map(|i| weight_bytes(dtype, bytes, 0x9e37_79b9 + i as u64))
                    .map(|d| {
                        if packed {
                            baicai_kernels::quant::packed::pack(dtype, &d, rows, cols)
                                .expect("rows a multiple of 8")
                        } else {
                            d
                        }
                    })
                    .collect();
                let x: Vec<f32> = (0..n_tokens * cols)
                    .map(|i| ((i % 97) as f32 - 48.0) / 50.0)
                    .collect();
                let mut out = vec![0.0f32; n_tokens * rows];
                for (&threads, &(bw, peak)) in args.threads.iter().zip(&limits) {
                    let mut i = 0;
                    let (best, mean) = pool(threads).install(|| {
                        time(|| {
                            let w = Weight {
                                packed,
                                dtype,
                                data: &data[i % copies],
                                rows,
                                cols,
                            };
                            matmul(&w, &x, n_tokens, &mut out);
                            i += 1;
                        })
                    });
                    let macs = (rows * cols * n_tokens) as f64;
                    let rate = |secs: f64| {
                        if n_tokens == 1 {
                            format!("{:.1} GB/s", bytes as f64 / secs / 1e9)
                        } else {
                            format!("{:.1} GFLOP/s", 2.0 * macs / secs / 1e9)
                        }
                    };
                    let (limit_s, limit) = bound(bytes as f64, macs, bw, peak);
                    let which = match limit {
                        Limit::Bytes => "mem",
                        Limit::Arithmetic => "int8",
                    };
                    println!(
                        "{:<6} {:>11} {:>6} {:>7} {:>9.3} {:>14} {:>14} {:>6.0}% {which}",
                        if packed {
                            format!("{}/8", dtype.name())
                        } else {
                            dtype.name().to_string()
                        },
                        format!("{rows}×{cols}"),
                        n_tokens,
                        threads,
                        best * 1e3,
                        rate(best),
                        rate(mean),
                        100.0 * limit_s / best,
                    );
                }
            }
        }
    }
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
}

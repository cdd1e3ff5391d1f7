//! The machine's limits for matmul: the int8 dot-product peak of the two integer paths the
//! kernels use (AVX-512 VNNI `vpdpbusd`, AVX2 `vpmaddubsw` + `vpmaddwd` + `vpaddd`) and the
//! memory read bandwidth, and the bound a matmul of a given shape cannot beat: streaming its
//! weights once (small batches) or doing its multiply-adds at the peak (large ones).
//!
//! The peaks are measured, not looked up: independent accumulator chains of the instruction
//! sequence on every thread, long enough that timer and start-up costs vanish. They count a
//! multiply-add as 2 operations, as GFLOP/s figures do.

use std::hint::black_box;
use std::time::Instant;

use rayon::prelude::*;

/// The measured int8 dot-product peaks, in operations (2 per multiply-add) per second, of all
/// the threads together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Int8Peak {
    /// `vpdpbusd` on 256-bit registers, where the CPU has AVX-512 VNNI.
    pub vnni: Option<f64>,
    /// `vpmaddubsw` + `vpmaddwd` + `vpaddd` (32 multiply-adds), where the CPU has AVX2.
    pub avx2: Option<f64>,
}

impl Int8Peak {
    /// The peak of the path the kernels take: VNNI unless it is absent or `avx2_only`.
    pub fn best(&self, avx2_only: bool) -> Option<f64> {
        if avx2_only {
            self.avx2
        } else {
            self.vnni.or(self.avx2)
        }
    }
}

/// Iterations of the peak loops per thread and pass: ~10-20 ms at a few GHz.
const PEAK_ITERS: u64 = 2_000_000;
/// Timed passes; the best is kept.
const PEAK_PASSES: usize = 3;

/// Measures [`Int8Peak`] with `threads` threads (each runs the loop; the figure is their total).
pub fn int8_peak(threads: usize) -> Int8Peak {
    let threads = threads.max(1);
    let measure = |kernel: fn(u64) -> u64, macs_per_iter: u64| {
        let mut best = 0.0f64;
        for _ in 0..PEAK_PASSES {
            let t = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| black_box(kernel(black_box(PEAK_ITERS))));
                }
            });
            let ops = (2 * macs_per_iter * PEAK_ITERS * threads as u64) as f64;
            best = best.max(ops / t.elapsed().as_secs_f64());
        }
        best
    };
    #[cfg(target_arch = "x86_64")]
    {
        let vnni = crate::kernel::avx512_available()
            .then(|| measure(x86::vnni_loop, x86::CHAINS as u64 * 32));
        let avx2 = crate::kernel::Isa::detect() == crate::kernel::Isa::Avx2;
        let avx2 = avx2.then(|| measure(x86::avx2_loop, x86::CHAINS as u64 * 32));
        Int8Peak { vnni, avx2 }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = measure;
        Int8Peak {
            vnni: None,
            avx2: None,
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Independent accumulators: enough to cover the instructions' latency on two pipes.
    pub const CHAINS: usize = 8;

    /// `iters` rounds of [`CHAINS`] `vpdpbusd` (32 multiply-adds each); returns a checksum.
    pub fn vnni_loop(iters: u64) -> u64 {
        assert!(crate::kernel::avx512_available());
        // SAFETY: the features were just checked.
        unsafe { vnni(iters) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
    fn vnni(iters: u64) -> u64 {
        let a = _mm256_set1_epi8(3);
        let b = _mm256_set1_epi8(-5);
        let mut acc = [_mm256_setzero_si256(); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_dpbusd_epi32(*x, a, b);
            }
        }
        checksum(acc)
    }

    /// `iters` rounds of [`CHAINS`] AVX2 int8 dot steps (`maddubs`, `madd` with ones, `add`:
    /// 32 multiply-adds each, as the AVX2 kernels do them); returns a checksum.
    pub fn avx2_loop(iters: u64) -> u64 {
        assert!(crate::kernel::Isa::detect() == crate::kernel::Isa::Avx2);
        // SAFETY: the features were just checked.
        unsafe { avx2(iters) }
    }

    #[target_feature(enable = "avx2,fma")]
    fn avx2(iters: u64) -> u64 {
        let a = _mm256_set1_epi8(3);
        let b = _mm256_set1_epi8(-5);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                // Assembly, not intrinsics: the product of two loop-invariant registers would be
                // hoisted out of the loop.
                // SAFETY: register-only AVX2 instructions (the features are enabled).
                unsafe {
                    core::arch::asm!(
                        "vpmaddubsw {t}, {a}, {b}",
                        "vpmaddwd {t}, {t}, {ones}",
                        "vpaddd {x}, {x}, {t}",
                        x = inout(ymm_reg) *x,
                        t = out(ymm_reg) _,
                        a = in(ymm_reg) a,
                        b = in(ymm_reg) b,
                        ones = in(ymm_reg) ones,
                        options(nomem, nostack, preserves_flags)
                    );
                }
            }
        }
        checksum(acc)
    }

    #[target_feature(enable = "avx2")]
    fn checksum(acc: [__m256i; CHAINS]) -> u64 {
        let mut s = _mm256_setzero_si256();
        for x in acc {
            s = _mm256_add_epi32(s, x);
        }
        _mm256_extract_epi64::<0>(s) as u64
    }
}

/// Which limit a [`bound`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Streaming the weights once from memory.
    Bytes,
    /// The multiply-adds at the int8 peak.
    Arithmetic,
}

/// The least time a matmul streaming `weight_bytes` and doing `macs` multiply-adds can take on a
/// machine with `bandwidth` bytes/s and an int8 `peak` (operations/s), and which limit that is.
pub fn bound(weight_bytes: f64, macs: f64, bandwidth: f64, peak: f64) -> (f64, Limit) {
    let bytes = weight_bytes / bandwidth;
    let arith = 2.0 * macs / peak;
    if bytes >= arith {
        (bytes, Limit::Bytes)
    } else {
        (arith, Limit::Arithmetic)
    }
}

/// Largest buffer [`read_bandwidth`] uses: 8× the 32 MiB L3 of the development machine, so that
/// caches cannot serve a noticeable share of the reads.
pub const BANDWIDTH_BUFFER_BYTES: u64 = 256 << 20;
/// Work unit for the threads: small enough to balance, large enough to stream.
const CHUNK_BYTES: usize = 4 << 20;

/// Memory read bandwidth in bytes per second with the current rayon pool: a buffer of
/// `buffer_bytes` (rounded down to whole 4 MiB chunks, at least one), written so every page is
/// backed, summed in parallel `passes` times (at least one) after an untimed pass; the best pass.
pub fn read_bandwidth(buffer_bytes: u64, passes: usize) -> f64 {
    let chunk_words = CHUNK_BYTES / 8;
    let chunks = (buffer_bytes / CHUNK_BYTES as u64).max(1) as usize;
    // Non-zero contents: a zeroed allocation could leave pages mapped to the shared zero page,
    // which reads at cache speed.
    let buf: Vec<u64> = (0..(chunks * chunk_words) as u64).collect();
    let bytes = (buf.len() * 8) as f64;
    // One untimed pass brings the threads up and the TLB warm.
    black_box(parallel_sum(&buf, chunk_words));
    (0..passes.max(1))
        .map(|_| {
            let t = Instant::now();
            black_box(parallel_sum(black_box(&buf), chunk_words));
            bytes / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

/// Wrapping sum of `buf`, chunk by chunk across the pool; the inner loop auto-vectorises.
fn parallel_sum(buf: &[u64], chunk_words: usize) -> u64 {
    buf.par_chunks(chunk_words)
        .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
        .reduce(|| 0, u64::wrapping_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_picks_the_larger_limit() {
        // 1 GB at 10 GB/s = 0.1 s; 1e9 MACs at 1e12 ops/s = 2 ms.
        assert_eq!(bound(1e9, 1e9, 1e10, 1e12), (0.1, Limit::Bytes));
        // 1e12 MACs: 2 s of arithmetic.
        assert_eq!(bound(1e9, 1e12, 1e10, 1e12), (2.0, Limit::Arithmetic));
    }

    #[test]
    fn peaks_are_positive_where_the_paths_exist() {
        let p = int8_peak(1);
        for v in [p.vnni, p.avx2].into_iter().flatten() {
            assert!(v.is_finite() && v > 1e9, "{p:?}");
        }
    }
}

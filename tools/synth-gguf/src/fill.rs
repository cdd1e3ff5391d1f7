//! Random but well-formed tensor bytes: a seeded xorshift generator and one block writer per
//! storage type, so a tensor is produced block by block into a small reusable buffer.
//!
//! Quantized weights come out with mean ≈ 0 and standard deviation ≈ [`WEIGHT_STD`] (the scale of
//! a trained model's projections), so a forward pass over them stays finite: every block's
//! super-scale is a normal f16 and every sub-scale is in range, as llama.cpp's own quantizers
//! would write them.

use baicai_gguf::GgmlType;
use half::f16;

/// Target standard deviation of every random weight (norm weights excepted).
pub const WEIGHT_STD: f32 = 0.02;

/// Half-width of the uniform noise around 1.0 in norm weights.
const NORM_NOISE: f32 = 0.05;

/// Q4_K sub-block scales (6 bits) are drawn from this range; the mins equal the scales so that
/// `d·sc·q − dmin·m` is centred (see [`Filler::q4k_block`]).
const Q4K_SCALES: (u32, u32) = (20, 44);
/// Q6_K sub-block scales (signed bytes) are drawn from this range, with a random sign.
const Q6K_SCALES: (u32, u32) = (4, 12);
/// Legacy 32-blocks (Q8_0, Q5_0) take their scale from 16 values spread over this factor range
/// around the base scale, half of them negative, indexed by a random nibble.
const LEGACY_SCALE_SPREAD: (f32, f32) = (0.75, 1.25);
/// MXFP4 scales are powers of two, `2^(e − 128)` with the doubled E2M1 table (rms 5.85 over
/// uniform codes): [`MXFP4_E_HIGH`] in this many of 16 blocks and one less elsewhere gives
/// std 0.02 (11/16 · 2^-16 + 5/16 · 2^-18 = 0.0004 / 34.25).
const MXFP4_HIGH_OF_16: u64 = 11;
const MXFP4_E_HIGH: u8 = 120;

/// xorshift64* (Vigna 2016): fast, seedable, good enough for filler weights.
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence depends only on `seed` (any value, zero included).
    pub fn new(seed: u64) -> Rng {
        Rng(splitmix64(seed) | 1)
    }

    /// The generator for stream `index` under `seed`: each tensor gets its own stream, so a
    /// tensor's bytes do not depend on which tensors come before it.
    pub fn for_stream(seed: u64, index: u64) -> Rng {
        Rng::new(seed ^ splitmix64(index.wrapping_add(0x5851_F42D_4C95_7F2D)))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform value in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Fills `out` with random bytes.
    pub fn fill_bytes(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let n = rest.len();
        rest.copy_from_slice(&self.next_u64().to_le_bytes()[..n]);
    }
}

/// Sebastiano Vigna's splitmix64 finaliser: spreads a seed over all 64 bits.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Maps a random byte onto `lo..=hi` (near-uniform: counts differ by at most one).
fn byte_in(byte: u8, (lo, hi): (u32, u32)) -> u8 {
    (lo + ((u32::from(byte) * (hi - lo + 1)) >> 8)) as u8
}

/// Root mean square of a value drawn uniformly from `values`.
fn rms(values: impl Iterator<Item = f32>) -> f32 {
    let (n, sum_sq) = values.fold((0u32, 0f64), |(n, s), v| (n + 1, s + f64::from(v * v)));
    (sum_sq / f64::from(n)).sqrt() as f32
}

/// Root mean square of a value drawn uniformly from the integers `lo..=hi`, shifted by `shift`.
fn uniform_rms((lo, hi): (i32, i32), shift: f32) -> f32 {
    rms((lo..=hi).map(|v| v as f32 + shift))
}

/// What a tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// Norm weights: 1.0 plus a little uniform noise (F32 only).
    NearOne,
    /// Weights with mean ≈ 0 and standard deviation ≈ [`WEIGHT_STD`].
    Random,
    /// I32 rows of `per_token` distinct expert ids below `n_expert` (DeepSeek-V4's
    /// `ffn_gate_tid2eid`: a token's experts in a hash-routed layer).
    ExpertIds { n_expert: u32, per_token: u32 },
}

/// Writes random blocks of one storage type; built once per tensor.
pub struct Filler {
    ty: GgmlType,
    init: Init,
    /// Q4_K: `d`, Q6_K: `d` (f16 bits).
    d: [u8; 2],
    /// Q4_K: `dmin` (f16 bits).
    dmin: [u8; 2],
    /// Q8_0 / Q5_0: the 16 block scales (f16 bits) a random nibble picks from.
    legacy_d: [[u8; 2]; 16],
}

impl Filler {
    /// Types [`Filler`] can write.
    pub const SUPPORTED: [GgmlType; 7] = [
        GgmlType::F32,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q8_0,
        GgmlType::Q5_0,
        GgmlType::MXFP4,
        GgmlType::I32,
    ];

    /// A filler for tensors of type `ty` holding `init`.
    ///
    /// # Panics
    /// When `ty` is not in [`Filler::SUPPORTED`], `init` is [`Init::NearOne`] for a quantized
    /// type, or I32 goes with anything but [`Init::ExpertIds`] (of at most `n_expert` ids).
    pub fn new(ty: GgmlType, init: Init) -> Filler {
        assert!(
            Self::SUPPORTED.contains(&ty),
            "synth-gguf cannot write {} tensors",
            ty.name()
        );
        match init {
            Init::NearOne => assert!(
                ty == GgmlType::F32,
                "norm weights must be F32, not {}",
                ty.name()
            ),
            Init::Random => assert!(ty != GgmlType::I32, "I32 tensors hold expert ids"),
            Init::ExpertIds {
                n_expert,
                per_token,
            } => assert!(
                ty == GgmlType::I32 && per_token >= 1 && per_token <= n_expert,
                "expert ids: {per_token} of {n_expert} as {}",
                ty.name()
            ),
        }
        let half = |x: f32| f16::from_f32(x).to_le_bytes();
        let sc_rms = |(lo, hi): (u32, u32)| uniform_rms((lo as i32, hi as i32), 0.0);
        let mut f = Filler {
            ty,
            init,
            d: [0; 2],
            dmin: [0; 2],
            legacy_d: [[0; 2]; 16],
        };
        match ty {
            // y = d·sc·q − dmin·m with q in 0..=15, m = sc, dmin = 7.5·d  ⇒  y = d·sc·(q − 7.5).
            GgmlType::Q4_K => {
                let d = WEIGHT_STD / (sc_rms(Q4K_SCALES) * uniform_rms((0, 15), -7.5));
                f.d = half(d);
                f.dmin = half(7.5 * d);
            }
            // y = d·sc·(q − 32) with q in 0..=63.
            GgmlType::Q6_K => {
                f.d = half(WEIGHT_STD / (sc_rms(Q6K_SCALES) * uniform_rms((-32, 31), 0.0)));
            }
            // Q8_0: y = d·q with q in −128..=127; Q5_0: y = d·(q − 16) with q in 0..=31.
            GgmlType::Q8_0 | GgmlType::Q5_0 => {
                let q_rms = if ty == GgmlType::Q8_0 {
                    uniform_rms((-128, 127), 0.0)
                } else {
                    uniform_rms((-16, 15), 0.0)
                };
                let (lo, hi) = LEGACY_SCALE_SPREAD;
                let factors: Vec<f32> = (0..16).map(|i| lo + (hi - lo) * i as f32 / 15.0).collect();
                let f_rms = rms(factors.iter().copied());
                // Alternate signs centre the weights: the quants alone have mean −0.5.
                for (i, (slot, k)) in f.legacy_d.iter_mut().zip(&factors).enumerate() {
                    let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
                    *slot = half(sign * WEIGHT_STD * k / (f_rms * q_rms));
                }
            }
            _ => {}
        }
        f
    }

    /// Bytes [`Filler::fill`] writes at a time: a block, or for expert ids a token's row.
    pub fn unit_bytes(&self) -> usize {
        match self.init {
            Init::ExpertIds { per_token, .. } => 4 * per_token as usize,
            _ => self.ty.block_bytes() as usize,
        }
    }

    /// Fills `out`, a whole number of units ([`Filler::unit_bytes`]), with random blocks.
    ///
    /// # Panics
    /// When `out.len()` is not a multiple of the unit.
    pub fn fill(&self, rng: &mut Rng, out: &mut [u8]) {
        let unit = self.unit_bytes();
        assert_eq!(
            out.len() % unit,
            0,
            "{} bytes is not whole blocks",
            out.len()
        );
        for b in out.chunks_exact_mut(unit) {
            match self.ty {
                GgmlType::F32 => self.f32_value(rng, b),
                GgmlType::Q4_K => self.q4k_block(rng, b),
                GgmlType::Q6_K => self.q6k_block(rng, b),
                GgmlType::Q8_0 => self.q8_0_block(rng, b),
                GgmlType::Q5_0 => self.q5_0_block(rng, b),
                GgmlType::MXFP4 => mxfp4_block(rng, b),
                GgmlType::I32 => self.expert_ids(rng, b),
                _ => unreachable!("checked in Filler::new"),
            }
        }
    }

    fn f32_value(&self, rng: &mut Rng, b: &mut [u8]) {
        let u = 2.0 * rng.unit() - 1.0; // uniform in [-1, 1)
        let x = match self.init {
            Init::NearOne => 1.0 + NORM_NOISE * u,
            Init::Random => WEIGHT_STD * 3f32.sqrt() * u,
            Init::ExpertIds { .. } => unreachable!("checked in Filler::new"),
        };
        b.copy_from_slice(&x.to_le_bytes());
    }

    /// `block_q4_K` (ggml-common.h): `d`, `dmin`, 12 bytes of packed 6-bit scales and mins,
    /// 128 bytes of nibbles.
    fn q4k_block(&self, rng: &mut Rng, b: &mut [u8]) {
        b[0..2].copy_from_slice(&self.d);
        b[2..4].copy_from_slice(&self.dmin);
        let r = rng.next_u64().to_le_bytes();
        let sc = r.map(|x| byte_in(x, Q4K_SCALES));
        pack_q4k_scales(&sc, &sc, &mut b[4..16]);
        rng.fill_bytes(&mut b[16..144]);
    }

    /// `block_q6_K`: 128 bytes of low nibbles, 64 bytes of high bit pairs, 16 signed scales, `d`.
    fn q6k_block(&self, rng: &mut Rng, b: &mut [u8]) {
        rng.fill_bytes(&mut b[0..192]);
        for half in b[192..208].chunks_exact_mut(8) {
            let r = rng.next_u64().to_le_bytes();
            for (s, x) in half.iter_mut().zip(r) {
                // A random sign centres the block: q − 32 alone has mean −0.5.
                let v = byte_in(x, Q6K_SCALES) as i8;
                *s = (if x & 1 == 0 { v } else { -v }) as u8;
            }
        }
        b[208..210].copy_from_slice(&self.d);
    }

    /// `block_q8_0`: `d`, 32 signed bytes.
    fn q8_0_block(&self, rng: &mut Rng, b: &mut [u8]) {
        b[0..2].copy_from_slice(&self.legacy_d[(rng.next_u64() & 15) as usize]);
        rng.fill_bytes(&mut b[2..34]);
    }

    /// `block_q5_0`: `d`, 4 bytes of fifth bits, 16 bytes of nibbles.
    fn q5_0_block(&self, rng: &mut Rng, b: &mut [u8]) {
        b[0..2].copy_from_slice(&self.legacy_d[(rng.next_u64() & 15) as usize]);
        rng.fill_bytes(&mut b[2..22]);
    }
}

/// `block_mxfp4`: the E8M0 scale byte, 16 bytes of E2M1 codes. Uniform codes are symmetric
/// (code `8 + c` is `−value(c)`), so the weights are centred at any scale.
fn mxfp4_block(rng: &mut Rng, b: &mut [u8]) {
    let high = rng.next_u64() % 16 < MXFP4_HIGH_OF_16;
    b[0] = if high { MXFP4_E_HIGH } else { MXFP4_E_HIGH - 1 };
    rng.fill_bytes(&mut b[1..17]);
}

impl Filler {
    /// One token's row of `per_token` distinct expert ids (rejection sampling: a few draws).
    fn expert_ids(&self, rng: &mut Rng, b: &mut [u8]) {
        let Init::ExpertIds { n_expert, .. } = self.init else {
            unreachable!("checked in Filler::new")
        };
        let mut filled = 0;
        while filled < b.len() {
            let id = (rng.next_u64() % u64::from(n_expert)) as i32;
            let taken = b[..filled]
                .chunks_exact(4)
                .any(|x| i32::from_le_bytes(x.try_into().unwrap()) == id);
            if !taken {
                b[filled..filled + 4].copy_from_slice(&id.to_le_bytes());
                filled += 4;
            }
        }
    }
}

/// Packs eight 6-bit scales and mins the way ggml's `get_scale_min_k4` reads them: sub-blocks
/// 0–3 in the low 6 bits of bytes 0–3 (scales) and 4–7 (mins); sub-blocks 4–7 as low nibbles in
/// bytes 8–11 and their top two bits in the high bits of bytes 0–7.
fn pack_q4k_scales(sc: &[u8; 8], mn: &[u8; 8], out: &mut [u8]) {
    for j in 0..4 {
        out[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        out[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        out[j + 8] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baicai_kernels::{dequantize_row, DType};

    /// Mean and standard deviation of `n_blocks` random blocks of `ty`, dequantized by the
    /// engine's own kernels.
    fn stats(ty: GgmlType, dtype: DType, init: Init, n_blocks: usize) -> (f64, f64) {
        let filler = Filler::new(ty, init);
        let mut bytes = vec![0u8; n_blocks * ty.block_bytes() as usize];
        filler.fill(&mut Rng::new(7), &mut bytes);
        let mut vals = vec![0f32; n_blocks * ty.block_len() as usize];
        dequantize_row(dtype, &bytes, &mut vals);
        assert!(
            vals.iter().all(|v| v.is_finite()),
            "{}: non-finite value",
            ty.name()
        );
        let n = vals.len() as f64;
        let mean = vals.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = vals
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }

    #[test]
    fn random_blocks_dequantize_to_mean_zero_and_target_std() {
        let cases = [
            (GgmlType::Q4_K, DType::Q4_K),
            (GgmlType::Q6_K, DType::Q6_K),
            (GgmlType::Q8_0, DType::Q8_0),
            (GgmlType::Q5_0, DType::Q5_0),
            (GgmlType::MXFP4, DType::MXFP4),
            (GgmlType::F32, DType::F32),
        ];
        for (ty, dtype) in cases {
            let n_blocks = 200_000 / ty.block_len() as usize;
            let (mean, std) = stats(ty, dtype, Init::Random, n_blocks);
            let want = f64::from(WEIGHT_STD);
            assert!(
                (std - want).abs() < 0.03 * want,
                "{}: std {std} not within 3% of {want}",
                ty.name()
            );
            assert!(
                mean.abs() < 0.05 * want,
                "{}: mean {mean} not near 0",
                ty.name()
            );
        }
    }

    #[test]
    fn norm_weights_are_near_one() {
        let (mean, std) = stats(GgmlType::F32, DType::F32, Init::NearOne, 10_000);
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        assert!(std < 0.05, "std {std}");
    }

    #[test]
    fn q4k_scales_unpack_as_ggml_reads_them() {
        let sc = [1, 20, 33, 44, 63, 47, 16, 31];
        let mn = [62, 5, 48, 17, 32, 63, 0, 15];
        let mut q = [0u8; 12];
        pack_q4k_scales(&sc, &mn, &mut q);
        // ggml-quants.c get_scale_min_k4
        for j in 0..8 {
            let (d, m) = if j < 4 {
                (q[j] & 63, q[j + 4] & 63)
            } else {
                (
                    (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                    (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
                )
            };
            assert_eq!((d, m), (sc[j], mn[j]), "sub-block {j}");
        }
    }

    #[test]
    fn expert_ids_are_distinct_per_token_and_in_range() {
        let init = Init::ExpertIds {
            n_expert: 8,
            per_token: 6,
        };
        let filler = Filler::new(GgmlType::I32, init);
        assert_eq!(filler.unit_bytes(), 24);
        let mut bytes = vec![0u8; 24 * 1000];
        filler.fill(&mut Rng::new(3), &mut bytes);
        let mut counts = [0u32; 8];
        for row in bytes.chunks_exact(24) {
            let mut ids: Vec<i32> = row
                .chunks_exact(4)
                .map(|x| i32::from_le_bytes(x.try_into().unwrap()))
                .collect();
            ids.iter().for_each(|&i| counts[i as usize] += 1);
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 6, "{ids:?}");
        }
        // Every expert is used, about 6000 / 8 times.
        assert!(
            counts.iter().all(|&c| (600..900).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn same_seed_same_bytes_other_stream_other_bytes() {
        let filler = Filler::new(GgmlType::Q4_K, Init::Random);
        let mut a = vec![0u8; 144 * 8];
        let mut b = a.clone();
        let mut c = a.clone();
        filler.fill(&mut Rng::for_stream(42, 3), &mut a);
        filler.fill(&mut Rng::for_stream(42, 3), &mut b);
        filler.fill(&mut Rng::for_stream(42, 4), &mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}

//! Lookup tables shared between format families.

/// The 16 non-linear levels of IQ4_NL and IQ4_XS (ggml's `kvalues_iq4nl`).
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The 16 E2M1 (FP4) values of MXFP4, doubled so they are integers (ggml's `kvalues_mxfp4`):
/// code `s.ee.m` is `±{0, 0.5, 1, 1.5, 2, 3, 4, 6}`, times 2. ggml halves the E8M0 scale to
/// match ([`crate::quant::e8m0_to_f32_half`]), so the products are the OCP values.
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

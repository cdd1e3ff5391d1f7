//! Sampling (skeleton).

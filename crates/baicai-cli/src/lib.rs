//! The parts of the `baicai` binary that its tests use too. A key design decision: the
//! logprob-file format and the KL-divergence statistics live here once, so `baicai perplexity`
//! and the test against the exact reference (`tests/exact_reference.rs`) compare runs with the
//! same code.

pub mod logprobs;

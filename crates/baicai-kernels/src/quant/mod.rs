//! Block formats with their scalar reference kernels.

pub mod kquants;
pub mod legacy;
pub mod tables;

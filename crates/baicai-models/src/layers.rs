//! The shared layers under their former paths, re-exported from [`crate::blocks`] for
//! `deepseek2.rs` (to move onto the blocks after the DeepSeek-V3.2 work) and existing callers.
//! New code uses [`crate::blocks`].

pub use crate::blocks::attention::{
    attention, attention_f16, attention_f16_seqs, AttnParams, KvView,
};
pub use crate::blocks::norm::{rms_norm, rms_norm_inplace};
pub use crate::blocks::ops::{add_bias, add_inplace, geglu, swiglu};
pub use crate::blocks::rope::{Rope, RopeParams};

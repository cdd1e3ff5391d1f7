//! (kquants) skeleton: to be implemented.

use crate::dispatch::{DequantFn, DotFn, Isa, QuantFn};
use crate::dtype::DType;

pub fn dequant_fn(dtype: DType, isa: Isa) -> DequantFn {
    let _ = (dtype, isa);
    |_, _| todo!()
}

pub fn quant_fn(dtype: DType, isa: Isa) -> QuantFn {
    let _ = (dtype, isa);
    |_, _| todo!()
}

pub fn dot_fn(dtype: DType, isa: Isa) -> DotFn {
    let _ = (dtype, isa);
    |_, _, _| todo!()
}

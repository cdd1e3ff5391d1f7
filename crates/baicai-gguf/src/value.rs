//! Conversions on metadata [`Value`]s used by the typed accessors of [`crate::Gguf`].

use crate::Value;

impl Value {
    /// The GGUF spelling of this value's type: `"u8"`, `"i32"`, `"f32"`, `"bool"`, `"string"`,
    /// `"array"`, ….
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }

    /// `"array of <element type>"` for an array whose elements have `elem`'s type.
    pub(crate) fn array_of_name(elem: &Value) -> &'static str {
        match elem {
            Value::U8(_) => "array of u8",
            Value::I8(_) => "array of i8",
            Value::U16(_) => "array of u16",
            Value::I16(_) => "array of i16",
            Value::U32(_) => "array of u32",
            Value::I32(_) => "array of i32",
            Value::F32(_) => "array of f32",
            Value::Bool(_) => "array of bool",
            Value::String(_) => "array of string",
            Value::Array(_) => "array of array",
            Value::U64(_) => "array of u64",
            Value::I64(_) => "array of i64",
            Value::F64(_) => "array of f64",
        }
    }

    /// Any integer that is non-negative, as u64.
    pub fn to_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits in i64.
    pub fn to_i64(&self) -> Option<i64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Any float or integer as f64 (64-bit integers may round).
    pub fn to_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => self.to_i64().map(|v| v as f64),
        }
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, if this is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

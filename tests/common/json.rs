//! Reading numbers and strings out of sluice's JSON answers by JSON pointer.

use serde_json::Value;

pub fn json_f64(v: &Value, ptr: &str) -> Option<f64> {
    v.pointer(ptr).and_then(Value::as_f64)
}

pub fn json_str<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// Whether `actual` is within `pct` percent of `expected`.
pub fn within_pct(actual: f64, expected: f64, pct: f64) -> bool {
    (actual - expected).abs() <= expected.abs() * pct / 100.0
}

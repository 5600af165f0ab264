//! The gRPC / `--json` form of a job spec: arbitrary bytes -> UTF-8 -> `parse_json`, then
//! `validate` and `warnings`. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prune_core::validate;

#[path = "spec_common.rs"]
mod spec_common;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        spec_common::check(validate::parse_json(text));
    }
});

//! Hostile inputs for the parsers that take untrusted bytes: safetensors files (uploads,
//! downloads, `prunectl unpack`) and job specs (TOML and JSON). Each must be a clean error,
//! never a panic, a hang or an allocation sized by a number in the input.
//!
//! Inputs found by `cargo +nightly fuzz` (`make fuzz`, targets in `fuzz/`) are kept here too,
//! inline, with the target that found them.

use std::collections::HashMap;

use prune_core::bitmask::{
    pack_safetensors, read_safetensors, unpack_safetensors, write_safetensors, FormatError, TensorData,
};
use prune_core::validate::{parse_json, parse_toml, validate, warnings, SpecErrors};
use safetensors::Dtype;

// ---------------------------------------------------------------------------------------------
// safetensors
// ---------------------------------------------------------------------------------------------

/// A safetensors file: little-endian header length, header, body.
fn file(header: &str, body: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(body);
    out
}

/// A file whose header-length field says `len`, followed by `rest`.
fn with_header_len(len: u64, rest: &[u8]) -> Vec<u8> {
    let mut out = len.to_le_bytes().to_vec();
    out.extend(rest);
    out
}

/// Reads `bytes`, expecting an error; every whole-file entry point must refuse it too.
fn read_err(bytes: &[u8]) -> String {
    let err = read_safetensors(bytes).expect_err("hostile file was accepted");
    assert!(unpack_safetensors(bytes).is_err(), "unpack accepted what read refused");
    assert!(pack_safetensors(bytes).is_err(), "pack accepted what read refused");
    err.to_string()
}

fn assert_contains(err: &str, needle: &str) {
    assert!(err.contains(needle), "error `{err}` does not mention `{needle}`");
}

const ONE_F32: &str = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;

#[test]
fn sane_file_reads() {
    // The baseline the hostile cases below are variations of.
    let (tensors, _) = read_safetensors(&file(ONE_F32, &[0, 0, 0x80, 0x3f])).unwrap();
    assert_eq!((tensors[0].name.as_str(), tensors[0].data.as_slice()), ("a", &[0, 0, 0x80, 0x3f][..]));
}

#[test]
fn too_short_for_a_header_length() {
    for n in 0..8 {
        read_err(&vec![0u8; n]);
    }
}

#[test]
fn header_length_u64_max() {
    let err = read_err(&with_header_len(u64::MAX, b"{}"));
    assert_contains(&err, "not a valid safetensors file");
}

#[test]
fn header_length_past_the_end_of_the_file() {
    let mut bytes = file(ONE_F32, &[0; 4]);
    let past_end = (bytes.len() - 8 + 1) as u64;
    bytes[..8].copy_from_slice(&past_end.to_le_bytes());
    read_err(&bytes);
    // Just under the readers' 100 MB cap, with a 2-byte file: refused without allocating it.
    read_err(&with_header_len(99_999_999, b"{}"));
    // Over the cap.
    read_err(&with_header_len(100_000_001, b"{}"));
}

#[test]
fn header_length_zero_or_cutting_the_json() {
    read_err(&with_header_len(0, b""));
    let bytes = file(ONE_F32, &[0; 4]);
    let mut cut = bytes.clone();
    cut[..8].copy_from_slice(&((ONE_F32.len() - 3) as u64).to_le_bytes());
    read_err(&cut);
}

#[test]
fn non_utf8_and_invalid_json_headers() {
    read_err(&file_bytes(&[0xff, 0xfe, b'{', b'}'], &[]));
    read_err(&file("{", &[]));
    read_err(&file("[]", &[]));
    read_err(&file("null", &[]));
    read_err(&file(r#"{"a":1}"#, &[]));
    read_err(&file(r#"{"a":{"dtype":"F32","shape":[1]}}"#, &[0; 4]));
    read_err(&file(r#"{"a":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}}"#, &[0; 4]));
    read_err(&file(r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, &[0; 4]));
    read_err(&file(r#"{"__metadata__":{"k":1}}"#, &[]));
}

fn file_bytes(header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(body);
    out
}

#[test]
fn deeply_nested_header_json() {
    // serde_json's recursion limit turns this into an error, not a stack overflow.
    let depth = 100_000;
    let header = format!(r#"{{"__metadata__":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
    read_err(&file(&header, &[]));
    let header = format!("{}{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
    read_err(&file(&header, &[]));
}

#[test]
fn offsets_past_the_end() {
    read_err(&file(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, &[0; 2]));
    read_err(&file(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, &[0; 4]));
    read_err(&file(
        r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[18446744073709551615,18446744073709551615]}}"#,
        &[],
    ));
}

#[test]
fn trailing_bytes_after_the_data() {
    read_err(&file(ONE_F32, &[0; 5]));
}

#[test]
fn overlapping_and_backwards_offsets() {
    read_err(&file(
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#,
        &[0; 6],
    ));
    // Both tensors on the same bytes.
    read_err(&file(
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        &[0; 4],
    ));
    // A gap between tensors.
    read_err(&file(
        r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}"#,
        &[0; 3],
    ));
    // end < start.
    read_err(&file(
        r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"U8","shape":[1],"data_offsets":[4,0]}}"#,
        &[0; 4],
    ));
}

#[test]
fn offsets_not_matching_shape_and_dtype() {
    // Four bytes for a [2] F32 (needs 8) and for a [1] F64.
    read_err(&file(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, &[0; 4]));
    read_err(&file(r#"{"a":{"dtype":"F64","shape":[1],"data_offsets":[0,4]}}"#, &[0; 4]));
    // Sub-byte dtype whose elements do not fill a byte.
    read_err(&file(r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}"#, &[0; 1]));
    // Element count overflows usize.
    read_err(&file(r#"{"a":{"dtype":"F32","shape":[9223372036854775807,4],"data_offsets":[0,4]}}"#, &[0; 4]));
    read_err(&file(r#"{"a":{"dtype":"F64","shape":[4611686018427387904,4],"data_offsets":[0,0]}}"#, &[]));
}

#[test]
fn duplicate_tensor_names() {
    // JSON objects may repeat a key; a map keeps only one of them, so which tensor a reader
    // sees would depend on the reader. The same entry twice must be an error, not silently one.
    let err = read_err(&file(
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        &[0; 4],
    ));
    assert_contains(&err, "`a`");
    assert_contains(&err, "more than once");
    // Different entries under one name.
    read_err(&file(
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
        &[0; 8],
    ));
    // Two `__metadata__` tables.
    read_err(&file(
        r#"{"__metadata__":{"x":"1"},"__metadata__":{"x":"2"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
        &[0],
    ));
    // The writer refuses them too.
    let t = TensorData::new("a", Dtype::U8, vec![1], vec![7]).unwrap();
    let err = write_safetensors(&[t.clone(), t], None).unwrap_err();
    assert_contains(&err.to_string(), "more than once");
}

#[test]
fn escaped_names_are_not_duplicates() {
    // `"a"` and `"\u0061"` are the same key once decoded: a duplicate.
    read_err(&file(
        r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"\u0061":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}"#,
        &[],
    ));
    // Distinct names that need escaping read and round-trip.
    let bytes = file(
        r#"{"a\"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a\\b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
        &[1, 2],
    );
    let (tensors, _) = read_safetensors(&bytes).unwrap();
    let written = write_safetensors(&tensors, None).unwrap();
    let (again, _) = read_safetensors(&written).unwrap();
    assert_eq!(again, tensors);
}

/// A packed weight (`m.shape`, `m.compressed`, `m.bitmask`, `m.row_offsets`) whose `.shape`
/// claims `dense` and whose other parts are `bitmask` (U8) and `row_offsets` (I64) shapes.
fn packed_file(dense: &[i64], bitmask_shape: &[usize], offsets_shape: &[usize]) -> Vec<u8> {
    let i64s = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let bitmask_len: usize = bitmask_shape.iter().product();
    let offsets_len: usize = offsets_shape.iter().product();
    let tensors = [
        TensorData::new("m.shape", Dtype::I64, vec![dense.len()], i64s(dense)).unwrap(),
        TensorData::new("m.compressed", Dtype::F32, vec![0], vec![]).unwrap(),
        TensorData::new("m.bitmask", Dtype::U8, bitmask_shape.to_vec(), vec![0; bitmask_len]).unwrap(),
        TensorData::new("m.row_offsets", Dtype::I64, offsets_shape.to_vec(), vec![0; offsets_len * 8]).unwrap(),
    ];
    write_safetensors(&tensors, None).unwrap()
}

#[test]
fn packed_weight_with_a_lying_dense_shape() {
    // A consistent all-zero packed 2x3 weight unpacks.
    let ok = unpack_safetensors(&packed_file(&[2, 3], &[2, 1], &[2])).unwrap();
    let (dense, _) = read_safetensors(&ok).unwrap();
    assert_eq!((dense[0].shape.clone(), dense[0].data.len()), (vec![2, 3], 24));

    // Dense shapes far bigger than the file: refused before allocating anything.
    for dense in [&[1i64 << 40, 1 << 40][..], &[i64::MAX, i64::MAX], &[1, 1 << 62], &[1 << 31, 1 << 31, 8], &[-1, 3]] {
        let err = unpack_safetensors(&packed_file(dense, &[2, 1], &[2])).unwrap_err().to_string();
        assert_contains(&err, "packed weight `m`");
    }
    // An empty dense shape and a 2-D `.shape`.
    let err = unpack_safetensors(&packed_file(&[], &[2, 1], &[2])).unwrap_err();
    assert_contains(&err.to_string(), "non-empty 1-D I64");
}

#[test]
fn packed_weight_with_inconsistent_parts() {
    // Bitmask one row short, row offsets one row long.
    unpack_safetensors(&packed_file(&[2, 3], &[1, 1], &[2])).unwrap_err();
    unpack_safetensors(&packed_file(&[2, 3], &[2, 1], &[3])).unwrap_err();
    // A part missing.
    let (mut tensors, _) = read_safetensors(&packed_file(&[2, 3], &[2, 1], &[2])).unwrap();
    tensors.retain(|t| t.name != "m.compressed");
    let bytes = write_safetensors(&tensors, None).unwrap();
    let err = unpack_safetensors(&bytes).unwrap_err();
    assert!(matches!(err, FormatError::Packed { .. }), "{err}");
    assert_contains(&err.to_string(), "missing `m.compressed`");
}

#[test]
fn metadata_survives_a_round_trip() {
    let bytes =
        file(r#"{"__metadata__":{"k":"v","format":"np"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, &[9]);
    let (tensors, metadata) = read_safetensors(&bytes).unwrap();
    let written = write_safetensors(&tensors, metadata.clone()).unwrap();
    let (again, metadata_again) = read_safetensors(&written).unwrap();
    assert_eq!(again, tensors);
    assert_eq!(
        metadata_again,
        Some(HashMap::from([("k".to_string(), "v".to_string()), ("format".to_string(), "np".to_string()),]))
    );
}

// ---------------------------------------------------------------------------------------------
// Job specs
// ---------------------------------------------------------------------------------------------

const MINIMAL: &str = r#"
[model]
file = "m.safetensors"

[pruning]
schedule = { kind = "constant_sparsity", target_sparsity = 0.5 }
"#;

fn toml_err(text: &str) -> SpecErrors {
    parse_toml(text).expect_err("hostile TOML was accepted")
}

fn json_err(text: &str) -> SpecErrors {
    parse_json(text).expect_err("hostile JSON was accepted")
}

/// Parses and checks that validation, not parsing, rejects it, naming `field`.
fn invalid(text: &str, field: &str) -> String {
    let spec = parse_toml(text).unwrap_or_else(|e| panic!("should parse: {e}"));
    let SpecErrors(errors) = validate(&spec).expect_err("should not validate");
    let found =
        errors.iter().find(|e| e.field == field).unwrap_or_else(|| panic!("no error for `{field}` in {errors:?}"));
    found.reason.clone()
}

#[test]
fn minimal_spec_is_valid() {
    let spec = parse_toml(MINIMAL).unwrap();
    validate(&spec).unwrap();
    let _ = warnings(&spec, Some(10));
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let depth = 100_000;
    let arrays = format!("{MINIMAL}\n[x]\ny = {}{}\n", "[".repeat(depth), "]".repeat(depth));
    toml_err(&arrays);
    let tables = format!("name = {}1{}\n", "{a=".repeat(depth), "}".repeat(depth));
    toml_err(&tables);
    let dotted = format!("{} = 1\n", vec!["a"; depth].join("."));
    toml_err(&dotted);
    let json = format!(r#"{{"name":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
    json_err(&json);
    let json = format!("{}1{}", r#"{"model":"#.repeat(depth), "}".repeat(depth));
    json_err(&json);
}

#[test]
fn huge_numbers() {
    // Past i64: a parse error on the field.
    let SpecErrors(errors) = toml_err(&format!("{MINIMAL}\n[training]\nepochs = 99999999999999999999999\n"));
    assert!(!errors.is_empty());
    let SpecErrors(errors) = json_err(
        r#"{"model":{"file":"m"},"pruning":{"schedule":{"kind":"constant_sparsity","target_sparsity":0.5}},"training":{"epochs":1e300}}"#,
    );
    assert_eq!(errors[0].field, "training.epochs", "{errors:?}");

    // In range for i64 but far past the limits: validation errors naming the field.
    let big = |section: &str, body: &str| format!("{MINIMAL}\n[{section}]\n{body}\n");
    invalid(&big("training", "epochs = 9223372036854775807"), "training.epochs");
    invalid(&big("training", "batch_size = -9223372036854775808"), "training.batch_size");
    invalid(&big("training", "learning_rate = inf"), "training.learning_rate");
    invalid(&big("training", "learning_rate = nan"), "training.learning_rate");
    // A float literal past f64 is a syntax error (TOML does not round it to infinity), located.
    let SpecErrors(errors) = toml_err(&big("training", "learning_rate = 1e400"));
    assert_contains(&errors[0].reason, "(line 9, column 17)");
    invalid(&big("training", "threads = 9223372036854775807"), "training.threads");
    invalid(
        "[model]\nsequential = [{ type = \"linear\", in = 9223372036854775807, out = 9223372036854775807 }]\n\
         [pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.5 }\n",
        "model.sequential[0]",
    );
    invalid(
        "[model]\nfile = \"m\"\n[data]\nbuiltin = \"synthetic\"\nshape = [9223372036854775807, 9223372036854775807]\n\
         classes = 10\nsamples = 9223372036854775807\n\
         [pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.5 }\n",
        "data.samples",
    );
    let reason = invalid(
        "[model]\nfile = \"m\"\n[pruning]\nschedule = { kind = \"polynomial_decay\", initial_sparsity = 0.1, \
         final_sparsity = 0.9, begin_step = -9223372036854775808, end_step = 9223372036854775807, \
         frequency = -9223372036854775808, power = inf }\n",
        "pruning.schedule.begin_step",
    );
    assert_contains(&reason, ">= 0");
}

#[test]
fn warnings_on_extreme_but_valid_schedules() {
    // Valid steps at the top of the i64 range: the step arithmetic must not overflow.
    let spec = parse_toml(&format!(
        "[model]\nfile = \"m\"\n[data]\nbuiltin = \"digits\"\n[training]\nepochs = 1\n\
         [pruning]\nschedule = {{ kind = \"polynomial_decay\", initial_sparsity = 0.1, final_sparsity = 0.9, \
         begin_step = 0, end_step = {}, frequency = {} }}\n",
        i64::MAX,
        i64::MAX - 1
    ))
    .unwrap();
    validate(&spec).unwrap();
    let found = warnings(&spec, Some(1000));
    assert!(!found.is_empty());
}

#[test]
fn unknown_fields_are_named() {
    let SpecErrors(errors) = toml_err(&format!("{MINIMAL}\n[training]\nbacth_size = 3\n"));
    assert_eq!(errors[0].field, "training.bacth_size", "{errors:?}");
    let SpecErrors(errors) = toml_err(&format!("surprise = 1\n{MINIMAL}"));
    assert_eq!(errors[0].field, "surprise", "{errors:?}");
    let SpecErrors(errors) = toml_err(
        "[model]\nfile = \"m\"\n[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.5, extra = 1 }\n",
    );
    assert!(errors[0].field.starts_with("pruning.schedule"), "{errors:?}");
    let SpecErrors(errors) = json_err(r#"{"model":{"file":"m","x":1},"pruning":{}}"#);
    assert_eq!(errors[0].field, "model.x", "{errors:?}");
    // Trailing text after a JSON document.
    json_err(r#"{"model":{"file":"m"},"pruning":{"schedule":{"kind":"constant_sparsity","target_sparsity":0.5}}} x"#);
}

#[test]
fn errors_are_one_line_with_a_valid_location() {
    // Multi-byte characters right before the error: the line/column must not split a char.
    for text in [
        "name = \"ééé\"\n[model]\nfile = 1\n",
        "é = 1",
        "\u{feff}[model",
        "name = \"\u{1F600}\u{1F600}",
        "\"\u{1F600}\" = {",
    ] {
        let SpecErrors(errors) = toml_err(text);
        for e in errors {
            assert!(!e.reason.contains('\n'), "{e:?}");
        }
    }
}

#[test]
fn hostile_regexes_are_field_errors() {
    // The regex crate's size limit turns a pattern that compiles to a huge program into an
    // error rather than a memory blow-up.
    let reason = invalid(&format!("{MINIMAL}include = [\"(?:a{{1000}}){{1000}}\"]\n"), "pruning.include[0]");
    assert!(!reason.contains('\n'), "{reason}");
    invalid(&format!("{MINIMAL}include = [\"(\"]\n"), "pruning.include[0]");
}

/// Found by `spec_toml` (fuzz/artifacts/spec_toml/crash-35c77853…, minimised by hand): the server
/// stores a valid spec as `serde_json::to_string` and reads it back with `parse_json`, and
/// serde_json's default (non-`float_roundtrip`) float parser returns a neighbouring f64 for some
/// shortest-form decimals, so the stored job's learning rate is not the one submitted.
/// Fixed by serde_json's `float_roundtrip` feature (workspace `Cargo.toml`).
#[test]
fn valid_spec_survives_the_json_storage_round_trip() {
    let spec = parse_toml(&format!("{MINIMAL}\n[training]\nlearning_rate = 0.0021e308\n")).unwrap();
    validate(&spec).unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    let back = parse_json(&json).unwrap();
    assert_eq!(back.training.learning_rate.to_bits(), spec.training.learning_rate.to_bits(), "{json}");
}

//! Reading job documents (TOML job files, the JSON form) with serde errors turned into field
//! errors: the path of the offending key (`training.bacth_size`), one line, with its location.

use super::{FieldError, SpecErrors};
use crate::spec::JobSpec;
use crate::text::one_line;

/// Parses a TOML job file. Errors name the field (`training.batch_size`), or the unknown or
/// missing key with where it is (`training.bacth_size`), plus the line and column.
pub fn parse_toml(text: &str) -> Result<JobSpec, SpecErrors> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let location = e.inner().span().map(|span| line_column(text, span.start));
        SpecErrors(vec![serde_field_error(&path_string(e.path()), e.inner().message(), location)])
    })
}

/// Parses a JSON job spec (the gRPC and `--json` form) with the same error paths as TOML.
pub fn parse_json(text: &str) -> Result<JobSpec, SpecErrors> {
    let mut de = serde_json::Deserializer::from_str(text);
    let spec = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| SpecErrors(vec![json_field_error(&path_string(e.path()), e.inner())]))?;
    // Trailing text after the document belongs to no field.
    de.end().map_err(|e| SpecErrors(vec![json_field_error("", &e)]))?;
    Ok(spec)
}

fn json_field_error(table: &str, e: &serde_json::Error) -> FieldError {
    // serde_json appends " at line L column C" to its message; strip it and add ours.
    let location = (e.line() > 0).then(|| (e.line(), e.column()));
    let text = e.to_string();
    let message = match location {
        Some((line, column)) => {
            text.strip_suffix(&format!(" at line {line} column {column}")).unwrap_or(&text).to_string()
        }
        None => text,
    };
    serde_field_error(table, &message, location)
}

/// `training.batch_size`, `pruning.overrides[1]`; empty for the document root.
fn path_string(path: &serde_path_to_error::Path) -> String {
    if path.iter().next().is_none() {
        String::new()
    } else {
        path.to_string()
    }
}

/// Maps a serde error at path `table` to a field error, making sure an unknown or missing key
/// is the last element of the field path.
fn serde_field_error(table: &str, message: &str, location: Option<(usize, usize)>) -> FieldError {
    let key = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split_once('`'))
        .map(|(key, _)| key);
    let field = match key {
        // Plain structs already report an unknown key under its own name; buffered ones
        // (internally tagged enums) and missing keys report the table.
        Some(key) if table == key || table.ends_with(&format!(".{key}")) => table.to_string(),
        Some(key) if table.is_empty() => key.to_string(),
        Some(key) => format!("{table}.{key}"),
        None => table.to_string(),
    };
    let mut reason = one_line(&user_terms(message));
    if let Some((line, column)) = location {
        reason.push_str(&format!(" (line {line}, column {column})"));
    }
    FieldError::new(field, reason)
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    (0..=offset.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0)
}

/// serde names the Rust type it expected (`expected struct ModelSpec`); users wrote a table.
fn user_terms(message: &str) -> String {
    match message.split_once("expected struct ") {
        Some((before, after)) => {
            let rest = after.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_');
            format!("{before}expected a table{rest}")
        }
        None => message.to_string(),
    }
}

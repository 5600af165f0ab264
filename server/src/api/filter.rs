//! ListJobs' `filter` (a subset of AIP-160) and the opaque page tokens of paged calls.
//!
//! Grammar: conditions joined with `AND`, each `labels.KEY = "VALUE"`, `state = STATE`,
//! `kind = SERVICE | TRACKED` or `name = "NAME"` (values quoted with `"`, `\"` and `\\` escaped; a state may be quoted too,
//! any case). Anything else is an error naming what was expected where.

use prune_core::domain::{JobKind, JobState};
use sha2::{Digest, Sha256};

use crate::storage::JobFilter;

const MAX_FILTER: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter: {0}")]
pub struct FilterError(String);

pub fn parse(text: &str) -> Result<JobFilter, FilterError> {
    let mut filter = JobFilter::default();
    if text.len() > MAX_FILTER {
        return Err(FilterError(format!("at most {MAX_FILTER} characters (got {})", text.len())));
    }
    let mut lexer = Lexer { rest: text.trim() };
    if lexer.rest.is_empty() {
        return Ok(filter);
    }
    loop {
        let field = lexer.word().ok_or_else(|| lexer.expected("a field: labels.KEY, state, kind or name"))?;
        lexer.symbol('=').map_err(|_| lexer.expected("`=`"))?;
        let value = lexer.value().ok_or_else(|| lexer.expected("a value"))?;
        match field {
            "state" => {
                let state: JobState = value.to_ascii_uppercase().parse().map_err(|_| {
                    FilterError(format!("state: `{value}` is not one of QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED"))
                })?;
                if filter.state.is_some_and(|s| s != state) {
                    return Err(FilterError("state: given twice with different values".into()));
                }
                filter.state = Some(state);
            }
            "kind" => {
                let kind: JobKind = value
                    .parse()
                    .map_err(|_| FilterError(format!("kind: `{value}` is not one of SERVICE, TRACKED")))?;
                if filter.kind.is_some_and(|k| k != kind) {
                    return Err(FilterError("kind: given twice with different values".into()));
                }
                filter.kind = Some(kind);
            }
            "name" => filter.name = Some(value),
            label => match label.strip_prefix("labels.") {
                Some(key) if !key.is_empty() => filter.labels.push((key.to_string(), value)),
                _ => {
                    return Err(FilterError(format!(
                        "unknown field `{label}`: expected labels.KEY, state, kind or name"
                    )))
                }
            },
        }
        if lexer.rest.is_empty() {
            return Ok(filter);
        }
        let before = Lexer { rest: lexer.rest.trim_start() };
        match lexer.word() {
            Some(and) if and.eq_ignore_ascii_case("AND") => {}
            _ => return Err(before.expected("`AND` or the end")),
        }
    }
}

struct Lexer<'a> {
    rest: &'a str,
}

impl<'a> Lexer<'a> {
    fn expected(&self, what: &str) -> FilterError {
        let at: String = self.rest.chars().take(20).collect();
        if at.is_empty() {
            FilterError(format!("expected {what} at the end"))
        } else {
            FilterError(format!("expected {what} at `{at}`"))
        }
    }

    /// A bare word: letters, digits, `_`, `.`, `-`, `/`.
    fn word(&mut self) -> Option<&'a str> {
        self.rest = self.rest.trim_start();
        let end = self
            .rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')))
            .unwrap_or(self.rest.len());
        (end > 0).then(|| {
            let (word, rest) = self.rest.split_at(end);
            self.rest = rest;
            word
        })
    }

    fn symbol(&mut self, c: char) -> Result<(), ()> {
        self.rest = self.rest.trim_start();
        self.rest = self.rest.strip_prefix(c).ok_or(())?;
        Ok(())
    }

    /// A quoted string or a bare word.
    fn value(&mut self) -> Option<String> {
        self.rest = self.rest.trim_start();
        let Some(quoted) = self.rest.strip_prefix('"') else { return self.word().map(str::to_string) };
        let mut out = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &quoted[i + 1..];
                    return Some(out);
                }
                '\\' => out.push(chars.next()?.1),
                c => out.push(c),
            }
        }
        None
    }
}

/// A page token: where the next page starts, bound to the request that made it (its filter):
/// hex of `fingerprint:position`, opaque to clients.
pub fn page_token(fingerprint: &str, position: &str) -> String {
    hex::encode(format!("{fingerprint}:{position}"))
}

/// The position in `token`, if it was made for a request with this `fingerprint`.
pub fn page_position(token: &str, fingerprint: &str) -> Result<Option<String>, String> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = hex::decode(token).map_err(|_| "page_token: not a token this call returned".to_string())?;
    let text = String::from_utf8(bytes).map_err(|_| "page_token: not a token this call returned".to_string())?;
    match text.split_once(':') {
        Some((f, position)) if f == fingerprint => Ok(Some(position.to_string())),
        Some(_) => Err("page_token: made for a different filter or view; start again without it".to_string()),
        None => Err("page_token: not a token this call returned".to_string()),
    }
}

/// A short digest of the request parts a page token depends on.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_joined_with_and() {
        let f = parse(r#"labels.team = "vision" AND state = running and name = "a \"b\"""#).unwrap();
        assert_eq!(f.labels, [("team".to_string(), "vision".to_string())]);
        assert_eq!(f.state, Some(JobState::Running));
        assert_eq!(f.name.as_deref(), Some("a \"b\""));
        assert_eq!(parse("  ").unwrap(), JobFilter::default());
        assert_eq!(parse("state = \"SUCCEEDED\"").unwrap().state, Some(JobState::Succeeded));
        assert_eq!(parse("kind = TRACKED").unwrap().kind, Some(JobKind::Tracked));
    }

    #[test]
    fn errors_say_what_was_expected_where() {
        let cases = [
            ("state = DONE", "`DONE` is not one of"),
            ("kind = batch", "kind: `batch` is not one of SERVICE, TRACKED"),
            ("colour = \"red\"", "unknown field `colour`"),
            ("labels.team \"x\"", "expected `=`"),
            ("labels.team = \"x\" OR name = y", "expected `AND` or the end at `OR name"),
            ("labels.team = \"x", "expected a value"),
            ("state = RUNNING AND state = QUEUED", "given twice"),
            ("= x", "expected a field"),
            ("labels. = x", "unknown field"),
        ];
        for (text, expected) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(expected), "{text}: {e}");
        }
        assert!(parse(&"a".repeat(5000)).is_err());
    }

    #[test]
    fn page_tokens_belong_to_their_filter() {
        let f = fingerprint(&["state = RUNNING", "basic"]);
        let token = page_token(&f, "job-0001");
        assert_eq!(page_position(&token, &f).unwrap().as_deref(), Some("job-0001"));
        assert_eq!(page_position("", &f).unwrap(), None);
        assert!(page_position(&token, &fingerprint(&["", "basic"])).unwrap_err().contains("different filter"));
        assert!(page_position("zz", &f).is_err());
        assert!(page_position("job-0001", &f).is_err());
    }
}

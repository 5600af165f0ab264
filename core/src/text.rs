//! Small text helpers shared by the crates that turn errors into one-line messages.

/// Joins a multi-line message into one line (trimmed lines, blank ones dropped, `; ` between),
/// so that each error stays one line of a list or a log.
pub fn one_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn joins_trimmed_non_empty_lines() {
        assert_eq!(one_line("a\n  b  \n\nc"), "a; b; c");
        assert_eq!(one_line("single"), "single");
        assert_eq!(one_line(""), "");
    }
}

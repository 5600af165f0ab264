//! Text helpers shared by every crate that reports errors.

/// A message on one line: lines trimmed, empty ones dropped, joined by spaces (job errors,
/// worker failures and CLI errors are one line each).
pub fn one_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_become_one_line() {
        assert_eq!(super::one_line("a\n  b\n\nc"), "a b c");
    }
}

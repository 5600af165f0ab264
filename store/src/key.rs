use std::fmt;

/// A store key: a relative path of `/`-separated, non-empty segments without `.` or `..`, so
/// that no key can name anything outside the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid store key {key:?}: {reason}")]
pub struct KeyError {
    pub key: String,
    pub reason: &'static str,
}

impl Key {
    pub fn parse(key: impl Into<String>) -> Result<Self, KeyError> {
        let key = key.into();
        let reason = if key.is_empty() {
            Some("empty")
        } else if key.starts_with('/') {
            Some("absolute")
        } else if key.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
            Some("empty, `.` or `..` segment")
        } else if key.contains(['\\', '\0']) {
            Some("backslash or NUL")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(KeyError { key, reason }),
            None => Ok(Key(key)),
        }
    }

    /// A content-addressed upload: `blobs/<sha256 hex>`; anything but hex digits is refused.
    pub fn blob(sha256_hex: &str) -> Result<Self, KeyError> {
        if sha256_hex.is_empty() || !sha256_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeyError { key: format!("blobs/{sha256_hex}"), reason: "not a hex digest" });
        }
        Ok(Key(format!("blobs/{sha256_hex}")))
    }
    /// The prefix of a job's checkpoints (ends with `/`).
    pub fn checkpoints_prefix(job_id: &str) -> String {
        format!("checkpoints/{job_id}/")
    }
    /// The prefix of a job's artifacts (ends with `/`).
    pub fn artifacts_prefix(job_id: &str) -> String {
        format!("artifacts/{job_id}/")
    }
    /// Where attempt `attempt` of a job writes its checkpoints: each attempt has its own keys,
    /// so the objects of a superseded attempt can be removed without touching another's.
    pub fn attempt_checkpoints_prefix(job_id: &str, attempt: u32) -> String {
        format!("{}attempt-{attempt}/", Key::checkpoints_prefix(job_id))
    }
    /// Where attempt `attempt` of a job writes its artifacts (see `attempt_checkpoints_prefix`);
    /// only those of the attempt that committed the job are ever served.
    pub fn attempt_artifacts_prefix(job_id: &str, attempt: u32) -> String {
        format!("{}attempt-{attempt}/", Key::artifacts_prefix(job_id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_inside_the_store() {
        for ok in ["blobs/ab", "checkpoints/job-1/step-40.ckpt", "a"] {
            assert_eq!(Key::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "./a", "a/", "a\\b"] {
            assert!(Key::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Key::blob("ff").unwrap().as_str(), "blobs/ff");
        assert!(Key::blob("../etc").is_err() && Key::blob("").is_err());
        assert!(Key::parse(format!("{}step-1.ckpt", Key::checkpoints_prefix("job-1"))).is_ok());
    }
}

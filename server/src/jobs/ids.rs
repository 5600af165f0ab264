//! Job ids that sort by creation time, so "newest first" and "submission order" are both an
//! `ORDER BY id`, and a page token is simply the last id of the page.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::storage::now_ms;

pub const JOB_PREFIX: &str = "job-";

/// The last id value handed out in this process: ids are strictly increasing even when the
/// clock stands still or steps back.
static LAST: AtomicU64 = AtomicU64::new(0);

/// `job-` + 16 hex digits: 48 bits of unix milliseconds, 16 bits of sequence.
pub fn new_job_id() -> String {
    let candidate = (now_ms() as u64) << 16;
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = candidate.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return format!("{JOB_PREFIX}{next:016x}"),
            Err(actual) => last = actual,
        }
    }
}

/// A string that can be a job id: a cheap check before touching the database.
pub fn is_job_id(id: &str) -> bool {
    id.strip_prefix(JOB_PREFIX).is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_increasing() {
        let ids: Vec<String> = (0..1000).map(|_| new_job_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|id| is_job_id(id)));
        assert!(!is_job_id("job-xyz") && !is_job_id("sha256:00"));
    }
}

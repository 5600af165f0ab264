//! Exponential backoff for calls that outlive a server restart (watch, download).

use std::time::Duration;

/// 250 ms doubling up to 5 s, at most 40 tries in a row: about three minutes of retrying, long
/// enough for a server restart, short enough that a server that is gone for good is reported.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    attempt: u32,
}

const INITIAL: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(5);
const MAX_ATTEMPTS: u32 = 40;

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { next: INITIAL, attempt: 0 }
    }

    /// The delay before the next try, or `None` once the tries are used up.
    pub(crate) fn next_delay(&mut self) -> Option<Duration> {
        if self.attempt >= MAX_ATTEMPTS {
            return None;
        }
        self.attempt += 1;
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        Some(delay)
    }

    /// Tries made since the last success.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Called after a success, so that a later failure starts over with a short delay.
    pub(crate) fn reset(&mut self) {
        *self = Backoff::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_gives_up() {
        let mut b = Backoff::new();
        let delays: Vec<_> = std::iter::from_fn(|| b.next_delay()).collect();
        assert_eq!(delays.len(), MAX_ATTEMPTS as usize);
        assert_eq!(&delays[..3], &[INITIAL, INITIAL * 2, INITIAL * 4]);
        assert_eq!(*delays.last().unwrap(), MAX_DELAY);
        b.reset();
        assert_eq!(b.next_delay(), Some(INITIAL));
        assert_eq!(b.attempt(), 1);
    }
}

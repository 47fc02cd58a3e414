//! The daemon's one retry policy: a wait that doubles with every failure in a row,
//! from a first wait up to a cap, and starts over after a success.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    /// The wait after the latest failure; None when nothing has failed yet.
    current: Option<Duration>,
}

impl Backoff {
    pub const fn new(first: Duration, cap: Duration) -> Self {
        Backoff {
            first,
            cap,
            current: None,
        }
    }

    /// One more failure in a row: how long to wait before trying again.
    pub fn failed(&mut self) -> Duration {
        let wait = match self.current {
            None => self.first,
            Some(wait) => (wait * 2).min(self.cap),
        };
        self.current = Some(wait);
        wait
    }

    /// A success: the next failure waits `first` again.
    pub fn succeeded(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_starts_over() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(1), s(5));
        let waits: Vec<_> = (0..5).map(|_| b.failed()).collect();
        assert_eq!(waits, [s(1), s(2), s(4), s(5), s(5)]);
        b.succeeded();
        assert_eq!(b.failed(), s(1));
    }
}

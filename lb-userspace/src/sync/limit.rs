//! What peers may put in this balancer's connection table: at most
//! `peer_rate` flows a second (a token bucket holding one second's worth)
//! and at most `peer_share` of the table — counted as the flows installed
//! within the TCP idle timeout, since older ones have expired (a packet
//! reschedules them) and are the LRU's first victims. Pure: time is given.

use std::collections::VecDeque;

/// Why an entry is not installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limited {
    /// Over `peer_rate`.
    Rate,
    /// Peers' flows already fill `peer_share` of the table.
    Share,
}

/// The bounds, with their state.
#[derive(Clone, Debug)]
pub struct Limiter {
    rate: f64,
    tokens: f64,
    last_ns: Option<u64>,
    capacity: u64,
    window_ns: u64,
    /// Installs per second (second of the clock, count), oldest first.
    recent: VecDeque<(u64, u64)>,
    in_window: u64,
}

impl Limiter {
    /// `rate` flows per second; at most `capacity` installed within
    /// `window_ns`.
    pub fn new(rate: u32, capacity: u64, window_ns: u64) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last_ns: None,
            capacity,
            window_ns: window_ns.max(1_000_000_000),
            recent: VecDeque::new(),
            in_window: 0,
        }
    }

    /// Whether one more entry may be installed at `now_ns`; if so its
    /// token is taken (call [`Limiter::installed`] once it is in).
    ///
    /// # Errors
    /// [`Limited`] says which bound refused it.
    pub fn admit(&mut self, now_ns: u64) -> Result<(), Limited> {
        self.expire(now_ns);
        if self.in_window >= self.capacity {
            return Err(Limited::Share);
        }
        self.take_token(now_ns)
    }

    /// Whether a peer's close may be applied at `now_ns`: closes draw on
    /// the same `peer_rate` as installs (a peer flooding closes cannot
    /// walk the table faster than it may fill it) but not on the share,
    /// since a close adds no entry.
    ///
    /// # Errors
    /// [`Limited::Rate`] when the bucket is empty.
    pub fn admit_close(&mut self, now_ns: u64) -> Result<(), Limited> {
        self.take_token(now_ns)
    }

    fn take_token(&mut self, now_ns: u64) -> Result<(), Limited> {
        if let Some(last) = self.last_ns {
            #[allow(clippy::cast_precision_loss, reason = "nanoseconds between calls")]
            let elapsed = now_ns.saturating_sub(last) as f64 / 1e9;
            self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        }
        self.last_ns = Some(now_ns);
        if self.tokens < 1.0 {
            return Err(Limited::Rate);
        }
        self.tokens -= 1.0;
        Ok(())
    }

    /// One entry was installed at `now_ns`: it counts against the share.
    pub fn installed(&mut self, now_ns: u64) {
        let second = now_ns / 1_000_000_000;
        match self.recent.back_mut() {
            Some((at, count)) if *at == second => *count += 1,
            _ => self.recent.push_back((second, 1)),
        }
        self.in_window += 1;
    }

    /// Peers' entries installed within the window.
    pub fn in_window(&self) -> u64 {
        self.in_window
    }

    fn expire(&mut self, now_ns: u64) {
        let oldest = now_ns.saturating_sub(self.window_ns) / 1_000_000_000;
        while let Some(&(second, count)) = self.recent.front() {
            if second >= oldest {
                break;
            }
            self.in_window -= count;
            self.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_rate_refills_and_never_exceeds_a_second() {
        let mut limiter = Limiter::new(10, 1_000, 300 * S);
        let now = 100 * S;
        let admitted = (0..25).filter(|_| limiter.admit(now).is_ok()).count();
        assert_eq!(admitted, 10, "a second's worth at once");
        assert_eq!(limiter.admit(now), Err(Limited::Rate));
        // Half a second later: five more.
        let admitted = (0..25)
            .filter(|_| limiter.admit(now + S / 2).is_ok())
            .count();
        assert_eq!(admitted, 5);
        // A long pause refills to one second's worth, not more.
        let admitted = (0..25)
            .filter(|_| limiter.admit(now + 60 * S).is_ok())
            .count();
        assert_eq!(admitted, 10);
    }

    #[test]
    fn the_share_counts_installs_within_the_window() {
        let mut limiter = Limiter::new(1_000, 3, 10 * S);
        for at in [S, 2 * S, 2 * S] {
            assert_eq!(limiter.admit(at), Ok(()));
            limiter.installed(at);
        }
        assert_eq!(limiter.in_window(), 3);
        assert_eq!(limiter.admit(3 * S), Err(Limited::Share));
        // The first install leaves the window ten seconds on.
        assert_eq!(limiter.admit(12 * S), Ok(()));
        assert_eq!(limiter.in_window(), 2);
        limiter.installed(12 * S);
        assert_eq!(limiter.admit(12 * S), Err(Limited::Share));
        assert_eq!(limiter.admit(13 * S), Ok(()), "both of second 2 gone");
    }

    #[test]
    fn closes_draw_on_the_rate_but_not_the_share() {
        let mut limiter = Limiter::new(4, 1, 10 * S);
        assert_eq!(limiter.admit(S), Ok(()));
        limiter.installed(S);
        assert_eq!(limiter.admit(S), Err(Limited::Share), "the share is full");
        let closes = (0..10).filter(|_| limiter.admit_close(S).is_ok()).count();
        assert_eq!(closes, 3, "the rest of the second's four tokens");
        assert_eq!(limiter.admit_close(S), Err(Limited::Rate));
        assert_eq!(limiter.admit_close(S + S / 4), Ok(()), "a token refilled");
    }
}

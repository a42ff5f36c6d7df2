//! The soak's only source of randomness: a seeded xorshift64*, so that a seed names one sequence of
//! actions and replays it.

/// A small deterministic generator (xorshift64*); not for anything but tests.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (0 is mapped to a fixed non-zero state: xorshift never leaves 0).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// One of `items` (which must not be empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// An index chosen with the given weights.
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let mut roll = self.next_u64() % total.max(1);
        for (i, w) in weights.iter().enumerate() {
            if roll < u64::from(*w) {
                return i;
            }
            roll -= u64::from(*w);
        }
        weights.len() - 1
    }
}

/// A seed as people write it: decimal or `0x`-hex.
pub fn parse_seed(s: &str) -> Result<u64, String> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?} is not a seed (decimal or 0x-hex): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_in_decimal_and_hex() {
        assert_eq!(parse_seed("0x5eed0001"), Ok(0x5eed_0001));
        assert_eq!(parse_seed(" 42 "), Ok(42));
        assert!(parse_seed("0xzz").is_err());
    }

    #[test]
    fn a_seed_replays_and_another_differs() {
        let run = |seed| {
            let mut r = Rng::new(seed);
            (0..32).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert_ne!(run(0), vec![0; 32], "seed 0 must not be stuck at zero");
    }

    #[test]
    fn ranges_and_weights_stay_in_bounds_and_reach_every_value() {
        let mut r = Rng::new(42);
        let mut seen = [0u32; 3];
        for _ in 0..3000 {
            let b = r.between(5, 7);
            assert!((5..=7).contains(&b));
            seen[r.weighted(&[1, 0, 3])] += 1;
        }
        assert_eq!(seen[1], 0, "a zero weight is never chosen");
        assert!(seen[2] > seen[0] * 2, "{seen:?}");
    }
}

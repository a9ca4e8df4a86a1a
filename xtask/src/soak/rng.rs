//! A small seeded PRNG (SplitMix64): the same seed gives the same fault
//! schedule and the same stream of choices for each actor. Not for secrets.

#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    #[cfg(test)]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// An independent stream for `lane` (an actor, the fault schedule).
    pub fn fork(seed: u64, lane: u64) -> Self {
        let mut base = Self(seed ^ lane.wrapping_mul(0xA076_1D64_78BD_642F));
        Self(base.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..high` (`low` when the range is empty).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        if high <= low { low } else { low + self.next_u64() % (high - low) }
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 100) < percent
    }

    /// An index chosen by weight (each weight ≥ 0, their sum > 0).
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut pick = self.range(0, total.max(1));
        for (i, w) in weights.iter().enumerate() {
            if pick < *w {
                return i;
            }
            pick -= w;
        }
        weights.len().saturating_sub(1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        match items.len() {
            0 => None,
            n => items.get(self.range(0, n as u64) as usize),
        }
    }

    /// Fisher–Yates in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.range(0, i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// An amount in cents from `low` to `high` cents, as `"12.34"`.
    pub fn cents(&mut self, low: u64, high: u64) -> String {
        let c = self.range(low, high + 1);
        format!("{}.{:02}", c / 100, c % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn the_same_seed_gives_the_same_stream_and_another_seed_another() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = Rng::new(8);
            (0..5).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn ranges_stay_within_bounds_and_weights_pick_only_positive_entries() {
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            assert!((3..9).contains(&r.range(3, 9)));
            assert_ne!(r.weighted(&[0, 5, 0, 1]), 0);
        }
        assert_eq!(r.range(4, 4), 4);
        assert_eq!(r.cents(1234, 1234), "12.34");
    }
}

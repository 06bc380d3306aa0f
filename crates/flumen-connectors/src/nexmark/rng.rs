//! A small, fast, counter-seeded random generator: every generator event gets
//! its own stream seeded by (seed, event number), so an event's values do not
//! depend on which split generates it.

/// wyrand: one multiply per draw, good statistical quality for a benchmark
/// generator, and trivially seekable.
pub(crate) struct Rng(u64);

fn mix(mut z: u64) -> u64 {
    // splitmix64 finaliser.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `value` (uniform over all 64-bit values) scaled to `0..bound`.
#[inline]
fn scale(value: u64, bound: u64) -> u64 {
    ((u128::from(value) * u128::from(bound)) >> 64) as u64
}

impl Rng {
    /// The stream of event `n` under `seed`.
    pub(crate) fn for_event(seed: u64, n: u64) -> Self {
        Rng(mix(seed ^ mix(n.wrapping_add(0x9e37_79b9_7f4a_7c15))))
    }

    /// The next 64 random bits.
    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// Uniform in `0..bound` (`bound > 0`).
    #[inline]
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        scale(self.next_u64(), bound)
    }

    /// What [`Rng::below`] would return, taken from the stream only when
    /// `take` (otherwise the stream is left as it was): a draw made on one
    /// side of a coin flip, computed on both sides so that no branch waits
    /// on the flip, which no predictor can guess.
    #[inline]
    pub(crate) fn below_if(&mut self, bound: u64, take: bool) -> u64 {
        let before = self.0;
        let value = self.next_u64();
        self.0 = std::hint::select_unpredictable(take, self.0, before);
        scale(value, bound)
    }

    /// Uniform in `[0, 1)`.
    #[inline]
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut seen = [false; 7];
        for n in 0..1000 {
            let v = Rng::for_event(42, n).below(7);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn a_draw_not_taken_leaves_the_stream_as_it_was() {
        for n in 0..1000 {
            let (mut taken, mut plain) = (Rng::for_event(3, n), Rng::for_event(3, n));
            assert_eq!(taken.below_if(1000, true), plain.below(1000));
            let mut skipped = Rng::for_event(3, n);
            let _ = skipped.below_if(1000, false);
            assert_eq!(skipped.next_u64(), Rng::for_event(3, n).next_u64());
            assert_eq!(taken.next_u64(), plain.next_u64());
        }
    }

    #[test]
    fn streams_are_reproducible() {
        let a: Vec<u64> = (0..5).map(|n| Rng::for_event(1, n).next_u64()).collect();
        let b: Vec<u64> = (0..5).map(|n| Rng::for_event(1, n).next_u64()).collect();
        assert_eq!(a, b);
        assert_ne!(
            Rng::for_event(1, 0).next_u64(),
            Rng::for_event(2, 0).next_u64()
        );
    }
}

//! Groups of near-equal values: in a sorted slice, the best run of items whose values all lie
//! within a spread of the run's smallest. One sliding window serves the connection's cadence
//! (`model::cadence`), the path's dominant cadence and the duration limit (`inference`).

use std::ops::Range;

/// How far apart values of one group may lie: `share` of the group's smallest value, or
/// `slack` (in the same unit), whichever is larger.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub share: f64,
    pub slack: f64,
}

impl Spread {
    /// Whether `high` belongs to a group whose smallest value is `low` (`low <= high`).
    pub fn holds(self, low: f64, high: f64) -> bool {
        high - low <= (low * self.share).max(self.slack)
    }
}

/// The best group of `sorted` (ascending by `value`), as a range of it: among the widest runs
/// that `spread` allows, the one `rank` places highest, the first (smallest values) on ties.
/// None for an empty slice.
pub fn best<T, K: Ord>(
    sorted: &[T],
    value: impl Fn(&T) -> f64,
    spread: Spread,
    rank: impl Fn(&[T]) -> K,
) -> Option<Range<usize>> {
    let mut best: Option<(K, Range<usize>)> = None;
    let mut start = 0;
    for end in 0..sorted.len() {
        while !spread.holds(value(&sorted[start]), value(&sorted[end])) {
            start += 1;
        }
        let score = rank(&sorted[start..=end]);
        if best.as_ref().is_none_or(|(top, _)| score > *top) {
            best = Some((score, start..end + 1));
        }
    }
    best.map(|(_, range)| range)
}

/// The median of sorted values (the mean of the middle two for an even count); None for none.
pub fn median(sorted: &[f64]) -> Option<f64> {
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[middle]),
        _ => Some(f64::midpoint(sorted[middle - 1], sorted[middle])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_PERCENT: Spread = Spread {
        share: 0.10,
        slack: 0.0,
    };

    fn largest(sorted: &[f64], spread: Spread) -> Option<Vec<f64>> {
        best(sorted, |&v| v, spread, <[f64]>::len).map(|range| sorted[range].to_vec())
    }

    #[test]
    fn the_largest_group_within_the_spread_of_its_smallest() {
        assert_eq!(
            largest(&[1.0, 10.0, 10.5, 10.9, 11.5, 30.0], TEN_PERCENT),
            Some(vec![10.0, 10.5, 10.9])
        );
        assert_eq!(largest(&[], TEN_PERCENT), None);
        // Ties go to the smallest values.
        assert_eq!(largest(&[1.0, 5.0], TEN_PERCENT), Some(vec![1.0]));
        // The slack joins values closer than the share would.
        let slack = Spread {
            share: 0.10,
            slack: 1.0,
        };
        assert_eq!(largest(&[2.0, 2.9, 4.0], slack), Some(vec![2.0, 2.9]));
    }

    #[test]
    fn the_rank_decides_between_groups() {
        // (value, weight): two groups of two, the second weighs more.
        let items = [(1.0, 1), (1.05, 1), (5.0, 3), (5.1, 2)];
        let heaviest = best(
            &items,
            |item| item.0,
            TEN_PERCENT,
            |group| (group.len(), group.iter().map(|item| item.1).sum::<u32>()),
        );
        assert_eq!(heaviest, Some(2..4));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[2.9, 3.1]), Some(3.0));
        assert_eq!(median(&[1.0, 2.0, 9.0]), Some(2.0));
    }
}

//! Medians and spreads of repeated measurements.

use serde::Serialize;

/// The distribution of a handful of samples: median, quartiles and extremes. Empty (n = 0) when
/// nothing was measured, with NaN values that the smoke check rejects.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub p25: f64,
    pub p75: f64,
}

impl Spread {
    pub fn of(samples: &[f64]) -> Self {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return Self {
                n: 0,
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                p25: f64::NAN,
                p75: f64::NAN,
            };
        }
        Self {
            n: sorted.len(),
            median: quantile(&sorted, 0.5),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            p25: quantile(&sorted, 0.25),
            p75: quantile(&sorted, 0.75),
        }
    }

    /// Whether the measurement produced numbers.
    pub fn is_measured(&self) -> bool {
        self.n > 0 && self.median.is_finite()
    }
}

/// Linear interpolation between the closest ranks of sorted, non-empty samples.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    let weight = position - below as f64;
    sorted[below] * (1.0 - weight) + sorted[above] * weight
}

/// `a / b`, NaN when `b` is zero or either is not a number.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 || !a.is_finite() || !b.is_finite() {
        f64::NAN
    } else {
        a / b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quartiles_interpolate() {
        let spread = Spread::of(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!(spread.n, 4);
        assert_eq!(spread.median, 2.5);
        assert_eq!(spread.min, 1.0);
        assert_eq!(spread.max, 4.0);
        assert_eq!(spread.p25, 1.75);
        assert_eq!(spread.p75, 3.25);
    }

    #[test]
    fn one_sample_is_its_own_spread() {
        let spread = Spread::of(&[7.0]);
        assert_eq!((spread.median, spread.min, spread.max), (7.0, 7.0, 7.0));
        assert!(spread.is_measured());
    }

    #[test]
    fn nothing_measured_is_not_a_number() {
        let spread = Spread::of(&[f64::NAN]);
        assert_eq!(spread.n, 0);
        assert!(!spread.is_measured());
    }

    #[test]
    fn ratio_of_zero_is_not_a_number() {
        assert!(ratio(1.0, 0.0).is_nan());
        assert_eq!(ratio(3.0, 2.0), 1.5);
    }
}

//! Medians, ranges and paired ratios over benchmark samples.

/// Median, min and max; NaN for no samples.
pub fn median_min_max(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let median = match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    (
        median,
        v.first().copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN),
    )
}

/// A set of samples of one quantity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn summarize(values: &[f64]) -> Option<Summary> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return None;
    }
    let n = finite.len();
    let (median, min, max) = median_min_max(finite);
    Some(Summary {
        median,
        min,
        max,
        n,
    })
}

/// Ratios `a / b` of samples taken in the same round, paired by round: the
/// verdict compares runs made side by side, not medians of drifting runs.
pub fn paired_ratios(a: &[(usize, f64)], b: &[(usize, f64)]) -> Vec<f64> {
    a.iter()
        .filter_map(|(round, x)| {
            b.iter()
                .find(|(r, _)| r == round)
                .and_then(|(_, y)| (*y != 0.0).then(|| x / y))
        })
        .collect()
}

/// A number with 3 significant digits and a k/M suffix: 12.3k, 1.23M, 456.
pub fn human(value: f64) -> String {
    let (scaled, suffix) = match value.abs() {
        v if v >= 1e6 => (value / 1e6, "M"),
        v if v >= 1e4 => (value / 1e3, "k"),
        _ => (value, ""),
    };
    let digits = match scaled.abs() {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        _ => 2,
    };
    format!("{scaled:.digits$}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median_min_max(vec![3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(median_min_max(vec![4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        assert!(median_min_max(vec![]).0.is_nan());
    }

    #[test]
    fn summaries_skip_non_finite_samples() {
        let s = summarize(&[1.0, f64::NAN, 5.0, 3.0]);
        assert_eq!(
            s,
            Some(Summary {
                median: 3.0,
                min: 1.0,
                max: 5.0,
                n: 3
            })
        );
        assert_eq!(summarize(&[f64::INFINITY]), None);
    }

    #[test]
    fn ratios_pair_samples_of_the_same_round() {
        let a = [(1, 10.0), (2, 30.0), (3, 7.0)];
        let b = [(2, 10.0), (1, 5.0), (4, 1.0)];
        assert_eq!(paired_ratios(&a, &b), [2.0, 3.0]);
        assert!(paired_ratios(&a, &[(1, 0.0)]).is_empty());
    }

    #[test]
    fn human_numbers_keep_three_digits() {
        assert_eq!(human(123_456.0), "123k");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(1_234.4), "1234");
        assert_eq!(human(2_345_678.0), "2.35M");
        assert_eq!(human(9.876), "9.88");
        assert_eq!(human(45.67), "45.7");
    }
}

//! Summary statistics of latency samples.

use std::time::Duration;

/// Latency samples of one measurement, in the order they were taken.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    values: Vec<Duration>,
}

impl Samples {
    pub fn push(&mut self, value: Duration) {
        self.values.push(value);
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Returns the samples in the order they were taken.
    pub fn values(&self) -> &[Duration] {
        &self.values
    }

    pub fn median(&self) -> Option<Duration> {
        self.percentile(50.0)
    }

    pub fn max(&self) -> Option<Duration> {
        self.values.iter().max().copied()
    }

    /// Returns the nearest-rank percentile `p` (0 to 100).
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.values.is_empty() {
            return None;
        }
        let mut sorted = self.values.clone();
        sorted.sort();
        let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
        Some(sorted[rank.clamp(1, sorted.len()) - 1])
    }
}

/// Formats a duration in the unit that suits it: `0.42 ms`, `12.3 ms`,
/// `1.52 s`.
pub fn format_duration(value: Duration) -> String {
    let millis = value.as_secs_f64() * 1000.0;
    if millis < 10.0 {
        format!("{millis:.2} ms")
    } else if millis < 1000.0 {
        format!("{millis:.1} ms")
    } else {
        format!("{:.2} s", value.as_secs_f64())
    }
}

/// Formats an optional duration, `-` when there are no samples.
pub fn format_optional(value: Option<Duration>) -> String {
    value.map_or_else(|| "-".to_string(), format_duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(millis: &[u64]) -> Samples {
        let mut samples = Samples::default();
        for &value in millis {
            samples.push(Duration::from_millis(value));
        }
        samples
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let samples = samples(&[5, 1, 4, 2, 3]);
        assert_eq!(samples.median(), Some(Duration::from_millis(3)));
        assert_eq!(samples.percentile(99.0), Some(Duration::from_millis(5)));
        assert_eq!(samples.percentile(0.0), Some(Duration::from_millis(1)));
        assert_eq!(samples.max(), Some(Duration::from_millis(5)));
    }

    #[test]
    fn empty_samples_have_no_median() {
        assert_eq!(Samples::default().median(), None);
        assert_eq!(format_optional(None), "-");
    }

    #[test]
    fn durations_format_by_size() {
        assert_eq!(format_duration(Duration::from_micros(420)), "0.42 ms");
        assert_eq!(format_duration(Duration::from_micros(12_340)), "12.3 ms");
        assert_eq!(format_duration(Duration::from_millis(1520)), "1.52 s");
    }
}

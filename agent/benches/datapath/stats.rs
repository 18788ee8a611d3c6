//! Summaries of repeated samples.
use serde_json::json;

use crate::Figures;

/// The value at quantile `q` (nearest rank) of `samples`.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

pub fn median(samples: &[f64]) -> f64 {
    quantile(samples, 0.5)
}

pub fn min(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn max(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// Rounded for the report.
pub fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// `key` (the median of `samples`), `key_min` and `key_max`, rounded to `digits`.
pub fn insert_spread(f: &mut Figures, key: &str, samples: &[f64], digits: i32) {
    f.insert(key.to_owned(), json!(round(median(samples), digits)));
    f.insert(format!("{key}_min"), json!(round(min(samples), digits)));
    f.insert(format!("{key}_max"), json!(round(max(samples), digits)));
}

/// `rr_ratio_<name>`, `crr_ratio_<name>` and `throughput_ratio_<name>` with
/// their spreads, from each round's (rr, crr, throughput) ratios.
pub fn insert_ratios<'a>(f: &mut Figures, ratios: impl IntoIterator<Item = (&'a str, &'a [[f64; 3]])>) {
    for (name, per_round) in ratios {
        for (i, kind) in ["rr", "crr", "throughput"].iter().enumerate() {
            let v: Vec<f64> = per_round.iter().map(|r| r[i]).collect();
            insert_spread(f, &format!("{kind}_ratio_{name}"), &v, 3);
        }
    }
}

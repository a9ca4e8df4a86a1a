//! Reading Prometheus text: one sample by name and labels.

/// The value of the sample named `name` whose labels include every pair of
/// `labels` (others may be there too); `None` when no line matches.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if series_name != name {
            return None;
        }
        let have: Vec<(&str, &str)> = label_text
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        labels.iter().all(|want| have.contains(want)).then(|| value.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn a_sample_is_found_by_name_and_labels() {
        let text = "# TYPE kobatela_jobs gauge\nkobatela_jobs{kind=\"purchase\",status=\"dead\"} 1\n\
                    kobatela_jobs{kind=\"purchase\",status=\"queued\"} 0\nkobatela_up 2.5\n";
        assert_eq!(sample(text, "kobatela_jobs", &[("kind", "purchase"), ("status", "dead")]), Some(1.0));
        assert_eq!(sample(text, "kobatela_jobs", &[("status", "queued")]), Some(0.0));
        assert_eq!(sample(text, "kobatela_jobs", &[("kind", "payout")]), None);
        assert_eq!(sample(text, "kobatela_up", &[]), Some(2.5));
        assert_eq!(sample(text, "kobatela_job", &[]), None);
    }
}

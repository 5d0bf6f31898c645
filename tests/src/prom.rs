//! Reading the Prometheus text a proxy serves on `/metrics`.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The exemplar of each sample that has one: (sample, exemplar labels,
/// exemplar value).
pub fn exemplars(text: &str) -> Vec<(Sample, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter_map(|line| {
            let (sample, exemplar) = line.split_once(" # {")?;
            let sample = parse(sample).pop()?;
            let (labels, rest) = exemplar.split_once('}')?;
            let value = rest.split_whitespace().next()?.parse().ok()?;
            Some((sample, parse_labels(labels)?, value))
        })
        .collect()
}

/// Every sample of the exposition (comments skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            // An OpenMetrics exemplar follows ` # `: not part of the sample.
            let line = line.split(" # ").next()?;
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
                None => (series, BTreeMap::new()),
            };
            Some(Sample {
                name: name.to_string(),
                labels,
                value,
            })
        })
        .collect()
}

fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        // Values escape `"` and `\` with a backslash.
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        labels.insert(key.trim_start_matches(',').to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

/// The sum of the samples named `name` whose labels include `with`.
pub fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_labels_and_values() {
        let text = "# HELP x y\nferry_a_total{reporter=\"source\",path=\"a\\\"b\"} 3\nferry_b 1.5\n# EOF\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].labels["path"], "a\"b");
        assert_eq!(
            sum(&samples, "ferry_a_total", &[("reporter", "source")]),
            3.0
        );
        assert_eq!(sum(&samples, "ferry_a_total", &[("reporter", "x")]), 0.0);
        assert_eq!(samples[1].value, 1.5);
    }
}

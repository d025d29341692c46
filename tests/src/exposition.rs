//! A strict reader of the Prometheus text exposition, in both of its
//! formats, so a test checks the format of what `netlab metrics` serves
//! and reads its values back (`promtool` is not on every machine).
//!
//! Checked: every sample belongs to a family declared by `# HELP` and
//! `# TYPE` before it; names and label names have the allowed characters;
//! label values are quoted with only `\\`, `\"` and `\n` escapes; values
//! are numbers; no sample repeats. OpenMetrics also: counter samples are
//! `NAME_total` under `# TYPE NAME counter`, and `# EOF` ends the text.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail, ensure};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Classic,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of an exposition, after checking its format.
pub fn parse(text: &str, format: Format) -> Result<Vec<Sample>> {
    let mut families: BTreeMap<String, (bool, Option<String>)> = BTreeMap::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut ended = false;
    for (n, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        ensure!(!ended, "{}: text after # EOF", at());
        if line == "# EOF" {
            ensure!(
                format == Format::OpenMetrics,
                "{}: # EOF in the classic format",
                at()
            );
            ended = true;
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').unwrap_or((rest, ""));
            ensure!(is_name(name), "{}: bad metric name", at());
            families.entry(name.to_owned()).or_default().0 = true;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').with_context(at)?;
            ensure!(is_name(name), "{}: bad metric name", at());
            ensure!(
                [
                    "counter",
                    "gauge",
                    "untyped",
                    "unknown",
                    "summary",
                    "histogram",
                    "info"
                ]
                .contains(&kind),
                "{}: unknown type {kind}",
                at()
            );
            let family = families.entry(name.to_owned()).or_default();
            ensure!(family.1.is_none(), "{}: second TYPE", at());
            family.1 = Some(kind.to_owned());
        } else if line.starts_with('#') {
            ensure!(
                format == Format::Classic,
                "{}: OpenMetrics has no comments",
                at()
            );
        } else if line.is_empty() {
            ensure!(
                format == Format::Classic,
                "{}: OpenMetrics has no empty lines",
                at()
            );
        } else {
            let sample = parse_sample(line).with_context(at)?;
            let family = family_of(&sample.name, &families, format).with_context(at)?;
            ensure!(
                families.get(&family).is_some_and(|f| f.0),
                "{}: family {family} has no HELP",
                at()
            );
            ensure!(
                !samples
                    .iter()
                    .any(|s| s.name == sample.name && s.labels == sample.labels),
                "{}: repeated sample",
                at()
            );
            samples.push(sample);
        }
    }
    ensure!(
        ended || format == Format::Classic,
        "OpenMetrics text must end with # EOF"
    );
    Ok(samples)
}

/// The family a sample belongs to, by its name and the declared types.
fn family_of(
    sample: &str,
    families: &BTreeMap<String, (bool, Option<String>)>,
    format: Format,
) -> Result<String> {
    let kind = |name: &str| families.get(name).and_then(|f| f.1.clone());
    if format == Format::OpenMetrics
        && let Some(base) = sample.strip_suffix("_total")
        && kind(base).as_deref() == Some("counter")
    {
        return Ok(base.to_owned());
    }
    match kind(sample) {
        Some(k) if k == "counter" && format == Format::OpenMetrics => {
            bail!("OpenMetrics counter samples end in _total, not {sample}")
        }
        Some(_) => Ok(sample.to_owned()),
        None => bail!("sample {sample} has no # TYPE before it"),
    }
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_sample(line: &str) -> Result<Sample> {
    let name_end = line
        .find(['{', ' '])
        .context("a sample is NAME[{LABELS}] VALUE")?;
    let name = &line[..name_end];
    ensure!(is_name(name), "bad metric name {name:?}");
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            let (start, c) = chars.next().context("unterminated labels")?;
            if c == '}' {
                rest = &inner[start + 1..];
                break;
            }
            let eq = inner[start..].find('=').context("label without =")? + start;
            let key = &inner[start..eq];
            ensure!(is_name(key) && !key.contains(':'), "bad label name {key:?}");
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            ensure!(
                chars.next().map(|(_, c)| c) == Some('"'),
                "label value not quoted"
            );
            let mut value = String::new();
            loop {
                match chars.next().context("unterminated label value")?.1 {
                    '"' => break,
                    '\\' => match chars.next().context("dangling escape")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => bail!("bad escape \\{other}"),
                    },
                    c => value.push(c),
                }
            }
            ensure!(
                labels.insert(key.to_owned(), value).is_none(),
                "repeated label {key}"
            );
            match chars.peek() {
                Some((_, ',')) => {
                    chars.next();
                }
                Some((_, '}')) => {}
                _ => bail!("labels are separated by commas"),
            }
        }
    }
    let value_text = rest
        .strip_prefix(' ')
        .context("one space before the value")?;
    // A timestamp may follow; netlab writes none.
    let value_text = value_text.split(' ').next().unwrap_or("");
    let value: f64 = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().with_context(|| format!("value {v:?}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The value of the one sample `name` whose labels include `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.value),
        [] => bail!("no sample {name} {labels:?}"),
        many => bail!("{} samples {name} {labels:?}", many.len()),
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    const GOOD: &str = "# HELP x_packets Packets.\n# TYPE x_packets counter\n\
        x_packets_total{lab=\"a\",iface=\"q\\\"uote\"} 3\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n# EOF\n";

    #[test]
    fn reads_openmetrics() {
        let samples = parse(GOOD, Format::OpenMetrics).unwrap();
        assert_eq!(
            value(&samples, "x_packets_total", &[("iface", "q\"uote")]).unwrap(),
            3.0
        );
        assert_eq!(value(&samples, "x_up", &[]).unwrap(), 1.0);
    }

    #[test]
    fn refuses_what_is_malformed() {
        for (bad, format) in [
            (GOOD.replace("# EOF\n", ""), Format::OpenMetrics),
            (
                GOOD.replace("x_packets_total", "x_packets"),
                Format::OpenMetrics,
            ),
            (GOOD.replace("# HELP x_up Up.\n", ""), Format::OpenMetrics),
            (GOOD.replace("} 3", "} three"), Format::OpenMetrics),
            (GOOD.replace("lab=\"a\"", "lab=a"), Format::OpenMetrics),
            (GOOD.replace("x_up 1", "x-up 1"), Format::OpenMetrics),
            (GOOD.to_owned(), Format::Classic),
        ] {
            assert!(parse(&bad, format).is_err(), "accepted:\n{bad}");
        }
    }
}

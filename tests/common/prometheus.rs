//! A parser for the Prometheus text exposition format, enough to read one
//! series (or the sum of several) or a histogram out of sluice's `/metrics`.

/// One sample: name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A metric name, its labels, and the unparsed rest of the line.
type Series<'a> = (String, Vec<(String, String)>, &'a str);

/// Parses `name{a="b",c="d"}` (labels optional); returns the rest of input.
fn parse_series(s: &str) -> Result<Series<'_>, String> {
    let s = s.trim_start();
    let name_end = s
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(s.len());
    let name = s[..name_end].to_string();
    if name.is_empty() {
        return Err(format!("no metric name in {s:?}"));
    }
    let mut rest = &s[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest
                .find('=')
                .ok_or_else(|| format!("bad labels in {s:?}"))?;
            let key = rest[..eq].trim().to_string();
            rest = rest[eq + 1..].trim_start();
            let r = rest
                .strip_prefix('"')
                .ok_or_else(|| format!("unquoted label value in {s:?}"))?;
            let mut value = String::new();
            let mut chars = r.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c2)) => value.push(c2),
                        None => break,
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end.ok_or_else(|| format!("unterminated label value in {s:?}"))?;
            rest = &r[end + 1..];
            labels.push((key, value));
        }
    }
    Ok((name, labels, rest))
}

/// Parses Prometheus text exposition format (comments skipped).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let (name, labels, rest) = parse_series(l).ok()?;
            let v = rest.split_whitespace().next()?;
            let value = match v {
                "+Inf" | "Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                v => v.parse().ok()?,
            };
            Some(Sample {
                name,
                labels,
                value,
            })
        })
        .collect()
}

/// Sum of the series named in `query` whose labels include the query's.
pub fn metric_value(text: &str, query: &str) -> Option<f64> {
    let (qname, qlabels, _) =
        parse_series(query).unwrap_or_else(|e| panic!("bad metric query {query:?}: {e}"));
    let mut found = None;
    for s in parse_prometheus(text) {
        if s.name != qname {
            continue;
        }
        if qlabels
            .iter()
            .all(|(k, v)| s.labels.iter().any(|(k2, v2)| k2 == k && v2 == v))
        {
            *found.get_or_insert(0.0) += s.value;
        }
    }
    found
}

/// A Prometheus histogram summed over its label sets: cumulative
/// (le, count) pairs in ascending `le`, sum, count.
#[derive(Debug, Clone)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Histogram {
    /// The histogram `name` (its `_bucket`, `_sum` and `_count` series).
    pub fn parse(text: &str, name: &str) -> Histogram {
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for s in parse_prometheus(text)
            .into_iter()
            .filter(|s| s.name == bucket)
        {
            let Some((_, le)) = s.labels.iter().find(|(k, _)| k == "le") else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            match buckets.iter_mut().find(|(l, _)| *l == le) {
                Some((_, count)) => *count += s.value,
                None => buckets.push((le, s.value)),
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram {
            buckets,
            sum: metric_value(text, &format!("{name}_sum")).unwrap_or(0.0),
            count: metric_value(text, &format!("{name}_count")).unwrap_or(0.0),
        }
    }

    /// Like PromQL's histogram_quantile: linear inside the bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    return Some(prev.0);
                }
                let span = c - prev.1;
                let frac = if span > 0.0 {
                    (rank - prev.1) / span
                } else {
                    1.0
                };
                return Some(prev.0 + (le - prev.0) * frac);
            }
            prev = (le, c);
        }
        Some(prev.0)
    }
}

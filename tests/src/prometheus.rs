//! The one reader of the agent's `/metrics` text for the tests and the benchmark.

use std::collections::BTreeMap;

/// The agent's count of connections that ended, by service, role, path and end.
pub const CONNECTIONS_CLOSED: &str = "idlecut_connections_closed_total";

/// `idlecut_connections_closed_total` for one service, role, path and way of ending.
pub fn connections_closed(
    scrape: &Scrape,
    service: &str,
    role: &str,
    path: &str,
    end: &str,
) -> f64 {
    scrape.value(
        CONNECTIONS_CLOSED,
        &[
            ("service", service),
            ("role", role),
            ("path", path),
            ("end", end),
        ],
    )
}

/// A parsed `/metrics` exposition.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples.push((name.to_owned(), labels, value));
        }
        Self {
            text: text.to_owned(),
            samples,
        }
    }

    /// The value of the series with exactly these labels, if it exists.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == wanted)
            .map(|(_, _, v)| *v)
    }

    /// Like `get`, with a missing series read as 0.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The sum over series of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.including(name, labels).map(|(_, _, v)| v).sum()
    }

    /// Like `sum`, over the series whose `path` label is one of `paths` (a test's own paths:
    /// connections left over by other tests, on other paths, must not count).
    pub fn sum_in(&self, name: &str, labels: &[(&str, &str)], paths: &[String]) -> f64 {
        self.including(name, labels)
            .filter(|(_, l, _)| l.get("path").is_some_and(|p| paths.contains(p)))
            .map(|(_, _, v)| v)
            .sum()
    }

    /// The samples of `name` whose labels include all of `labels`.
    fn including<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a (String, BTreeMap<String, String>, f64)> {
        self.samples.iter().filter(move |(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
        })
    }

    /// The first series (name and labels) with a label value that contains `needle`: how a
    /// test tells that something it must not see (an unwatched port) reached a label. The
    /// text itself is no place to look, a sample's value may hold the same digits.
    pub fn label_containing(&self, needle: &str) -> Option<(String, BTreeMap<String, String>)> {
        self.samples
            .iter()
            .find(|(_, labels, _)| labels.values().any(|value| value.contains(needle)))
            .map(|(name, labels, _)| (name.clone(), labels.clone()))
    }

    /// Every label set of `name`.
    pub fn series(&self, name: &str) -> Vec<BTreeMap<String, String>> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, _)| l.clone())
            .collect()
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let end = after.find('"').expect("closing quote");
        labels.insert(
            key.trim_start_matches(',').to_owned(),
            after[..end].to_owned(),
        );
        rest = &after[end + 1..];
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_parser_reads_labels_and_values() {
        let scrape = Scrape::parse(
            "# TYPE a counter\na_total{service=\"imap\",role=\"client\",path=\"10.0.0.0/24\"} 3\nb 1.5\n# EOF\n",
        );
        assert_eq!(
            scrape.get(
                "a_total",
                &[
                    ("service", "imap"),
                    ("role", "client"),
                    ("path", "10.0.0.0/24")
                ]
            ),
            Some(3.0)
        );
        assert_eq!(scrape.get("a_total", &[("service", "imap")]), None);
        assert_eq!(scrape.sum("a_total", &[("service", "imap")]), 3.0);
        assert_eq!(scrape.get("b", &[]), Some(1.5));
    }
}

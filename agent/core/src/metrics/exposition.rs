//! What the scraper is served besides the registry's own encoding.

/// The exposition without its exemplars (` # {...} value [timestamp]` after a sample), for a
/// scraper that did not ask for OpenMetrics.
pub fn without_exemplars(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let sample = match line.find(" # {") {
            Some(at) if !line.starts_with('#') => &line[..at],
            _ => line,
        };
        out.push_str(sample);
        out.push('\n');
    }
    out
}

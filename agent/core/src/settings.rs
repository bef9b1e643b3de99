//! The values of settings, each parsed by one function used for flags and the file alike, so
//! that a bad value gets the same one-line message whether it came from `--ports` or from
//! `ports = ...` in the file.

use std::{collections::BTreeMap, fmt, time::Duration};

/// The mail ports watched by default, with the service name each one reports as.
pub const DEFAULT_PORTS: &str = "25=smtp,110=pop3,143=imap,465=submissions,587=submission,674=acap,993=imaps,995=pop3s,4190=sieve";

/// Port -> service name, e.g. 143 -> "imap".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMap(BTreeMap<u16, String>);

impl PortMap {
    pub fn service(&self, port: u16) -> Option<&str> {
        self.0.get(&port).map(String::as_str)
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.keys().copied()
    }

    /// The service names, by port (a name given to several ports comes once per port).
    pub fn services(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.values().map(String::as_str)
    }
}

impl fmt::Display for PortMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (port, name) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{port}={name}")?;
        }
        Ok(())
    }
}

pub fn parse_ports(value: &str) -> Result<PortMap, String> {
    let mut ports = BTreeMap::new();
    for entry in value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let (port, name) = match entry.split_once('=') {
            Some((port, name)) => (port.trim(), name.trim()),
            None => (entry, entry),
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| format!("`{port}` is not a port number (1-65535) in `{entry}`"))?;
        let valid_name = !name.is_empty()
            && name.len() <= 32
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Err(format!(
                "`{name}` is not a service name (letters, digits, - and _, at most 32) in `{entry}`"
            ));
        }
        if ports.insert(port, name.to_owned()).is_some() {
            return Err(format!("port {port} is given twice"));
        }
    }
    if ports.is_empty() {
        return Err(
            "no ports given: expected PORT=NAME,... such as 143=imap,587=submission".into(),
        );
    }
    Ok(PortMap(ports))
}

fn check_prefix(bits: u8, max: u8) -> Result<u8, String> {
    if bits <= max {
        Ok(bits)
    } else {
        Err(format!("{bits} is not a prefix length (0-{max})"))
    }
}

fn parse_prefix(value: &str, max: u8) -> Result<u8, String> {
    let bits = value
        .parse::<u8>()
        .map_err(|_| format!("`{value}` is not a prefix length (0-{max})"))?;
    check_prefix(bits, max)
}

pub fn parse_ipv4_prefix(value: &str) -> Result<u8, String> {
    parse_prefix(value, 32)
}

pub fn parse_ipv6_prefix(value: &str) -> Result<u8, String> {
    parse_prefix(value, 128)
}

pub fn parse_max_paths(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=100_000).contains(&n) => Ok(n),
        _ => Err(format!("`{value}` is not a number of paths (1-100000)")),
    }
}

pub fn parse_recent_cuts(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n <= 100_000 => Ok(n),
        _ => Err(format!("`{value}` is not a number of cuts (0-100000)")),
    }
}

/// RFC 5382 REQ-5: a NAT must not cut an established connection idle for less than 2h04m
/// (7440 s). The default of the agent's `--req5-threshold` and of `idlecut check`'s.
pub const REQ5_THRESHOLD: &str = "2h4m";

pub fn parse_req5_threshold(value: &str) -> Result<Duration, String> {
    let threshold = parse_duration(value)?;
    if threshold.is_zero() {
        return Err(format!(
            "`{value}` is not a threshold: it must be longer than 0s"
        ));
    }
    Ok(threshold)
}

pub fn parse_scan_interval(value: &str) -> Result<Duration, String> {
    let interval = parse_duration(value)?;
    if interval < Duration::from_secs(1) {
        return Err(format!(
            "`{value}` is too short for a scan interval (at least 1s)"
        ));
    }
    Ok(interval)
}

pub fn parse_min_cuts(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(format!("`{value}` is not a number of cuts (1-1000)")),
    }
}

pub fn parse_min_idle_gap(value: &str) -> Result<Duration, String> {
    let gap = parse_duration(value)?;
    if gap < Duration::from_millis(100) {
        return Err(format!(
            "`{value}` is too short for an idle gap (at least 100ms)"
        ));
    }
    Ok(gap)
}

/// Parses durations written like `90s`, `2h4m`, `1h 30m`, `500ms`, `1d`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`{value}` is not a duration: write a number and a unit (ms, s, m, h, d), such as 90s or 2h4m"
        )
    };
    let mut total = Duration::ZERO;
    let mut rest = value.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        let part = u32::try_from(number)
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = rest[unit_len..].trim_start();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h4m"), Ok(Duration::from_secs(7440)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "90", "s", "1x", "-1s", "1.5s", "99999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn default_ports_parse_to_the_nine_mail_services() {
        let ports = parse_ports(DEFAULT_PORTS).unwrap();
        assert_eq!(ports.ports().count(), 9);
        assert_eq!(ports.service(143), Some("imap"));
        assert_eq!(ports.service(587), Some("submission"));
        assert_eq!(ports.service(80), None);
        assert_eq!(
            ports.to_string(),
            DEFAULT_PORTS.split(',').collect::<Vec<_>>().join(",")
        );
    }

    #[test]
    fn port_errors_say_what_is_wrong() {
        assert!(parse_ports("").unwrap_err().contains("no ports"));
        assert!(
            parse_ports("0=x")
                .unwrap_err()
                .contains("not a port number")
        );
        assert!(
            parse_ports("70000=x")
                .unwrap_err()
                .contains("not a port number")
        );
        assert!(
            parse_ports("143=im ap")
                .unwrap_err()
                .contains("not a service name")
        );
        assert!(parse_ports("143=a,143=b").unwrap_err().contains("twice"));
        assert_eq!(parse_ports("8143").unwrap().service(8143), Some("8143"));
    }
}

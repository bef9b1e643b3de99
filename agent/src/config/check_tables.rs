//! The config file's `[[check]]` tables: each is read by `check::ScheduledCheck`, and an error
//! is reported like every other config error, on one line naming the file, the line, the
//! table and the key.

use std::{collections::HashSet, path::Path};

use super::ConfigError;
use idlecut_check::{MAX_CHECKS, ScheduledCheck};

/// The name of the array of tables.
pub const KEY: &str = "check";

/// Every `[[check]]` table of the file's `text`, in order.
pub fn read(
    path: &Path,
    text: &str,
    value: &toml::Value,
) -> Result<Vec<ScheduledCheck>, ConfigError> {
    let fail = |at: Option<usize>, message: String| {
        let at = at.map(|line| format!(" (line {line})")).unwrap_or_default();
        ConfigError(format!("config file {}{at}: {message}", path.display()))
    };
    let toml::Value::Array(tables) = value else {
        return Err(fail(
            super::key_line(text, KEY),
            format!(
                "key `check`: expected [[check]] tables, found {}",
                value.type_str()
            ),
        ));
    };
    if tables.len() > MAX_CHECKS {
        return Err(fail(
            header_line(text, MAX_CHECKS),
            format!(
                "{} [[check]] tables: at most {MAX_CHECKS} (each adds series to the metrics)",
                tables.len()
            ),
        ));
    }
    let mut checks = Vec::with_capacity(tables.len());
    let mut targets = HashSet::new();
    for (index, table) in tables.iter().enumerate() {
        let toml::Value::Table(table) = table else {
            return Err(fail(
                None,
                format!("[[check]] #{}: expected a table", index + 1),
            ));
        };
        let check = ScheduledCheck::from_table(table).map_err(|err| {
            fail(
                key_in_table(text, index, &err.key).or_else(|| header_line(text, index)),
                format!(
                    "[[check]] #{}: key `{}`: {}",
                    index + 1,
                    err.key,
                    err.message
                ),
            )
        })?;
        if !targets.insert(check.label.clone()) {
            return Err(fail(
                key_in_table(text, index, "target"),
                format!(
                    "[[check]] #{}: key `target`: `{}` is checked twice; one [[check]] per \
                     target (its metrics' label)",
                    index + 1,
                    check.label
                ),
            ));
        }
        checks.push(check);
    }
    Ok(checks)
}

/// The 1-based line of the `index`-th `[[check]]` header.
fn header_line(text: &str, index: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| is_check_header(line))
        .nth(index)
        .map(|(number, _)| number + 1)
}

fn is_check_header(line: &str) -> bool {
    let line = line.trim();
    line.strip_prefix("[[")
        .and_then(|rest| rest.split_once("]]"))
        .is_some_and(|(name, after)| {
            name.trim() == KEY && (after.trim().is_empty() || after.trim().starts_with('#'))
        })
}

/// The line where `key` is set in the `index`-th `[[check]]` table, if it can be found.
fn key_in_table(text: &str, index: usize, key: &str) -> Option<usize> {
    let header = header_line(text, index)?;
    text.lines()
        .enumerate()
        .skip(header)
        .take_while(|(_, line)| !line.trim_start().starts_with('['))
        .find(|(_, line)| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|(number, _)| number + 1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn parse(text: &str) -> Result<Vec<ScheduledCheck>, ConfigError> {
        super::super::parse_file(Path::new("idlecut.toml"), text).map(|(_, checks)| checks)
    }

    #[test]
    fn check_tables_sit_beside_the_settings() {
        let text = "max_paths = 7\n\n[[check]]\ntarget = \"192.0.2.7:143\"\nevery = \"1m\"\n\
                    max_idle = \"20s\"\n\n[[check]] # the other one\ntarget = \"mail.example.net\"\n\n\
                    [ports]\n143 = \"imap\"\n";
        let checks = parse(text).unwrap();
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[0].label, "192.0.2.7:143");
        assert_eq!(checks[0].every, Duration::from_secs(60));
        assert_eq!(checks[1].label, "mail.example.net");
        assert_eq!(key_in_table(text, 0, "max_idle"), Some(6));
        assert_eq!(header_line(text, 1), Some(8));
        assert_eq!(key_in_table(text, 1, "max_idle"), None, "not in its table");
    }

    #[test]
    fn errors_name_the_file_line_table_and_key() {
        for (text, expected) in [
            (
                "[[check]]\ntarget = \"a\"\n\n[[check]]\ntarget = \"b\"\nevery = \"5s\"\n",
                "config file idlecut.toml (line 6): [[check]] #2: key `every`: 5 s is too often",
            ),
            (
                "[[check]]\nevery = \"1h\"\n",
                "config file idlecut.toml (line 1): [[check]] #1: key `target`: missing",
            ),
            (
                "[[check]]\ntarget = \"a\"\n[[check]]\ntarget = \"a\"\n",
                "(line 4): [[check]] #2: key `target`: `a` is checked twice",
            ),
            (
                "check = \"a\"\n",
                "(line 1): key `check`: expected [[check]] tables",
            ),
            ("check = [1]\n", "[[check]] #1: expected a table"),
        ] {
            let message = parse(text).unwrap_err().to_string();
            assert!(message.contains(expected), "{text:?} gave {message:?}");
            assert!(!message.contains('\n'), "{message:?} spans lines");
        }
        let many: String = (0..=MAX_CHECKS)
            .map(|i| format!("[[check]]\ntarget = \"h{i}\"\n"))
            .collect();
        let message = parse(&many).unwrap_err().to_string();
        assert!(message.contains("at most 32"), "{message}");
    }

    #[test]
    fn checks_take_the_agents_req5_threshold() {
        let dir = std::env::temp_dir().join(format!("idlecut-check-tables-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("idlecut.toml");
        std::fs::write(
            &file,
            "req5_threshold = \"1h\"\n[[check]]\ntarget = \"h\"\n",
        )
        .unwrap();
        let config = super::super::Config::load(&super::super::Flags {
            config: Some(file),
            ..super::super::Flags::default()
        })
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(config.checks.len(), 1);
        assert_eq!(
            config.checks[0].args.req5_threshold(),
            Duration::from_secs(3600)
        );
    }
}

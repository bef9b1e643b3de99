//! The config file's `[[check]]` tables: each is read by `check::ScheduledCheck`, and an error
//! is reported like every other config error, on one line naming the file, the line, the
//! table and the key. Lines come from the places toml gives each table and key.

use std::{collections::HashSet, fmt, path::Path};

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

use super::{ConfigError, file_error};
use idlecut_check::{MAX_CHECKS, ScheduledCheck};

/// The value of the file's `check` key, as far as reading the checks needs it: `[[check]]`
/// tables are an array of tables, each key with its place in the text; any other value is
/// only its type, for the error (serde's own "invalid type" would not say it in the words of
/// the other errors).
pub enum Node {
    Array(Vec<Spanned<Node>>),
    Table(Vec<(Spanned<String>, toml::Value)>),
    Other(&'static str),
}

impl Node {
    /// The type as `toml::Value::type_str` names it.
    fn type_str(&self) -> &'static str {
        match self {
            Node::Array(_) => "array",
            Node::Table(_) => "table",
            Node::Other(name) => name,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a TOML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Other("boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Other("integer"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Other("integer"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Other("float"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Other("string"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        // toml hands a datetime to a visitor as a map of one key, the only key of the file
        // that has no place in the text (so cannot be read as `Spanned`).
        match map.next_key::<Spanned<String>>() {
            Err(_) => return Ok(Node::Other("datetime")),
            Ok(None) => return Ok(Node::Table(entries)),
            Ok(Some(key)) => entries.push((key, map.next_value()?)),
        }
        while let Some(key) = map.next_key()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Table(entries))
    }
}

/// Every `[[check]]` table of the file's `check` key, in order.
pub fn read(
    path: &Path,
    text: &str,
    check: Spanned<Node>,
) -> Result<Vec<ScheduledCheck>, ConfigError> {
    let fail = |at: usize, message: String| file_error(path, text, Some(at), message);
    let at = check.span().start;
    let tables = match check.into_inner() {
        Node::Array(tables) => tables,
        other => {
            return Err(fail(
                at,
                format!(
                    "key `check`: expected [[check]] tables, found {}",
                    other.type_str()
                ),
            ));
        }
    };
    if let Some(first_too_many) = tables.get(MAX_CHECKS) {
        return Err(fail(
            first_too_many.span().start,
            format!(
                "{} [[check]] tables: at most {MAX_CHECKS} (each adds series to the metrics)",
                tables.len()
            ),
        ));
    }
    let mut checks = Vec::with_capacity(tables.len());
    let mut targets = HashSet::new();
    for (index, table) in tables.into_iter().enumerate() {
        let number = index + 1;
        // Its `[[check]]` header (or, in an inline array, its `{`).
        let header = table.span().start;
        let Node::Table(entries) = table.into_inner() else {
            return Err(fail(
                header,
                format!("[[check]] #{number}: expected a table"),
            ));
        };
        // Where `key` is set in this table, or its header if it is not.
        let key_at = |key: &str| {
            entries
                .iter()
                .find(|(name, _)| name.get_ref() == key)
                .map_or(header, |(name, _)| name.span().start)
        };
        let table: toml::Table = entries
            .iter()
            .map(|(key, value)| (key.get_ref().clone(), value.clone()))
            .collect();
        let check = ScheduledCheck::from_table(&table).map_err(|err| {
            fail(
                key_at(&err.key),
                format!(
                    "[[check]] #{number}: key `{}`: {}",
                    err.key.escape_debug(),
                    err.message
                ),
            )
        })?;
        if !targets.insert(check.label.clone()) {
            return Err(fail(
                key_at("target"),
                format!(
                    "[[check]] #{number}: key `target`: `{}` is checked twice; one [[check]] per \
                     target (its metrics' label)",
                    check.label
                ),
            ));
        }
        checks.push(check);
    }
    Ok(checks)
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
        // A key's line is its own in its table; a key the table lacks is placed at the
        // table's header, never at the same key of another table.
        let error = |from: &str, to: &str| parse(&text.replace(from, to)).unwrap_err().to_string();
        let message = error("\"20s\"", "\"ten\"");
        assert!(
            message.contains("(line 6): [[check]] #1: key `max_idle`"),
            "{message}"
        );
        let message = error("target = \"mail.example.net\"\n", "");
        assert!(
            message.contains("(line 8): [[check]] #2: key `target`: missing"),
            "{message}"
        );
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
        assert!(
            message.contains("(line 65): 33 [[check]] tables"),
            "placed at the 33rd table: {message}"
        );
    }

    /// The second table's key, not the first table's, nor its word in a comment or in a string
    /// (which the text search the spans replaced could take for it).
    #[test]
    fn a_key_error_in_the_second_table_names_its_own_line() {
        let text = "[[check]]\ntarget = \"a\"\nevery = \"6h\"\n\n[[check]] # every = \"5s\" below\n\
                    target = \"b\"\n# every = \"1h\" was the old one\nexpect_greeting = \"\"\"\n\
                    every = \"1h\"\n\"\"\"\nevery = \"5s\"\n";
        let message = parse(text).unwrap_err().to_string();
        assert_eq!(
            message,
            "config file idlecut.toml (line 11): [[check]] #2: key `every`: 5 s is too often \
             (at least 1m)"
        );
    }

    #[test]
    fn values_that_are_no_tables_are_named_by_their_type() {
        for (text, expected) in [
            (
                "\ncheck = 1979-05-27\n",
                "(line 2): key `check`: expected [[check]] tables, found datetime",
            ),
            ("check = true\n", "found boolean"),
            ("check = 1.5\n", "found float"),
            ("check = { target = \"a\" }\n", "found table"),
            (
                "[check]\ntarget = \"a\"\n",
                "(line 1): key `check`: expected [[check]] tables, found table",
            ),
            (
                "check = [{ target = \"a\" },\n  1979-05-27]\n",
                "(line 2): [[check]] #2: expected a table",
            ),
            ("check = [[1]]\n", "[[check]] #1: expected a table"),
        ] {
            let message = parse(text).unwrap_err().to_string();
            assert!(message.contains(expected), "{text:?} gave {message:?}");
        }
        let checks = parse("check = [{ target = \"a\" }, { target = \"b\" }]\n").unwrap();
        assert_eq!(
            checks.len(),
            2,
            "an inline array of tables is [[check]] tables too"
        );
    }

    #[test]
    fn checks_take_the_agents_req5_threshold() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(
            &mut file,
            b"req5_threshold = \"1h\"\n[[check]]\ntarget = \"h\"\n",
        )
        .unwrap();
        let config = super::super::Config::load(&super::super::Flags {
            config: Some(file.path().into()),
            ..super::super::Flags::default()
        })
        .unwrap();
        assert_eq!(config.checks.len(), 1);
        assert_eq!(
            config.checks[0].args.req5_threshold(),
            Duration::from_secs(3600)
        );
    }
}

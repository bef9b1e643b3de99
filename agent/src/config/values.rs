//! The values of the binary's own settings (the HTTP side and the log), parsed by one function
//! each for flags and file alike.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn parse_log_format(value: &str) -> Result<LogFormat, String> {
    match value {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("`{value}` is not a log format: text or json")),
    }
}

/// `--web-config`: the web configuration file, or `none` (plain HTTP, no authentication).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebConfigPath(pub Option<std::path::PathBuf>);

pub fn parse_web_config(value: &str) -> Result<WebConfigPath, String> {
    match value.trim() {
        "" => Err("an empty path is not a web config file (write none for no file)".into()),
        "none" => Ok(WebConfigPath(None)),
        path => Ok(WebConfigPath(Some(path.into()))),
    }
}

//! `[log]`: the format of the daemon's log lines and which of them are written.
//!
//! Input: the config file (`format`, `level`, `filters`). Output: a format choice and a filter
//! string in `RUST_LOG` syntax for `main.rs`; `RUST_LOG`, when set, wins over both filter keys.
//! Levels are a closed set, so every filter this section builds parses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[log]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` for people and the journal, `json` (one object per line) for log shippers.
    pub format: LogFormat,
    /// What is written from every module not named in `filters`.
    pub level: LogLevel,
    /// Per-module levels: `"mailflow::fetch" = "debug"`, `"rustls" = "warn"`.
    pub filters: BTreeMap<String, LogLevel>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl LogConfig {
    /// `level` and `filters` as a `RUST_LOG` string: `info,mailflow::fetch=debug`.
    pub fn directives(&self) -> String {
        let mut out = self.level.as_str().to_string();
        for (module, level) in &self.filters {
            out.push(',');
            out.push_str(module);
            out.push('=');
            out.push_str(level.as_str());
        }
        out
    }

    /// A module name that would not parse as a filter target (or would change the meaning
    /// of the whole filter string).
    pub fn bad_filter(&self) -> Option<&str> {
        self.filters.keys().map(String::as_str).find(|m| {
            m.is_empty() || m.chars().any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.')))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_and_filters_become_one_filter_string() {
        let config: LogConfig = toml::from_str(
            "format = \"json\"\nlevel = \"warn\"\n[filters]\n\"mailflow::fetch\" = \"debug\"\nrustls = \"off\"\n",
        )
        .unwrap();
        assert_eq!(config.format, LogFormat::Json);
        assert_eq!(config.directives(), "warn,mailflow::fetch=debug,rustls=off");
        assert_eq!(LogConfig::default().directives(), "info");
        assert!(toml::from_str::<LogConfig>("level = \"loud\"").is_err());
        assert!(toml::from_str::<LogConfig>("format = \"xml\"").is_err());
        let bad: LogConfig = toml::from_str("[filters]\n\"a,b\" = \"debug\"\n").unwrap();
        assert_eq!(bad.bad_filter(), Some("a,b"));
        assert_eq!(config.bad_filter(), None);
    }
}

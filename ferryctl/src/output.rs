//! How commands print: a table for people, JSON or YAML for programs
//! (the schemas are in docs/cli.md).

use serde::Serialize;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// Prints `value`: `table()` for [`Output::Table`], else JSON or YAML.
/// A value that cannot be written is reported as `ferryctl <command>: ...`
/// on stderr, and `false` returned.
pub fn print<T: Serialize>(
    value: &T,
    output: Output,
    table: impl FnOnce(&T) -> String,
    command: &str,
) -> bool {
    let text = match output {
        Output::Table => Ok(table(value)),
        Output::Json | Output::Yaml => structured(value, output),
    };
    match text {
        Ok(text) => {
            println!("{}", text.trim_end());
            true
        }
        Err(e) => {
            eprintln!("ferryctl {command}: {e}");
            false
        }
    }
}

/// Now, in seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `value` as YAML for [`Output::Yaml`], else as JSON (tables are each
/// command's own).
pub fn structured<T: Serialize>(value: &T, output: Output) -> Result<String, String> {
    match output {
        Output::Yaml => serde_yaml::to_string(value).map_err(|e| e.to_string()),
        Output::Json | Output::Table => {
            serde_json::to_string_pretty(value).map_err(|e| e.to_string())
        }
    }
}

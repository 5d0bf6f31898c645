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

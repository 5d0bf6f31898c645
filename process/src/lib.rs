//! What every Ferry daemon does at its process edge: log setup, shutdown
//! signals, duration flags ([`parse_duration`]), the one accept loop
//! ([`accept`]) and the admin HTTP server ([`admin`]) that serves metrics
//! and readiness. Shared by `ferry-proxy` and `ferry-control-plane`; libraries
//! (the model, the core) do not depend on it.

pub mod accept;
pub mod admin;
pub mod self_metrics;

/// Log output format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logs to stderr; what is logged comes from `RUST_LOG` ([`log_filter`]).
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let output = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => logs.with(output).init(),
        LogFormat::Json => logs.with(output.json()).init(),
    }
}

/// The log filter of `RUST_LOG`: a level, or comma-separated `target=level`
/// directives with an optional default level (`info,ferry::access=off`);
/// `info` when unset or empty. A value that does not parse is reported on
/// stderr, and `info` is used.
///
/// Targets and levels only: `tracing-subscriber`'s `EnvFilter` also
/// matches span and field values, with a regular-expression engine that
/// was a tenth of the proxy's resident code (docs/benchmarks.md).
pub fn log_filter(value: Option<&str>) -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let info = || Targets::new().with_default(LevelFilter::INFO);
    let Some(value) = value else {
        return info();
    };
    // Blank directives are skipped and each one trimmed (`Targets` would
    // read "info," as a last directive that turns everything but errors
    // off); span and field filters are refused, not taken for targets
    // that never match.
    let directives: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return info();
    }
    if let Some(span) = directives.iter().find(|d| d.contains(['[', '{'])) {
        eprintln!(
            "RUST_LOG={value:?}: {span:?} filters by span or field, which Ferry does not support (targets and levels only): logging at info"
        );
        return info();
    }
    directives.join(",").parse::<Targets>().unwrap_or_else(|e| {
        eprintln!("RUST_LOG={value:?} is not a log filter ({e}): logging at info");
        info()
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return tokio::signal::ctrl_c().await.unwrap_or_default(),
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Parses a duration flag: `500ms`, `5s`, `2m`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e} (e.g. 500ms, 5s, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::log_filter;
    use tracing::Level;

    #[test]
    fn rust_log_takes_levels_and_target_directives() {
        let default = log_filter(None);
        assert!(default.would_enable("ferry_proxy", &Level::INFO));
        assert!(!default.would_enable("ferry_proxy", &Level::DEBUG));
        assert!(log_filter(Some(" ")).would_enable("h2", &Level::INFO));
        let warn = log_filter(Some("warn"));
        assert!(warn.would_enable("ferry_proxy", &Level::WARN));
        assert!(!warn.would_enable("ferry_proxy", &Level::INFO));
        let directives = log_filter(Some("info,ferry::access=off,ferry_proxy::hbone=debug"));
        assert!(directives.would_enable("ferry_proxy", &Level::INFO));
        assert!(!directives.would_enable("ferry::access", &Level::ERROR));
        assert!(directives.would_enable("ferry_proxy::hbone::pool", &Level::DEBUG));
        assert!(!directives.would_enable("ferry_proxy::outbound", &Level::DEBUG));
    }

    #[test]
    fn a_bad_rust_log_falls_back_to_info() {
        for bad in ["ferry=loud", "ferry[conn]=debug", "h2{id=1}=trace"] {
            let filter = log_filter(Some(bad));
            assert!(filter.would_enable("ferry", &Level::INFO), "{bad}");
            assert!(!filter.would_enable("ferry", &Level::DEBUG), "{bad}");
        }
    }

    #[test]
    fn blank_directives_and_spaces_are_ignored() {
        let trailing = log_filter(Some("info,"));
        assert!(trailing.would_enable("ferry_proxy", &Level::INFO));
        let spaced = log_filter(Some("warn, ferry_proxy=debug ,"));
        assert!(spaced.would_enable("ferry_proxy", &Level::DEBUG));
        assert!(!spaced.would_enable("h2", &Level::INFO));
        assert!(log_filter(Some(" , ")).would_enable("h2", &Level::INFO));
    }
}

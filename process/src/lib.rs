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

/// Logs to stderr; the level comes from `RUST_LOG` (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
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

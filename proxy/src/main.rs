//! `ferry-proxy`: the node proxy.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use ferry_proxy::admin::{self, Admin};
use ferry_proxy::state::ConfigStore;
use ferry_proxy::xds::XdsClient;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(version, about = "Ferry node proxy")]
struct Args {
    /// Name of the node this proxy serves (as in the Node object).
    #[arg(long, env = "FERRY_NODE_NAME")]
    node: String,
    /// Control plane config stream URL.
    #[arg(
        long,
        env = "FERRY_CONTROL_PLANE",
        default_value = "http://127.0.0.1:15010"
    )]
    control_plane: String,
    /// Admin HTTP address (readiness, config dump).
    #[arg(long, env = "FERRY_ADMIN", default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn init_tracing(format: LogFormat) {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    anyhow::ensure!(!args.node.is_empty(), "--node must not be empty");
    let store = ConfigStore::new();
    let xds = XdsClient::new(&args.control_plane, &args.node, store.clone());
    let listener = admin::bind(args.admin)
        .await
        .with_context(|| format!("--admin {}: cannot bind", args.admin))?;
    tracing::info!(node = %args.node, admin = %listener.local_addr()?, control_plane = %args.control_plane, "proxy starting");
    let admin = Admin {
        node: args.node.clone(),
        store,
        xds: xds.clone(),
    };
    tokio::select! {
        _ = xds.run() => {}
        _ = admin.serve(listener) => {}
        _ = shutdown_signal() => tracing::info!("proxy stopping"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return tokio::signal::ctrl_c().await.unwrap_or_default(),
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

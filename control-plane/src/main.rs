//! `ferry-control-plane`: parses its flags into a
//! [`ferry_control_plane::config::Config`] and runs
//! [`ferry_control_plane::app::App`].

use clap::Parser;

/// jemalloc, as the proxy: the start-up burst (parsing every manifest or
/// the first list of every kind) leaves glibc's per-thread arenas holding
/// memory the control plane no longer uses; jemalloc gives it back (a
/// background purge after 1 s, `.cargo/config.toml`). See
/// docs/benchmarks.md, "Control plane start-up".
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use ferry_control_plane::app::App;
use ferry_control_plane::config::{Args, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_args(Args::parse())?;
    ferry_process::init_tracing(config.log_format);
    App::build(config).await?.run().await
}

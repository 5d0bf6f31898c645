//! `ferry-control-plane`: parses its flags into a
//! [`ferry_control_plane::config::Config`] and runs
//! [`ferry_control_plane::app::App`].

use clap::Parser;
use ferry_control_plane::app::App;
use ferry_control_plane::config::{Args, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_args(Args::parse())?;
    ferry_process::init_tracing(config.log_format);
    App::build(config).await?.run().await
}

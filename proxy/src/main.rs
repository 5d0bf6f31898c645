//! `ferry-proxy`: the node proxy. Parses its flags into a
//! [`ferry_proxy::config::Config`] and runs [`ferry_proxy::app::App`].

use clap::Parser;
use ferry_proxy::app::App;
use ferry_proxy::config::{Args, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_args(Args::parse())?;
    ferry_process::init_tracing(config.log_format);
    App::build(config).await?.run().await
}

//! `ferry-proxy`: the node proxy. Parses its flags into a
//! [`ferry_proxy::config::Config`] and runs [`ferry_proxy::app::App`].

use clap::Parser;
use ferry_proxy::app::App;
use ferry_proxy::config::{Args, Config};

/// jemalloc, not glibc's malloc: the relay's buffers are taken and given
/// back at line rate, and glibc handed freed memory back to the kernel and
/// faulted it in again (about 200,000 page faults per GB relayed, a third
/// of the proxy's CPU); jemalloc reuses it (about 1,000 per GB). See
/// docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let config = Config::from_args(Args::parse())?;
    ferry_process::init_tracing(config.log_format);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .thread_name("ferry-proxy")
        .enable_all()
        .build()?
        .block_on(async { App::build(config).await?.run().await })
}

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

/// One worker thread is a current-thread runtime: every task (listeners,
/// relays, HTTP/2 connections) runs on the thread that wakes it, with no
/// hand-off between threads. With more, the proxy itself runs as a task,
/// so its listeners' accept loops run on the workers too, not on the
/// thread that waits for the end.
fn main() -> anyhow::Result<()> {
    let config = Config::from_args(Args::parse())?;
    ferry_process::init_tracing(config.log_format);
    let runtime = match config.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        workers => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("ferry-worker")
            .enable_all()
            .build()?,
    };
    runtime.block_on(async { tokio::spawn(async { App::build(config).await?.run().await }).await? })
}

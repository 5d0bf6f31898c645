//! `ferry-proxy`: the node proxy. Parses its flags into a
//! [`ferry_proxy::config::Config`] and runs [`ferry_proxy::app::App`].

use std::time::Duration;

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
    runtime.block_on(async {
        tokio::spawn(trim_allocation_cache());
        tokio::spawn(async { App::build(config).await?.run().await }).await?
    })
}

/// Once a second, the allocation cache of the thread this task runs on
/// (jemalloc's tcache: up to 200 freed blocks of each small size and 20 of
/// each size up to 32 KiB) goes back to the arena, whose background thread
/// returns the pages that emptied to the kernel a second later
/// (`dirty_decay_ms`, .cargo/config.toml). jemalloc itself trims the cache
/// only as allocations come: after a burst of traffic, an idle proxy would
/// keep what its last connections freed (500-700 KiB after a few requests,
/// docs/benchmarks.md) for as long as it stays idle. Under load the cache
/// refills within microseconds of a flush.
///
/// With the default single runtime thread that is every connection's
/// thread; with more (`--worker-threads`), the others are trimmed by
/// jemalloc's own collection only.
async fn trim_allocation_cache() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(code) = flush_thread_cache() {
            // EFAULT: the cache is turned off (`_RJEM_MALLOC_CONF=tcache:false`).
            tracing::debug!(code, "jemalloc thread cache not flushed: not trimming it");
            return;
        }
    }
}

/// jemalloc's `thread.tcache.flush`: the calling thread's cached free
/// blocks go back to their arena. Returns jemalloc's error code.
#[allow(unsafe_code)]
fn flush_thread_cache() -> Result<(), i32> {
    // SAFETY: `thread.tcache.flush` reads and writes nothing: null pointers
    // and a zero length are how it is called (jemalloc's mallctl(3)); the
    // name is a NUL-terminated string that outlives the call.
    let code = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"thread.tcache.flush".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if code == 0 {
        Ok(())
    } else {
        Err(code)
    }
}

#[cfg(test)]
mod tests {
    /// The control's name is jemalloc's (a wrong one is `ENOENT`), and the
    /// cache is on by default (`EFAULT` otherwise).
    #[test]
    fn the_thread_cache_flushes() {
        let blocks: Vec<Vec<u8>> = (0..64).map(|i| vec![0; 1024 + i]).collect();
        drop(blocks);
        assert_eq!(super::flush_thread_cache(), Ok(()));
    }
}

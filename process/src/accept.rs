//! The accept loop every TCP listener of Ferry's daemons shares (the
//! proxy's SOCKS5, capture, inbound and HBONE listeners, the admin servers).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use tokio::net::{TcpListener, TcpStream};

/// Connections accepted by [`serve`] whose handler has not finished.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// How many connections [`serve`] accepted whose handler still runs. A
/// drain waits for these as well as for the connections a daemon tracks
/// itself: a handler registers its connection only once it is set up
/// (decided, connected), and a process that exited in between would cut
/// a connection it had accepted.
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Relaxed)
}

/// One handler running (see [`in_flight`]).
struct Running;

impl Running {
    fn start() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until the task is dropped, running `handle` on its
/// own task for each (counted in [`in_flight`]). The peer address is canonical (an IPv4 client of a
/// dual-stack listener is seen as IPv4, as the configuration knows it). An
/// accept error (out of descriptors, a connection reset while queued) is
/// logged and retried after a pause instead of ending the listener.
pub async fn serve<F, Fut>(listener: TcpListener, what: &'static str, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    accept_loop(listener, what, true, handle).await
}

/// [`serve`] for the admin servers: their clients (scrapers, probes keep
/// connections alive) do not hold a drain up.
pub(crate) async fn serve_uncounted<F, Fut>(listener: TcpListener, what: &'static str, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    accept_loop(listener, what, false, handle).await
}

/// `handler`, then the end of `running`. Its task holds the handler once:
/// an `async move` block awaiting a future it captured would hold it twice
/// (once captured, once awaited), doubling every connection's task.
fn counting<Fut>(handler: Fut, running: Option<Running>) -> impl Future<Output = ()>
where
    Fut: Future<Output = ()>,
{
    handler.map(move |()| drop(running))
}

async fn accept_loop<F, Fut>(listener: TcpListener, what: &'static str, counted: bool, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                let running = counted.then(Running::start);
                tokio::spawn(counting(handle(stream, peer), running));
            }
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_task_holds_its_handler_once() {
        // A handler with 4 KiB of state across an await, as a connection's
        // relay has.
        let handler = async {
            let state = [1u8; 4096];
            tokio::task::yield_now().await;
            std::hint::black_box(&state);
        };
        let alone = std::mem::size_of_val(&handler);
        let wrapped = counting(handler, None);
        let size = std::mem::size_of_val(&wrapped);
        assert!(
            size < alone + 64,
            "a {alone}-byte handler makes a {size}-byte task"
        );
        // What the counting wrapper replaced held it twice.
        let handler = async {
            let state = [1u8; 4096];
            tokio::task::yield_now().await;
            std::hint::black_box(&state);
        };
        let running: Option<Running> = None;
        let doubled = async move {
            handler.await;
            drop(running);
        };
        assert!(std::mem::size_of_val(&doubled) >= 2 * alone);
    }

    #[tokio::test]
    async fn the_count_ends_with_the_handler() {
        let before = in_flight();
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(counting(
            async move {
                let _ = wait.await;
            },
            Some(Running::start()),
        ));
        assert_eq!(in_flight(), before + 1);
        let _ = release.send(());
        let _ = task.await;
        assert_eq!(in_flight(), before);
    }
}

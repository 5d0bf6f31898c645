//! The admin HTTP server: plain HTTP/1.1 `GET` endpoints (metrics,
//! readiness, config dumps) answered by a handler function.

/// A plain-text or JSON HTTP reply of the admin endpoints.
pub type Reply = http::Response<http_body_util::Full<bytes::Bytes>>;

/// Builds a [`Reply`].
pub fn reply(status: http::StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

/// What one admin client may hold. Admin ports are reachable by anything
/// on the node (metrics scrapers, probes): none of them may pin
/// descriptors or memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AdminLimits {
    /// Open connections at most; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Longest a client may take to send its request headers.
    pub header_timeout: std::time::Duration,
    /// Longest one connection may stay open, whatever it does (one request
    /// per connection: no keep-alive).
    pub connection_timeout: std::time::Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_timeout: std::time::Duration::from_secs(5),
            connection_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// The admin server's flags, the same for every daemon (flattened into
/// its command line).
#[derive(Debug, Clone, clap::Args)]
pub struct AdminFlags {
    /// Open connections to the admin (metrics) listener at most; more are
    /// closed at once.
    #[arg(long, env = "FERRY_ADMIN_MAX_CONNECTIONS", default_value_t = 64)]
    pub admin_max_connections: usize,
    /// Longest an admin client may take to send its request headers.
    #[arg(long, env = "FERRY_ADMIN_HEADER_TIMEOUT", default_value = "5s", value_parser = crate::parse_duration)]
    pub admin_header_timeout: std::time::Duration,
}

impl AdminFlags {
    /// The limits, or the flag that cannot be used as given and why.
    pub fn limits(&self) -> Result<AdminLimits, (&'static str, &'static str)> {
        if self.admin_max_connections == 0 {
            return Err(("admin-max-connections", "must be at least 1"));
        }
        if self.admin_header_timeout.is_zero() {
            return Err(("admin-header-timeout", "must be longer than zero"));
        }
        Ok(AdminLimits {
            max_connections: self.admin_max_connections,
            header_timeout: self.admin_header_timeout,
            ..AdminLimits::default()
        })
    }
}

/// Serves HTTP/1.1 admin endpoints (`GET` by path) until the task is
/// dropped; `handler` answers each request. One request per connection,
/// within `limits`.
pub async fn serve<F>(listener: tokio::net::TcpListener, limits: AdminLimits, handler: F)
where
    F: Fn(&http::Request<hyper::body::Incoming>) -> Reply + Send + Sync + 'static,
{
    let handler = std::sync::Arc::new(handler);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    crate::accept::serve_uncounted(listener, "admin", move |stream, peer| {
        let slot = slots.clone().try_acquire_owned();
        let handler = handler.clone();
        async move {
            let Ok(_slot) = slot else {
                tracing::debug!(%peer, max = limits.max_connections, "admin connection refused: too many open");
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let response = if req.method() == http::Method::GET {
                    handler(&req)
                } else {
                    reply(
                        http::StatusCode::METHOD_NOT_ALLOWED,
                        "text/plain",
                        "only GET\n".into(),
                    )
                };
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            match tokio::time::timeout(limits.connection_timeout, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "admin connection ended"),
                Err(_) => tracing::debug!(%peer, "admin connection timed out"),
            }
        }
    })
    .await
}

/// The `/metrics` reply for an encoded exposition, with the process's
/// own metrics and the build information appended
/// ([`crate::self_metrics`]).
pub fn metrics_reply(
    encoded: Result<String, std::fmt::Error>,
    build: crate::self_metrics::Build<'_>,
) -> Reply {
    match encoded {
        Ok(text) => reply(
            http::StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            crate::self_metrics::append(text, build),
        ),
        Err(e) => reply(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Reads until the server closes; what it sent.
    async fn until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
        let mut out = Vec::new();
        tokio::time::timeout(within, stream.read_to_end(&mut out))
            .await
            .ok()?
            .ok()?;
        Some(String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn admin_flags_name_the_flag_they_refuse() {
        let flags = |connections, timeout| AdminFlags {
            admin_max_connections: connections,
            admin_header_timeout: Duration::from_secs(timeout),
        };
        assert_eq!(
            flags(0, 5).limits(),
            Err(("admin-max-connections", "must be at least 1"))
        );
        assert_eq!(
            flags(8, 0).limits(),
            Err(("admin-header-timeout", "must be longer than zero"))
        );
        let limits = flags(8, 2).limits().unwrap();
        assert_eq!(
            (limits.max_connections, limits.header_timeout),
            (8, Duration::from_secs(2))
        );
    }

    #[tokio::test]
    async fn idle_and_excess_clients_cannot_hold_the_admin_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let limits = AdminLimits {
            max_connections: 2,
            header_timeout: Duration::from_millis(300),
            connection_timeout: Duration::from_secs(5),
        };
        let server = tokio::spawn(serve(listener, limits, |_| {
            reply(http::StatusCode::OK, "text/plain", "ok\n".into())
        }));
        // Two clients that connect and say nothing hold both slots...
        let mut idle = [
            TcpStream::connect(address).await.unwrap(),
            TcpStream::connect(address).await.unwrap(),
        ];
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ...so a third is closed at once, without an answer...
        let mut excess = TcpStream::connect(address).await.unwrap();
        assert_eq!(
            until_closed(&mut excess, Duration::from_secs(2))
                .await
                .as_deref(),
            Some("")
        );
        // ...until the header timeout closes the idle ones.
        for stream in &mut idle {
            assert!(
                until_closed(stream, Duration::from_secs(2)).await.is_some(),
                "an idle client was not disconnected"
            );
        }
        // Then a real request is answered, once per connection.
        let mut client = TcpStream::connect(address).await.unwrap();
        client
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(&mut client, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with("ok\n"), "{answer}");
        server.abort();
    }
}

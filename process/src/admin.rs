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

/// Serves HTTP/1.1 admin endpoints (`GET` by path) until the task is
/// dropped; `handler` answers each request.
pub async fn serve<F>(listener: tokio::net::TcpListener, handler: F)
where
    F: Fn(&http::Request<hyper::body::Incoming>) -> Reply + Send + Sync + 'static,
{
    let handler = std::sync::Arc::new(handler);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
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
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
}

/// The `/metrics` reply for an encoded exposition.
pub fn metrics_reply(encoded: Result<String, std::fmt::Error>) -> Reply {
    match encoded {
        Ok(text) => reply(
            http::StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        ),
        Err(e) => reply(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{e}\n"),
        ),
    }
}

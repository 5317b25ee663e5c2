//! The HTTP/1.1 surfaces: admin (`/config_dump`, `/workloads`, `/connections`,
//! `/certificates`, `/logging`; bind it to loopback), `/metrics` and `/healthz/ready`.
//! Each `serve_*` runs until `stop` is cancelled, then lets the requests in flight finish.
use std::{collections::HashMap, convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use super::{AdminSource, LogControl};
use crate::metrics::{Metrics, CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE};

/// Longest wait for the requests in flight once `stop` is cancelled.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Largest request body read (a `/logging` filter).
const MAX_BODY: usize = 64 * 1024;

type Reply = Response<Full<Bytes>>;

/// The admin endpoints. They show the whole mesh and change the log level: serve them on
/// 127.0.0.1 only.
pub async fn serve_admin(
    listener: TcpListener,
    source: Arc<dyn AdminSource>,
    log: LogControl,
    stop: CancellationToken,
) {
    serve("admin", listener, stop, move |req| {
        let source = source.clone();
        let log = log.clone();
        async move { admin(req, &*source, &log).await }
    })
    .await
}

/// `GET /metrics`: the Prometheus text format, or OpenMetrics for a scraper that asks for
/// it in `Accept`.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    serve("metrics", listener, stop, move |req| {
        let metrics = metrics.clone();
        async move { metrics_reply(&req, &metrics) }
    })
    .await
}

/// `GET /healthz/ready`: 200 `ready`, or 503 with the reasons.
pub async fn serve_health(listener: TcpListener, source: Arc<dyn AdminSource>, stop: CancellationToken) {
    serve("health", listener, stop, move |req| {
        let source = source.clone();
        async move { health(&req, &*source) }
    })
    .await
}

async fn serve<F, Fut>(name: &'static str, listener: TcpListener, stop: CancellationToken, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "{name} endpoint listening");
    }
    let tasks = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, or a connection reset before accept: keep serving.
                    warn!(error = %e, "{name} endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let reply = handler(req);
                async move { Ok::<_, Infallible>(reply.await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(SHUTDOWN_GRACE, conn).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                debug!(error = %e, "{name} endpoint: connection ended");
            }
        });
    }
    tasks.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait()).await;
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("valid response parts")
}

fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    reply(status, "text/plain; charset=utf-8", body)
}

fn json(value: &impl serde::Serialize) -> Reply {
    match serde_json::to_string_pretty(value) {
        Ok(mut body) => {
            body.push('\n');
            reply(StatusCode::OK, "application/json", body)
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {e}"),
        ),
    }
}

fn not_found(path: &str, known: &[&str]) -> Reply {
    text(
        StatusCode::NOT_FOUND,
        format!("no endpoint {path}; there are: {}", known.join(" ")),
    )
}

fn method_not_allowed(allowed: &'static str) -> Reply {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, format!("use {allowed}"));
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allowed));
    r
}

const ADMIN_PATHS: [&str; 5] = [
    "/config_dump",
    "/workloads",
    "/connections",
    "/certificates",
    "/logging",
];

async fn admin(req: Request<Incoming>, source: &dyn AdminSource, log: &LogControl) -> Reply {
    let path = req.uri().path().to_owned();
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match path.as_str() {
        "/" if get => text(StatusCode::OK, ADMIN_PATHS.join("\n")),
        "/config_dump" if get => json(&source.config_dump()),
        "/workloads" if get => json(&source.workloads()),
        "/connections" if get => json(&source.connections()),
        "/certificates" if get => json(&source.certificates()),
        "/logging" if get => text(StatusCode::OK, log.current()),
        "/logging" if req.method() == Method::POST || req.method() == Method::PUT => {
            set_logging(req, log).await
        }
        "/logging" => method_not_allowed("GET, POST, PUT"),
        "/" | "/config_dump" | "/workloads" | "/connections" | "/certificates" => method_not_allowed("GET"),
        _ => not_found(&path, &ADMIN_PATHS),
    }
}

/// `?level=debug` (one level for everything), `?filter=<directives>`, or the directives
/// as the body.
async fn set_logging(req: Request<Incoming>, log: &LogControl) -> Reply {
    let query = parse_query(req.uri().query().unwrap_or(""));
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}")),
    };
    let body = match std::str::from_utf8(&body) {
        Ok(b) => b.trim().to_owned(),
        Err(_) => return text(StatusCode::BAD_REQUEST, "the body is not utf-8"),
    };
    let result = if let Some(level) = query.get("level") {
        log.set_level(level)
    } else if let Some(filter) = query.get("filter") {
        log.set(filter)
    } else if !body.is_empty() {
        log.set(&body)
    } else {
        return text(
            StatusCode::BAD_REQUEST,
            "give ?level=<trace|debug|info|warn|error|off>, ?filter=<directives>, or the directives as the body",
        );
    };
    match result {
        Ok(()) => {
            let current = log.current();
            info!(filter = %current, "log filter changed");
            text(StatusCode::OK, format!("log filter set to {current}"))
        }
        Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

fn metrics_reply(req: &Request<Incoming>, metrics: &Metrics) -> Reply {
    match req.uri().path() {
        "/metrics" | "/stats/prometheus" if req.method() == Method::GET || req.method() == Method::HEAD => {
            if wants_openmetrics(req) {
                reply(
                    StatusCode::OK,
                    OPENMETRICS_CONTENT_TYPE,
                    metrics.encode_openmetrics(),
                )
            } else {
                reply(StatusCode::OK, CONTENT_TYPE, metrics.encode())
            }
        }
        "/metrics" | "/stats/prometheus" => method_not_allowed("GET"),
        path => not_found(path, &["/metrics"]),
    }
}

/// Prometheus lists `application/openmetrics-text` in `Accept` when it can parse it.
fn wants_openmetrics(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            let mut params = v.split(';').map(str::trim);
            params.next() == Some("application/openmetrics-text")
                && !params.any(|p| p == "q=0" || p == "q=0.0")
        })
}

fn health(req: &Request<Incoming>, source: &dyn AdminSource) -> Reply {
    match req.uri().path() {
        "/healthz/ready" if req.method() == Method::GET || req.method() == Method::HEAD => {
            let readiness = source.ready();
            if readiness.is_ready() {
                text(StatusCode::OK, "ready")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}", readiness.not_ready_reasons().join(", ")),
                )
            }
        }
        "/healthz/ready" => method_not_allowed("GET"),
        path => not_found(path, &["/healthz/ready"]),
    }
}

/// `a=1&b=x%20y` into a map; `+` is a space, as in forms.
fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|b| hex(*b)),
            bytes.get(i + 2).and_then(|b| hex(*b)),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q = parse_query("level=debug&filter=mesh_node%3Ddebug%2Cinfo&x&y=a+b%zz%4");
        assert_eq!(q["level"], "debug");
        assert_eq!(q["filter"], "mesh_node=debug,info");
        assert_eq!(q["x"], "");
        assert_eq!(q["y"], "a b%zz%4");
    }
}

//! The HTTP endpoints on 127.0.0.1:0.
use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{admin::http, metrics::Metrics};

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

/// One HTTP/1.1 request on its own connection.
async fn request(addr: SocketAddr, method: &str, target: &str, headers: &str, body: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

async fn get(addr: SocketAddr, target: &str) -> Reply {
    request(addr, "GET", target, "", "").await
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

#[tokio::test]
async fn admin_endpoints() {
    let (listener, addr) = listener().await;
    let (log, _subscriber) = LogControl::detached("info").unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(http::serve_admin(listener, FakeSource::new(), log, stop.clone()));

    let r = get(addr, "/config_dump").await;
    assert_eq!(r.status, 200);
    assert!(r.headers.contains("content-type: application/json"));
    let config: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(config["trustDomain"], "cluster.local");

    let r = get(addr, "/workloads").await;
    let workloads: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(workloads, serde_json::to_value(super::workloads()).unwrap());
    assert_eq!(
        workloads[0]["identity"],
        "spiffe://cluster.local/ns/default/sa/sleep"
    );

    let r = get(addr, "/connections").await;
    let connections: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(connections[0]["id"], 17);
    assert_eq!(connections[0]["direction"], "outbound");
    assert_eq!(connections[0]["bytesSent"], 1200);

    let r = get(addr, "/certificates").await;
    let certificates: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(certificates[0]["notAfter"], "2024-05-02T12:00:00Z");
    assert_eq!(certificates[0]["serial"], "0a1b2c");

    let r = get(addr, "/nope").await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("/config_dump"), "{}", r.body);
    assert_eq!(request(addr, "POST", "/workloads", "", "").await.status, 405);

    stop.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("the server stops when told")
        .unwrap();
}

#[tokio::test]
async fn logging_changes_the_filter_at_run_time() {
    let (listener, addr) = listener().await;
    let (log, _subscriber) = LogControl::detached("info").unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(http::serve_admin(
        listener,
        FakeSource::new(),
        log.clone(),
        stop.clone(),
    ));

    let r = get(addr, "/logging").await;
    assert_eq!((r.status, r.body.as_str()), (200, "info\n"));

    let r = request(addr, "POST", "/logging?level=debug", "", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(log.current(), "debug");
    assert_eq!(get(addr, "/logging").await.body, "debug\n");

    let r = request(addr, "PUT", "/logging", "", "mesh_node=trace,warn").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(log.current(), "mesh_node=trace,warn");

    let r = request(addr, "POST", "/logging?filter=mesh_node%3Ddebug%2Cinfo", "", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(log.current(), "mesh_node=debug,info");

    // Bad directives: 400 naming the problem, and the filter is unchanged.
    let r = request(addr, "POST", "/logging", "", "mesh_node=loud").await;
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("invalid log filter \"mesh_node=loud\""),
        "{}",
        r.body
    );
    let r = request(addr, "POST", "/logging?level=chatty", "", "").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("unknown log level \"chatty\""), "{}", r.body);
    let r = request(addr, "POST", "/logging", "", "").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("?level="), "{}", r.body);
    assert_eq!(log.current(), "mesh_node=debug,info");
    assert_eq!(request(addr, "DELETE", "/logging", "", "").await.status, 405);
    stop.cancel();
}

#[tokio::test]
async fn readiness() {
    let (listener, addr) = listener().await;
    let source = FakeSource::new();
    let stop = CancellationToken::new();
    tokio::spawn(http::serve_health(listener, source.clone(), stop.clone()));

    let r = get(addr, "/healthz/ready").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));

    *source.readiness.lock().unwrap() = Readiness {
        programs_attached: false,
        ..READY
    };
    let r = get(addr, "/healthz/ready").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, "not ready: programs not attached\n")
    );

    *source.readiness.lock().unwrap() = Readiness {
        certificates_present: false,
        draining: true,
        ..READY
    };
    let r = get(addr, "/healthz/ready").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, "not ready: certificates missing or expired, draining\n")
    );
    assert_eq!(get(addr, "/metrics").await.status, 404);
    stop.cancel();
}

#[tokio::test]
async fn metrics_endpoint() {
    let (listener, addr) = listener().await;
    let metrics: Arc<Metrics> = crate::metrics::tests::populated();
    let stop = CancellationToken::new();
    tokio::spawn(http::serve_metrics(listener, metrics, stop.clone()));

    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        r.headers
    );
    assert!(r
        .body
        .contains("istio_tcp_connections_opened_total{reporter=\"source\""));
    crate::metrics::tests::promtool_check(&r.body).unwrap();

    // What Prometheus sends when it can read OpenMetrics.
    let accept = "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                  version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n";
    let r = request(addr, "GET", "/metrics", accept, "").await;
    assert!(r
        .headers
        .contains("content-type: application/openmetrics-text; version=1.0.0"));
    assert!(r.body.ends_with("# EOF\n"));
    stop.cancel();
}

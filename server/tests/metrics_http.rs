//! The metrics endpoint over real HTTP/1.1 on loopback, spoken by hand as a scraper would:
//! the exposition, 404 and 405, a silent client beside a scrape, and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fracmap_server::metrics::{Metrics, serve_metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longer than any answer on loopback takes, shorter than the server's 5 s connection
/// deadline, so that a server that waited on a silent client would fail the test.
const PATIENCE: Duration = Duration::from_secs(2);

struct Endpoint {
    address: SocketAddr,
    stop: oneshot::Sender<()>,
    served: JoinHandle<std::io::Result<()>>,
}

async fn start(metrics: Arc<Metrics>) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel();
    let served = tokio::spawn(serve_metrics(metrics, listener, async {
        let _ = stopped.await;
    }));
    Endpoint { address, stop, served }
}

/// Sends `request` and returns the whole response, read until the server closes.
async fn exchange(address: SocketAddr, request: &str) -> String {
    let talk = async {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    tokio::time::timeout(PATIENCE, talk).await.expect("no answer in time")
}

async fn get(address: SocketAddr, path: &str) -> String {
    exchange(address, &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n")).await
}

#[tokio::test]
async fn metrics_are_served_as_prometheus_text() {
    let metrics = Arc::new(Metrics::new());
    metrics.request_finished("Segment", tonic::Code::Ok, 1.0);
    let endpoint = start(Arc::clone(&metrics)).await;

    let response = get(endpoint.address, "/metrics").await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.lines().any(|line| line == "Content-Type: text/plain; version=0.0.4; charset=utf-8"), "{head}");
    assert!(head.lines().any(|line| line == format!("Content-Length: {}", body.len())), "{head}");
    assert!(body.lines().any(|line| line == "fracmap_requests_total{method=\"Segment\",code=\"OK\"} 1"), "{body}");
}

#[tokio::test]
async fn healthz_answers_ok() {
    let endpoint = start(Arc::new(Metrics::new())).await;
    let response = get(endpoint.address, "/healthz").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nok\n"), "{response}");
}

#[tokio::test]
async fn other_paths_are_not_found() {
    let endpoint = start(Arc::new(Metrics::new())).await;
    let response = get(endpoint.address, "/other").await;
    assert!(response.starts_with("HTTP/1.1 404 Not Found\r\n"), "{response}");
}

#[tokio::test]
async fn methods_other_than_get_are_not_allowed() {
    let endpoint = start(Arc::new(Metrics::new())).await;
    let response = exchange(endpoint.address, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{response}");
    assert!(response.contains("\r\nAllow: GET\r\n"), "{response}");
}

#[tokio::test]
async fn a_silent_client_does_not_block_a_scrape() {
    let endpoint = start(Arc::new(Metrics::new())).await;
    let _silent = TcpStream::connect(endpoint.address).await.unwrap();
    let response = get(endpoint.address, "/metrics").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
}

#[tokio::test]
async fn shutdown_stops_the_endpoint_and_closes_open_connections() {
    let endpoint = start(Arc::new(Metrics::new())).await;
    let mut silent = TcpStream::connect(endpoint.address).await.unwrap();
    // Answered once, so the silent connection has surely been accepted before shutdown.
    get(endpoint.address, "/healthz").await;

    endpoint.stop.send(()).unwrap();
    let served = tokio::time::timeout(PATIENCE, endpoint.served).await.expect("serve_metrics did not return");
    served.unwrap().unwrap();
    let read = tokio::time::timeout(PATIENCE, silent.read(&mut [0; 16])).await.expect("silent client not closed");
    assert_eq!(read.unwrap(), 0);
}

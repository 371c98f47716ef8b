//! `fracmap load` against a real server on loopback, with the tiny untrained model pair: the
//! report of a closed and an open loop, errors counted by status, and how it fails.

#[macro_use]
mod common;

use std::num::NonZeroUsize;
use std::path::Path;
use std::process::Output;

use common::{BODY_ARG, TestServer, fracmap, succeeded, write_phantom_ct};
use serde_json::Value;

/// Runs `fracmap load` on the phantom CT in `dir` with `more` arguments; returns its output
/// and the JSON report.
async fn load(server: &TestServer, dir: &Path, more: Vec<String>) -> (Output, Value) {
    let (ct, json) = (dir.join("ct.nii.gz"), dir.join("load.json"));
    write_phantom_ct(&ct);
    let shared = args!["load", "--input", ct.display(), "--box", BODY_ARG, "--json", json.display()];
    let output = fracmap([shared, more, args!["--server", server.url()]].concat()).await;
    let report = match std::fs::read(&json) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
        Err(_) => Value::Null,
    };
    (output, report)
}

fn count(report: &Value, pointer: &str) -> u64 {
    report.pointer(pointer).and_then(Value::as_u64).unwrap_or_else(|| panic!("no count {pointer} in {report:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_loop_measures_each_request_and_reports_ordered_percentiles() {
    let server = TestServer::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();

    let (output, report) = load(&server, dir.path(), args!["--concurrency", 2, "--requests", 6]).await;
    let stdout = succeeded(&output);
    assert!(stdout.contains("6 of 6 ok"), "{stdout}");
    assert_eq!(count(&report, "/requests/ok"), 6, "{report:#}");
    assert_eq!(count(&report, "/requests/failed"), 0, "{report:#}");
    assert_eq!((report["mode"].as_str(), count(&report, "/connections")), (Some("closed loop"), 2));
    let latency = |name: &str| report["latency_ms"][name].as_f64().unwrap();
    let (p50, p90, p99, max) = (latency("p50"), latency("p90"), latency("p99"), latency("max"));
    assert!(0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max, "{report:#}");
    assert!(count(&report, "/bytes/sent") > 0 && count(&report, "/bytes/received") > 0, "{report:#}");
    assert!(report["errors"].as_object().unwrap().is_empty(), "{report:#}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_is_counted_as_resource_exhausted_and_the_test_still_succeeds() {
    let server = TestServer::start(|c| {
        c.service.workers = NonZeroUsize::MIN;
        c.service.queue = 0;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();

    let (output, report) = load(&server, dir.path(), args!["--concurrency", 4, "--requests", 12]).await;
    let stdout = succeeded(&output);
    let refused = count(&report, "/errors/RESOURCE_EXHAUSTED");
    assert!(refused > 0, "{report:#}");
    assert_eq!(count(&report, "/requests/ok") + refused, 12, "{report:#}");
    assert!(stdout.contains(&format!("RESOURCE_EXHAUSTED: {refused}")), "{stdout}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_schedules_requests_at_the_rate() {
    let server = TestServer::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();

    let (output, report) = load(&server, dir.path(), args!["--rate", 20, "--duration", 1]).await;
    succeeded(&output);
    assert_eq!(count(&report, "/requests/scheduled"), 20, "{report:#}");
    let ended = ["ok", "failed", "dropped"].map(|name| count(&report, &format!("/requests/{name}")));
    assert_eq!(ended.iter().sum::<u64>(), 20, "each scheduled request is answered or dropped: {report:#}");
    assert_eq!(report["rate_per_s"], 20.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_in_which_no_request_succeeds_exits_1_after_its_report() {
    let server = TestServer::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();

    let (output, report) = load(&server, dir.path(), args!["--requests", 2, "--model", "no-such-model"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a single request succeeded"), "{stderr}");
    assert_eq!(count(&report, "/errors/NOT_FOUND"), 2, "{report:#}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_that_is_not_there_is_named() {
    let server = TestServer::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.nii.gz");

    let output =
        fracmap(args!["load", "--input", missing.display(), "--box", BODY_ARG, "--server", server.url()]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{}: cannot read", missing.display())), "{stderr}");
    server.stop().await;
}

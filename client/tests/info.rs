//! The `fracmap` binary against a real server on loopback.

use std::num::NonZeroUsize;
use std::process::Command;
use std::time::Duration;

use fracmap_server::runtime::default_library_path;
use fracmap_server::{Device, ServerConfig, serve};
use tokio::net::TcpListener;

fn fracmap(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fracmap")).args(args).env_remove("FRACMAP_SERVER").output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_prints_the_provider_and_health_of_a_running_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = ServerConfig {
        ort_library: default_library_path(),
        device: Device::Cpu,
        intra_threads: NonZeroUsize::new(1).unwrap(),
        models: None,
        shutdown_grace: Duration::from_millis(200),
    };
    let server = tokio::spawn(serve(config, listener, async {
        let _ = stopped.await;
    }));

    let out = tokio::task::spawn_blocking(move || fracmap(&["info", "--server", &url])).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("health           SERVING"), "{stdout}");
    assert!(stdout.contains("provider         cpu"), "{stdout}");
    assert!(stdout.contains("onnx runtime     1.31.1"), "{stdout}");
    assert!(stdout.contains("intra-op threads 1"), "{stdout}");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[test]
fn a_server_that_is_not_there_is_a_clear_error() {
    // Port 9 (discard) on loopback: nothing listens there in a test sandbox.
    let out = fracmap(&["info", "--server", "http://127.0.0.1:9", "--connect-timeout", "2"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fracmap: cannot connect to http://127.0.0.1:9"), "{stderr}");
}

#[test]
fn a_malformed_server_address_is_named() {
    let out = fracmap(&["info", "--server", "not a url"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--server \"not a url\" is not a URL"), "{stderr}");
}

//! The `clickheatmap-collector` binary: flags, the stdout sink, SIGTERM with a final drain, and
//! the benchmark command (small, so it is quick).

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clickheatmap_collector::client::HttpClient;
use clickheatmap_testkit::{free_port, wait_for_port};

const BINARY: &str = env!("CARGO_BIN_EXE_clickheatmap-collector");

/// Kills the child (by its PID) if the test ends before it exited.
struct Stopper(Child);

impl Drop for Stopper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn event(seq: u64) -> String {
    format!(
        r#"{{"event_type":"click","event_time_ms":1766919066968,"page_id":"p","x":1,"y":2,"viewport_width":10,"viewport_height":10,"seq":{seq}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_to_stdout_and_drains_on_sigterm() {
    let port = free_port();
    let child = Command::new(BINARY)
        .args(["--sink", "stdout", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--rate-limit",
            "0",
            "--flush-interval",
            "1h",
            "--allowed-origin",
            "https://a.example,https://b.example",
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the collector");
    let mut child = Stopper(child);
    assert!(
        tokio::task::spawn_blocking(move || wait_for_port(port, Duration::from_secs(30)))
            .await
            .unwrap(),
        "the collector listens"
    );
    let mut client = HttpClient::connect(([127, 0, 0, 1], port).into())
        .await
        .unwrap();
    let body = format!("[{},{}]", event(1), event(2));
    let response = client
        .request(
            "POST",
            "/v1/clicks",
            &[
                ("content-type", "text/plain"),
                ("origin", "https://b.example"),
            ],
            body.as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 202, "{}", response.text());
    drop(client);

    // The flush interval is an hour: only the shutdown drain can print these.
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stdout = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(exit.success(), "{exit:?}\n{stderr}");
    assert_eq!(stdout, format!("{}\n{}\n", event(1), event(2)), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(stderr.contains("drained"), "{stderr}");
}

#[test]
fn bad_configuration_is_refused_with_a_clear_message() {
    for (args, needle) in [
        (vec!["--sink", "kinesis"], "--stream-name"),
        (
            vec!["--sink", "stdout", "--allowed-origin", "shop.example.com"],
            "invalid origin",
        ),
        (
            vec!["--sink", "stdout", "--flush-interval", "soon"],
            "duration",
        ),
        (vec!["--sink", "stdout", "--queue-bytes", "10"], "queue"),
    ] {
        let output = Command::new(BINARY)
            .args(&args)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn the_benchmark_runs_and_stops_by_itself() {
    let output = Command::new(BINARY)
        .args([
            "bench",
            "--requests",
            "300",
            "--events-per-request",
            "5",
            "--connections",
            "2",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("events/s"), "{stdout}");
    assert!(stdout.contains("delivered      1500 of 1500"), "{stdout}");
}

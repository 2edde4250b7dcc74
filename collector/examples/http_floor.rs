//! The floor under the collector's loopback benchmark: the same clients, the same single-thread
//! server arrangement and the same measurement (the server thread's CPU seconds), but a server
//! that only reads each request body and answers a fixed 202 — no parsing, no queue, no
//! metrics. What this reaches per server CPU second is what HTTP/1.1 over loopback TCP costs on
//! the machine; the collector's own work is the difference (docs/BENCHMARKS.md, "Collector").
//!
//! `cargo run --release -p clickheatmap-collector --example http_floor -- [REQUESTS] [CONNECTIONS] [EVENTS_PER_REQUEST]`

use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use clickheatmap_collector::bench::thread_cpu_seconds;
use clickheatmap_collector::client::HttpClient;
use tokio::net::TcpListener;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let requests = args.next().transpose()?.unwrap_or(200_000);
    let connections = args.next().transpose()?.unwrap_or(4).max(1);
    let events = args.next().transpose()?.unwrap_or(1).max(1);

    let (address_tx, address_rx) = std::sync::mpsc::channel::<SocketAddr>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::Builder::new()
        .name("floor-server".into())
        .spawn(move || -> Result<Option<f64>, Error> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                address_tx.send(listener.local_addr()?)?;
                let answer = format!("{{\"accepted\":{events},\"rejected\":0}}");
                let app = Router::new().route(
                    "/v1/clicks",
                    post(move |body: Bytes| async move {
                        std::hint::black_box(body);
                        (StatusCode::ACCEPTED, answer.clone())
                    }),
                );
                let before = thread_cpu_seconds();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop_rx.await;
                    })
                    .await?;
                Ok(before.and_then(|before| thread_cpu_seconds().map(|after| after - before)))
            })
        })?;
    let address = address_rx.recv()?;

    let click = r#"{"event_type":"click","event_time":"2025-12-28T10:51:06.968Z","event_time_ms":1766919066968,"page_id":"bench-page-1","x":412.5,"y":233,"viewport_width":1280,"viewport_height":720,"dpr":2,"user_agent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"}"#;
    let body = format!("[{}]", vec![click; events as usize].join(","));
    let clients = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    clients.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for connection in 0..connections {
            let share = requests / connections + u64::from(connection < requests % connections);
            let body = body.clone();
            tasks.spawn(async move {
                let mut client = HttpClient::connect(address).await?;
                for _ in 0..share {
                    let response = client
                        .post("/v1/clicks", "application/json", body.as_bytes())
                        .await?;
                    if response.status != 202 {
                        return Err::<(), Error>(format!("status {}", response.status).into());
                    }
                }
                Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok::<(), Error>(())
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    let server_cpu = server.join().map_err(|_| "server thread panicked")??;
    println!(
        "{requests} requests x {events} events over {connections} connections, bare HTTP server on one thread"
    );
    println!("  requests/s     {:.0}", requests as f64 / elapsed);
    if let Some(cpu) = server_cpu {
        println!(
            "  server alone   {cpu:.2} CPU s: {:.0} requests per CPU second ({:.1} µs per request)",
            requests as f64 / cpu.max(1e-9),
            cpu * 1e6 / requests as f64
        );
    }
    Ok(())
}

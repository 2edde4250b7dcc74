//! The floor under the collector's loopback benchmark: the same clients, the same single-thread
//! server arrangement and the same measurement (the server thread's CPU seconds), but a server
//! that only reads each request body and answers a fixed 202 — no parsing, no queue, no
//! metrics. Two such servers: `hyper` (axum on hyper, as the collector's other routes are
//! served) and `loop` (a bare read–parse–write loop over the socket, `httparse` for the head:
//! about what the kernel's loopback TCP costs per request on the machine). The collector's own
//! work is the difference (docs/BENCHMARKS.md, "Collector").
//!
//! `cargo run --release -p clickheatmap-collector --example http_floor -- [REQUESTS] [CONNECTIONS] [EVENTS_PER_REQUEST] [hyper|loop]`

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
    let bare_loop = match std::env::args().nth(4).as_deref() {
        None | Some("hyper") => false,
        Some("loop") => true,
        Some(other) => return Err(format!("unknown server {other:?}: hyper or loop").into()),
    };

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
                if bare_loop {
                    let body = format!("{{\"accepted\":{events},\"rejected\":0}}");
                    let answer = format!(
                        "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: {}\r\ndate: Fri, 04 Dec 2026 19:00:00 GMT\r\n\r\n{body}",
                        body.len()
                    );
                    let answer = Bytes::from(answer);
                    let accept = async move {
                        loop {
                            let (stream, _) = listener.accept().await?;
                            stream.set_nodelay(true)?;
                            tokio::spawn(bare_connection(stream, answer.clone()));
                        }
                    };
                    tokio::select! {
                        accepted = accept => return accepted,
                        _ = stop_rx => {}
                    }
                } else {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stop_rx.await;
                        })
                        .await?;
                }
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
        "{requests} requests x {events} events over {connections} connections, bare HTTP server ({}) on one thread",
        if bare_loop { "loop" } else { "hyper" }
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

/// Reads requests with a `Content-Length` body and answers each with `answer`, until the client
/// closes the connection.
async fn bare_connection(mut stream: tokio::net::TcpStream, answer: Bytes) -> Result<(), Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer: Vec<u8> = Vec::with_capacity(8192);
    loop {
        let (head, length) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            if let httparse::Status::Complete(head) = request.parse(&buffer)? {
                let length = request
                    .headers
                    .iter()
                    .find(|header| header.name.eq_ignore_ascii_case("content-length"))
                    .ok_or("no content-length")?
                    .value;
                break (head, std::str::from_utf8(length)?.parse::<usize>()?);
            }
            if stream.read_buf(&mut buffer).await? == 0 {
                return Ok(());
            }
        };
        while buffer.len() < head + length {
            if stream.read_buf(&mut buffer).await? == 0 {
                return Ok(());
            }
        }
        std::hint::black_box(&buffer[head..head + length]);
        buffer.drain(..head + length);
        stream.write_all(&answer).await?;
    }
}

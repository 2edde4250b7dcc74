//! The loopback benchmark: a collector on 127.0.0.1 with a [`ChannelSink`], and keep-alive
//! clients in the same process posting JSON arrays of clicks. It sends a fixed number of
//! requests, stops by itself, and checks that every accepted event reached the sink once.
//!
//! The server runs alone on a thread of its own (a single-threaded Tokio runtime: one core at
//! most), and that thread's CPU time is measured apart from the clients' (which run on the
//! caller's runtime, with the sink's consumer standing in for Kinesis): "per core of the server"
//! divides by the server thread's CPU seconds only. Wall-clock rates still share the machine with
//! the clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::client::HttpClient;
use crate::config::CollectorConfig;
use crate::server::Collector;
use crate::sink::ChannelSink;

/// What to send.
#[derive(Clone, Copy, Debug)]
pub struct BenchOptions {
    pub requests: u64,
    pub events_per_request: usize,
    pub connections: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            requests: 100_000,
            events_per_request: 20,
            connections: 4,
        }
    }
}

/// The measured figures.
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub options: BenchOptions,
    pub elapsed: Duration,
    pub requests_per_second: f64,
    pub events_per_second: f64,
    pub body_mib_per_second: f64,
    pub latency_p50: Duration,
    pub latency_p99: Duration,
    pub delivered_events: u64,
    pub records: u64,
    /// CPU seconds (user + system) of the whole process during the run, when known.
    pub cpu_seconds: Option<f64>,
    /// CPU seconds of the server thread alone, when known.
    pub server_cpu_seconds: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Collector(#[from] crate::server::CollectorError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("benchmark: {0}")]
    Failed(String),
}

/// Request bodies: JSON arrays of realistic clicks (a user agent included), a few variants.
fn bodies(events_per_request: usize) -> Vec<Vec<u8>> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    (0..16)
        .map(|variant| {
            let events: Vec<String> = (0..events_per_request)
                .map(|i| {
                    let n = variant * 1000 + i;
                    format!(
                        r#"{{"event_type":"click","event_time":"2025-12-28T10:51:06.968Z","event_time_ms":{},"page_id":"bench-page-{}","x":{}.5,"y":{},"viewport_width":1280,"viewport_height":720,"dpr":2,"user_agent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"}}"#,
                        now_ms - n as i64,
                        n % 7,
                        (n * 37) % 1280,
                        (n * 53) % 720,
                    )
                })
                .collect();
            format!("[{}]", events.join(",")).into_bytes()
        })
        .collect()
}

/// Runs the benchmark (needs a Tokio runtime with the time and net drivers).
pub async fn run(options: BenchOptions) -> Result<BenchReport, BenchError> {
    if options.requests == 0 || options.events_per_request == 0 || options.connections == 0 {
        return Err(BenchError::Failed(
            "requests, events per request and connections must be above zero".into(),
        ));
    }
    let (sink, mut receiver) = ChannelSink::new(1024);
    let consumer = tokio::spawn(async move {
        let (mut events, mut records) = (0u64, 0u64);
        while let Some(record) = receiver.recv().await {
            events += record.iter().filter(|b| **b == b'\n').count() as u64;
            records += 1;
        }
        (events, records)
    });
    let config = CollectorConfig {
        rate_limit: None,
        // The benchmark's clients send no Origin; this only keeps the start-up warning quiet.
        allowed_origins: crate::config::AllowedOrigins::any(),
        ..CollectorConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound, address) = tokio::sync::oneshot::channel();
    let server = std::thread::Builder::new()
        .name("collector-server".to_owned())
        .spawn(move || serve_alone(config, sink, bound, stopped))?;
    let address = address
        .await
        .map_err(|_| BenchError::Failed("the server thread ended before listening".into()))??;

    let bodies = Arc::new(bodies(options.events_per_request));
    let body_bytes: u64 = {
        let per_round: usize = bodies.iter().map(Vec::len).sum();
        (per_round as u64 * options.requests) / bodies.len() as u64
    };
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut clients = Vec::new();
    for connection in 0..options.connections {
        let share = options.requests / options.connections as u64
            + u64::from((connection as u64) < options.requests % options.connections as u64);
        let bodies = Arc::clone(&bodies);
        let expected = options.events_per_request;
        clients.push(tokio::spawn(client(
            address, share, bodies, expected, connection,
        )));
    }
    let mut latencies = Vec::with_capacity(options.requests as usize);
    for handle in clients {
        let result = handle
            .await
            .map_err(|err| BenchError::Failed(format!("client task: {err}")))?;
        latencies.extend(result?);
    }
    let elapsed = started.elapsed();
    let cpu_seconds = cpu_before.and_then(|before| cpu_seconds().map(|after| after - before));

    let _ = stop.send(());
    let (report, server_cpu_seconds) = tokio::task::spawn_blocking(move || server.join())
        .await
        .map_err(|err| BenchError::Failed(format!("server thread: {err}")))?
        .map_err(|_| BenchError::Failed("the server thread panicked".into()))??;
    let (delivered_events, records) = consumer
        .await
        .map_err(|err| BenchError::Failed(format!("consumer task: {err}")))?;
    let sent = options.requests * options.events_per_request as u64;
    if report.undelivered_events > 0 || delivered_events != sent {
        return Err(BenchError::Failed(format!(
            "{sent} events accepted but {delivered_events} delivered"
        )));
    }
    latencies.sort_unstable();
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(index).copied().unwrap_or_default()
    };
    let seconds = elapsed.as_secs_f64().max(1e-9);
    Ok(BenchReport {
        options,
        elapsed,
        requests_per_second: options.requests as f64 / seconds,
        events_per_second: sent as f64 / seconds,
        body_mib_per_second: body_bytes as f64 / seconds / (1024.0 * 1024.0),
        latency_p50: percentile(0.50),
        latency_p99: percentile(0.99),
        delivered_events,
        records,
        cpu_seconds,
        server_cpu_seconds,
    })
}

/// Runs the collector on this thread alone until `stopped`; returns its report and the thread's
/// CPU seconds while serving.
fn serve_alone(
    config: CollectorConfig,
    sink: ChannelSink,
    bound: tokio::sync::oneshot::Sender<Result<SocketAddr, BenchError>>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> Result<(crate::queue::DrainReport, Option<f64>), BenchError> {
    // Until the server listens, a failure goes to the waiting caller (which then never joins
    // this thread); after that, through the thread's result.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let _ = bound.send(Err(err.into()));
            return Err(BenchError::Failed("no runtime".into()));
        }
    };
    runtime.block_on(async move {
        let started = async {
            let collector = Collector::new(config, Arc::new(sink))?;
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let address = listener.local_addr()?;
            Ok::<_, BenchError>((collector, listener, address))
        };
        let (collector, listener) = match started.await {
            Ok((collector, listener, address)) => {
                let _ = bound.send(Ok(address));
                (collector, listener)
            }
            Err(err) => {
                let _ = bound.send(Err(err));
                return Err(BenchError::Failed("the server did not start".into()));
            }
        };
        let before = thread_cpu_seconds();
        let report = collector
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await?;
        let cpu = before.and_then(|before| thread_cpu_seconds().map(|after| after - before));
        Ok((report, cpu))
    })
}

async fn client(
    address: SocketAddr,
    requests: u64,
    bodies: Arc<Vec<Vec<u8>>>,
    expected: usize,
    connection: usize,
) -> Result<Vec<Duration>, BenchError> {
    let mut client = HttpClient::connect(address).await?;
    let mut latencies = Vec::with_capacity(requests as usize);
    for n in 0..requests {
        let body = &bodies[(n as usize + connection) % bodies.len()];
        let sent = Instant::now();
        let response = client.post("/v1/clicks", "application/json", body).await?;
        latencies.push(sent.elapsed());
        let accepted = response.json()["accepted"].as_u64();
        if response.status != 202 || accepted != Some(expected as u64) {
            return Err(BenchError::Failed(format!(
                "unexpected answer {}: {}",
                response.status,
                response.text()
            )));
        }
    }
    Ok(latencies)
}

/// CPU seconds (user + system) this process has used so far (Linux).
fn cpu_seconds() -> Option<f64> {
    stat_cpu_seconds("/proc/self/stat")
}

/// CPU seconds (user + system) the calling thread has used so far (Linux).
pub fn thread_cpu_seconds() -> Option<f64> {
    stat_cpu_seconds("/proc/thread-self/stat")
}

fn stat_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / 100.0)
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "{} requests x {} events over {} keep-alive connections to 127.0.0.1, ChannelSink, server on one thread, clients in the same process",
            o.requests, o.events_per_request, o.connections
        )?;
        writeln!(f, "  elapsed        {:.2} s", self.elapsed.as_secs_f64())?;
        writeln!(f, "  requests/s     {:.0}", self.requests_per_second)?;
        writeln!(f, "  events/s       {:.0}", self.events_per_second)?;
        writeln!(f, "  body MiB/s     {:.1}", self.body_mib_per_second)?;
        writeln!(
            f,
            "  latency        p50 {:.2} ms, p99 {:.2} ms",
            self.latency_p50.as_secs_f64() * 1000.0,
            self.latency_p99.as_secs_f64() * 1000.0
        )?;
        if let Some(cpu) = self.cpu_seconds {
            writeln!(
                f,
                "  CPU            {cpu:.2} s (server and clients), {:.0} events per CPU second",
                self.delivered_events as f64 / cpu.max(1e-9)
            )?;
        }
        if let Some(cpu) = self.server_cpu_seconds {
            writeln!(
                f,
                "  server alone   {cpu:.2} CPU s: {:.0} requests and {:.0} events per CPU second (one core)",
                self.options.requests as f64 / cpu.max(1e-9),
                self.delivered_events as f64 / cpu.max(1e-9)
            )?;
        }
        write!(
            f,
            "  delivered      {} of {} accepted events, in {} records",
            self.delivered_events,
            self.options.requests * self.options.events_per_request as u64,
            self.records
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_run_delivers_every_event_and_measures_the_server_apart() {
        let report = run(BenchOptions {
            requests: 200,
            events_per_request: 3,
            connections: 2,
        })
        .await
        .expect("bench");
        assert_eq!(report.delivered_events, 600);
        // Clock-tick resolution: a tiny run may well measure 0 s; it must measure something.
        let server = report
            .server_cpu_seconds
            .expect("server thread CPU (Linux)");
        assert!(server.is_finite() && server >= 0.0, "{server}");
    }
}

//! `--synthetic RATE`: realistic clicks from [`clickheatmap_aggregator::synth::Generator`],
//! stamped with the current time and POSTed to the collector over HTTP, like browsers would.

use std::net::SocketAddr;
use std::time::Duration;

use clickheatmap_aggregator::synth::{Generator, SynthOptions};
use clickheatmap_aggregator::time::now_ms;
use clickheatmap_collector::client::HttpClient;
use tokio::sync::watch;

/// How often a batch is sent.
const TICK: Duration = Duration::from_millis(200);

/// Posts about `rate` clicks per second to the collector at `collector` until `stop` turns true.
pub async fn run(collector: SocketAddr, rate: f64, mut stop: watch::Receiver<bool>) {
    let mut generator = Generator::new(SynthOptions {
        seed: u64::try_from(now_ms()).unwrap_or(1),
        start_ms: now_ms(),
        clicks_per_second: rate.max(0.001),
        out_of_order_ms: 0,
        late_share: 0.0,
        invalid_share: 0.0,
    });
    let per_tick = rate * TICK.as_secs_f64();
    let mut owed = 0.0_f64;
    let mut client: Option<HttpClient> = None;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(rate, "sending synthetic clicks");
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
        owed += per_tick;
        let count = owed.floor();
        if count < 1.0 {
            continue;
        }
        owed -= count;
        let now = now_ms();
        let mut body = Vec::new();
        for _ in 0..(count as u64) {
            let mut click = generator.click();
            click.event_time_ms = now;
            click.write_json(&mut body);
            body.push(b'\n');
        }
        if client.is_none() {
            match HttpClient::connect(collector).await {
                Ok(connected) => client = Some(connected),
                Err(error) => {
                    tracing::warn!(%error, "synthetic clicks: cannot reach the collector");
                    continue;
                }
            }
        }
        let Some(connection) = client.as_mut() else {
            continue;
        };
        match connection
            .post("/v1/clicks", "application/x-ndjson", &body)
            .await
        {
            Ok(response) if response.status == 202 => {}
            Ok(response) => {
                tracing::warn!(
                    status = response.status,
                    body = %response.text(),
                    "synthetic clicks refused"
                );
            }
            Err(error) => {
                tracing::warn!(%error, "synthetic clicks: request failed; reconnecting");
                client = None;
            }
        }
    }
}

//! Exactly-once with enhanced fan-out, against kinesis-local (see `kinesis_local/mod.rs`: the
//! emulator runs in a private network namespace; moto has no SubscribeToShard).
//!
//! Clicks go into a two-shard stream while the aggregator reads it through SubscribeToShard; the
//! aggregator is killed with SIGKILL at random moments, three times, and started again each time
//! (its new subscriptions resume after the checkpointed sequence numbers). In the end the curated
//! table holds exactly the input, SUM(clicks) per (page, window, cell): nothing lost, nothing
//! counted twice, and the clicks came through subscriptions, not GetRecords.

mod common;
mod kinesis_local;

use std::path::PathBuf;
use std::time::Duration;

use clickheatmap_aggregator::synth::Rng;
use clickheatmap_aggregator::time::now_ms;
use kinesis_local::*;

#[test]
fn sigkill_with_enhanced_fan_out_in_a_private_network() {
    in_a_private_network(
        "sigkill_with_enhanced_fan_out_in_a_private_network",
        kill_while_subscribed,
    );
}

async fn kill_while_subscribed(dir: PathBuf) {
    let client = client();
    create_stream(&client, 2).await;
    let seed = now_ms() as u64;
    eprintln!("seed {seed}");
    let mut rng = Rng::new(seed);
    let mut expected = Sums::new();
    let config = write_config(&dir, Read::EnhancedFanOut);
    let log_path = dir.join("aggregator.log");

    let mut aggregator = start_aggregator(&config, &log_path);
    for round in 0..3 {
        put_clicks(&client, &mut rng, round, 300, &mut expected).await;
        // Somewhere between subscribing and having written everything: a process killed while
        // it still registers the consumer would prove nothing about resuming subscriptions.
        wait_for_log_lines(&log_path, FAN_OUT_STARTED, round as usize + 1).await;
        let delay = 500 + rng.below(2_500) as u64;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        aggregator.0.kill().unwrap();
        aggregator.0.wait().unwrap();
        eprintln!("round {round}: killed after {delay} ms");
        aggregator = start_aggregator(&config, &log_path);
    }
    put_clicks(&client, &mut rng, 3, 300, &mut expected).await;

    assert_curated_equals(&dir, &expected, &log_path).await;
    // The last process alone took at least the last batch through its subscriptions, and every
    // process subscribed to both shards.
    let fan_out_records = counter("clickheatmap_fan_out_records_total").unwrap_or(0.0);
    assert!(
        fan_out_records >= 300.0,
        "records through fan-out: {fan_out_records}; {}",
        metrics().unwrap_or_default()
    );
    assert_eq!(counter("clickheatmap_get_records_calls_total"), Some(0.0));
    terminate(&mut aggregator);
    assert_eq!(curated_sums(&curated_store(&dir)).await, expected);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(
        log.matches(FAN_OUT_STARTED).count(),
        4,
        "every start registered or found the consumer"
    );
}

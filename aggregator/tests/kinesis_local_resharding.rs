//! Resharding against kinesis-local (see `kinesis_local/mod.rs`: the emulator runs in a
//! private network namespace).
//!
//! A two-shard stream gets clicks, the aggregator process starts reading it, the stream is split
//! to four shards and two of the children are merged again, more clicks go in after each step,
//! and in the end the curated table (a local folder: S3 is the same code with another store)
//! holds exactly the input, SUM(clicks) per (page, window, cell). The aggregator's log shows that
//! each parent shard was read to its end before any of its children was started.
//!
//! The same scenario runs twice: with GetRecords polling, and with enhanced fan-out (a registered
//! stream consumer and SubscribeToShard event streams; kinesis-local implements them, moto does
//! not). kinesis-local never names child shards in its events, so in fan-out mode the parents are
//! finished by the aggregator's fallback (a shard that ListShards reports closed is read to its
//! end with GetRecords); against AWS the last event ends them.

mod common;
mod kinesis_local;

use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_kinesis::types::ScalingType;
use clickheatmap_aggregator::synth::Rng;
use clickheatmap_aggregator::time::now_ms;
use kinesis_local::*;

#[test]
fn resharding_in_a_private_network() {
    in_a_private_network("resharding_in_a_private_network", |dir| {
        reshard_while_consuming(dir, Read::Polling)
    });
}

#[test]
fn resharding_with_enhanced_fan_out_in_a_private_network() {
    in_a_private_network(
        "resharding_with_enhanced_fan_out_in_a_private_network",
        |dir| reshard_while_consuming(dir, Read::EnhancedFanOut),
    );
}

async fn reshard_while_consuming(dir: PathBuf, read: Read) {
    let client = client();
    create_stream(&client, 2).await;
    let mut rng = Rng::new(now_ms() as u64);
    let mut expected = Sums::new();
    put_clicks(&client, &mut rng, 0, 400, &mut expected).await;

    let config = write_config(&dir, read);
    let log_path = dir.join("aggregator.log");
    let mut aggregator = start_aggregator(&config, &log_path);
    // The parents are to be read through subscriptions too, not closed before the consumer
    // is active (a slow start would leave fewer subscriptions than the end asserts).
    if read == Read::EnhancedFanOut {
        wait_for_log_lines(&log_path, FAN_OUT_STARTED, 1).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Split: every open shard gets two children.
    client
        .update_shard_count()
        .stream_name(STREAM)
        .target_shard_count(4)
        .scaling_type(ScalingType::UniformScaling)
        .send()
        .await
        .unwrap();
    wait_active(&client).await;
    put_clicks(&client, &mut rng, 1, 400, &mut expected).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Merge two adjacent open shards back into one.
    let shards = client
        .list_shards()
        .stream_name(STREAM)
        .send()
        .await
        .unwrap();
    let mut open: Vec<_> = shards
        .shards()
        .iter()
        .filter(|shard| {
            shard
                .sequence_number_range()
                .is_some_and(|range| range.ending_sequence_number().is_none())
        })
        .collect();
    open.sort_by_key(|shard| {
        shard
            .hash_key_range()
            .map(|range| range.starting_hash_key().parse::<u128>().unwrap_or(0))
    });
    assert_eq!(open.len(), 4, "four open shards after the split");
    client
        .merge_shards()
        .stream_name(STREAM)
        .shard_to_merge(open[0].shard_id())
        .adjacent_shard_to_merge(open[1].shard_id())
        .send()
        .await
        .unwrap();
    wait_active(&client).await;
    put_clicks(&client, &mut rng, 2, 400, &mut expected).await;

    assert_curated_equals(&dir, &expected, &log_path).await;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();

    // Every parent was read to its end before any of its children started.
    let all = client
        .list_shards()
        .stream_name(STREAM)
        .send()
        .await
        .unwrap();
    let closed = shards_logged(&log, "shard closed and fully read");
    let recovered = shards_logged(&log, "shard recovered");
    let line_of = |message: &str, shard: &str| {
        log.lines()
            .position(|line| line.contains(message) && line.contains(&format!("\"{shard}\"")))
    };
    let mut parents_checked = 0;
    for shard in all.shards() {
        for parent in [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
            .into_iter()
            .flatten()
        {
            assert!(
                closed.iter().any(|s| s == parent),
                "parent {parent} not finished: {closed:?}"
            );
            let parent_done = line_of("shard closed and fully read", parent).unwrap();
            let child_started = line_of("shard recovered", shard.shard_id()).unwrap_or_else(|| {
                panic!("child {} never started: {recovered:?}", shard.shard_id())
            });
            assert!(
                parent_done < child_started,
                "child {} started before its parent {parent} was finished",
                shard.shard_id()
            );
            parents_checked += 1;
        }
    }
    // Two split parents (one child pair each, so four links) and one merge (two parents).
    assert_eq!(parents_checked, 6, "{recovered:?}");

    let fan_out_records = counter("clickheatmap_fan_out_records_total").unwrap_or(0.0);
    match read {
        Read::Polling => {
            assert_eq!(fan_out_records, 0.0);
            // Every response went through the aggregator's own GetRecords decoder.
            assert!(counter("clickheatmap_get_records_calls_total").unwrap_or(0.0) > 0.0);
            assert_eq!(
                counter("clickheatmap_get_records_decoded_by_sdk_total"),
                Some(0.0)
            );
        }
        Read::EnhancedFanOut => {
            // The consumer was registered and used: at least the last 400 clicks, which went
            // to shards that stayed open, arrived through subscriptions.
            let consumers = client
                .list_stream_consumers()
                .stream_arn(
                    client
                        .describe_stream_summary()
                        .stream_name(STREAM)
                        .send()
                        .await
                        .unwrap()
                        .stream_description_summary()
                        .unwrap()
                        .stream_arn(),
                )
                .send()
                .await
                .unwrap();
            let names: Vec<&str> = consumers
                .consumers()
                .iter()
                .map(|consumer| consumer.consumer_name())
                .collect();
            assert_eq!(names, ["test-aggregator"]);
            assert!(
                fan_out_records >= 400.0,
                "records through fan-out: {fan_out_records}; {}",
                metrics().unwrap_or_default()
            );
            assert!(counter("clickheatmap_subscribe_to_shard_calls_total").unwrap_or(0.0) >= 5.0);
        }
    }

    terminate(&mut aggregator);
    assert_eq!(curated_sums(&curated_store(&dir)).await, expected);
}

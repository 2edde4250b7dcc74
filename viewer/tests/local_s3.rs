//! The local engine over `s3://` (a moto server on 127.0.0.1): the curated files written there by
//! the real aggregator pipeline, read back by the embedded SQL engine with the same statements
//! and the same partition pruning as over a folder.
//!
//! The S3 location takes its endpoint and credentials from the environment (as in production),
//! so this binary holds this one test: it sets them before anything else runs.

mod common;

use std::path::Path;

use clickheatmap_testkit::MotoServer;
use clickheatmap_viewer::engine::local::LocalSettings;
use clickheatmap_viewer::engine::{HeatmapEngine, HeatmapQuery};
use clickheatmap_viewer::params::{PageId, QueryRange};
use common::*;

#[test]
fn the_local_engine_reads_the_curated_table_on_s3() {
    let moto = MotoServer::start();
    moto.create_bucket("curated-bucket");
    for (name, value) in moto.aws_env() {
        // SAFETY: the only test of this binary; no other thread reads the environment yet.
        unsafe { std::env::set_var(name, value) };
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let root = Path::new("s3://curated-bucket/curated");
            let lines = vec![
                click("home", T0 + 1_000, 0.0, 0.0),
                click("home", T0 + 2_000, 10.0, 5.0),
                click("home", T0 + 30 * MINUTE, 525.0, 260.0),
                click("pricing", T0 + 10 * MINUTE, 60.0, 30.0),
                // Three hours later: another partition, outside the range below.
                click("home", T0 + 3 * HOUR, 999.0, 499.0),
            ];
            write_curated(root, &lines, T0).await;
            let engine = local_engine(root, LocalSettings::default());

            let query = HeatmapQuery {
                page: PageId::parse(Some("home")).unwrap(),
                range: QueryRange {
                    from_ms: T0,
                    to_ms: T0 + HOUR,
                },
            };
            let result = engine.heatmap(&query).await.unwrap();
            assert_eq!(result.cells, vec![(0, 0, 2), (10, 10, 1)]);
            // Three windows in hour 10; the file of hour 13 was pruned, not opened.
            assert_eq!(result.query.files_read, Some(3));

            let pages = engine
                .pages(QueryRange {
                    from_ms: T0 - HOUR,
                    to_ms: T0 + 4 * HOUR,
                })
                .await
                .unwrap();
            let totals: Vec<(&str, i64)> = pages
                .pages
                .iter()
                .map(|page| (page.page_id.as_str(), page.clicks))
                .collect();
            assert_eq!(totals, [("home", 4), ("pricing", 1)]);

            let table = engine
                .raw_sql(
                    "SELECT hour, SUM(clicks) FROM curated_heatmap GROUP BY hour ORDER BY hour",
                )
                .await
                .unwrap();
            assert_eq!(
                table.rows,
                [
                    [Some("10".to_owned()), Some("4".to_owned())],
                    [Some("13".to_owned()), Some("1".to_owned())]
                ]
            );
        });
}

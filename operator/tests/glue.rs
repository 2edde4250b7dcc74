//! The Glue reconciler against a real moto server: the database and the curated table with
//! partition projection created from nothing, a resync without writes, table drift repaired
//! (keeping parameters a crawler added), crawler mode with its crawler, a running crawler never
//! updated, a switch back to projection removing the crawler, conflicts, adoption of the demo's
//! hand-made database and table (and of a team's catalog, keeping every setting the spec does not
//! declare), and both deletion policies.
//!
//! moto gaps: moto has no `UpdateCrawler` (HTTP 500), so crawler drift is shown to be *planned*
//! (and refused while the crawler runs), and the failed apply is shown to be classified as
//! retryable; the UpdateCrawler request itself is not exercised. moto's crawler is a state stub:
//! its crawl state is pinned with moto's state-manager API so that no test depends on timing.

mod common;

use std::collections::HashMap;

use aws_sdk_glue::types::{
    CatalogTarget, Column, CrawlerTargets, DatabaseInput, DeleteBehavior, RecrawlBehavior,
    RecrawlPolicy, SchemaChangePolicy, SerDeInfo, StorageDescriptor, TableInput, UpdateBehavior,
};
use clickheatmap_crds::PartitionDiscovery;
use clickheatmap_operator::aws::{Deletion, PartReconciler, glue};
use clickheatmap_operator::{Error, Owner, Reason};
use common::{Env, assert_no_writes, pipeline, start, writes_since};
use serde_json::json;

async fn reconcile(env: &Env, desired: &glue::DesiredCatalog) -> Result<Vec<glue::Change>, Error> {
    let observed = glue::observe(&env.clients.glue, desired).await?;
    let mut made = Vec::new();
    for change in glue::Catalog::diff(desired, Some(&observed))? {
        glue::apply(&env.clients.glue, &change).await?;
        made.push(change);
    }
    Ok(made)
}

async fn desired(
    env: &Env,
    file: &str,
    adopt: bool,
    previous_crawler: Option<&str>,
) -> glue::DesiredCatalog {
    let mut pipeline = pipeline(file);
    pipeline.spec.adopt_existing = adopt;
    glue::desired(
        &pipeline.spec,
        &env.names(&pipeline).await,
        previous_crawler,
    )
    .expect("valid")
}

fn ops(changes: &[glue::Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| {
            serde_json::to_value(c).expect("json")["op"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

async fn table_parameters(env: &Env, catalog: &glue::DesiredCatalog) -> HashMap<String, String> {
    env.clients
        .glue
        .get_table()
        .database_name(&catalog.table.database)
        .name(&catalog.table.name)
        .send()
        .await
        .expect("get table")
        .table()
        .and_then(|t| t.parameters())
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn projection_catalog_is_created_then_left_alone() {
    let env = start().await;
    let catalog = desired(&env, "minimal", false, None).await;
    let made = reconcile(&env, &catalog).await.expect("create");
    assert_eq!(ops(&made), ["CreateDatabase", "CreateTable"]);

    let table = env
        .clients
        .glue
        .get_table()
        .database_name("heatmap_demo")
        .name("curated_heatmap")
        .send()
        .await
        .expect("get table");
    let table = table.table().expect("table");
    let storage = table.storage_descriptor().expect("storage");
    let columns: Vec<_> = storage
        .columns()
        .iter()
        .map(|c| format!("{} {}", c.name(), c.r#type().unwrap_or("")))
        .collect();
    assert_eq!(
        columns,
        [
            "page_id string",
            "grid_x int",
            "grid_y int",
            "window_start bigint",
            "window_end bigint",
            "clicks bigint"
        ]
    );
    let keys: Vec<_> = table.partition_keys().iter().map(|c| c.name()).collect();
    assert_eq!(keys, ["dt", "hour"]);
    assert_eq!(
        storage.location(),
        Some("s3://shop-heatmap-curated-123456789012/curated/curated_heatmap/")
    );
    assert_eq!(storage.input_format(), Some(glue::PARQUET_INPUT_FORMAT));
    assert_eq!(
        storage.serde_info().and_then(|s| s.serialization_library()),
        Some(glue::PARQUET_SERDE)
    );
    let parameters = table.parameters().expect("parameters");
    assert_eq!(parameters["projection.enabled"], "true");
    assert_eq!(parameters["projection.dt.range"], "NOW-3YEARS,NOW");
    assert_eq!(parameters["projection.hour.digits"], "2");
    assert_eq!(parameters["clickheatmap.io/pipeline"], "analytics/shop");
    let tags = env
        .clients
        .glue
        .get_tags()
        .resource_arn(&catalog.database.arn)
        .send()
        .await
        .expect("tags");
    assert_eq!(
        tags.tags()
            .and_then(|t| t.get("clickheatmap.io/pipeline"))
            .map(String::as_str),
        Some("analytics/shop")
    );

    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &catalog).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "catalog resync");
}

#[tokio::test]
async fn table_drift_is_repaired_and_foreign_parameters_kept() {
    let env = start().await;
    let catalog = desired(&env, "minimal", false, None).await;
    reconcile(&env, &catalog).await.expect("create");
    // Behind the operator's back: projection off, grid_x a string, and a statistic a crawler
    // would add.
    let mut parameters = table_parameters(&env, &catalog).await;
    parameters.remove("projection.enabled");
    parameters.insert("recordCount".into(), "42".into());
    let mut columns: Vec<Column> = glue::curated_columns()
        .iter()
        .map(|c| {
            Column::builder()
                .name(&c.name)
                .r#type(&c.kind)
                .build()
                .expect("column")
        })
        .collect();
    columns[1] = Column::builder()
        .name("grid_x")
        .r#type("string")
        .build()
        .expect("column");
    env.clients
        .glue
        .update_table()
        .database_name("heatmap_demo")
        .table_input(
            TableInput::builder()
                .name("curated_heatmap")
                .storage_descriptor(
                    StorageDescriptor::builder()
                        .set_columns(Some(columns))
                        .location("s3://elsewhere/")
                        .build(),
                )
                .set_parameters(Some(parameters))
                .build()
                .expect("table input"),
        )
        .send()
        .await
        .expect("drift");

    let made = reconcile(&env, &catalog).await.expect("repair");
    assert_eq!(ops(&made), ["UpdateTable"]);
    let parameters = table_parameters(&env, &catalog).await;
    assert_eq!(parameters["projection.enabled"], "true");
    assert_eq!(
        parameters["recordCount"], "42",
        "foreign parameters are kept"
    );
    let observed = glue::observe(&env.clients.glue, &catalog)
        .await
        .expect("observe");
    let table = observed.table.expect("table");
    assert_eq!(table.definition.columns[1].kind, "int");
    assert_eq!(table.definition.location, catalog.table.definition.location);

    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &catalog).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "resync after repair");
}

#[tokio::test]
async fn crawler_mode_and_a_running_crawler() {
    let env = start().await;
    let catalog = desired(&env, "full", false, None).await;
    let made = reconcile(&env, &catalog).await.expect("create");
    assert_eq!(
        ops(&made),
        ["CreateDatabase", "CreateTable", "CreateCrawler"]
    );
    let crawler = env
        .clients
        .glue
        .get_crawler()
        .name("shop-full-curated")
        .send()
        .await
        .expect("crawler");
    let crawler = crawler.crawler().expect("crawler");
    assert_eq!(
        crawler.role(),
        Some("arn:aws:iam::123456789012:role/shop-heatmap-crawler")
    );
    assert_eq!(
        crawler.schedule().and_then(|s| s.schedule_expression()),
        Some("cron(0/15 * * * ? *)")
    );
    let target = &crawler.targets().expect("targets").catalog_targets()[0];
    assert_eq!(target.database_name(), "shop_heatmap");
    assert_eq!(target.tables(), ["curated_heatmap"]);
    let parameters = table_parameters(&env, &catalog).await;
    assert!(!parameters.contains_key("projection.enabled"));

    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &catalog).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "crawler-mode resync");

    // A crawl that stays RUNNING until the test says otherwise.
    env.set_transition(
        "glue::crawl",
        json!({"progression": "manual", "times": 1_000_000}),
    );
    env.clients
        .glue
        .start_crawler()
        .name("shop-full-curated")
        .send()
        .await
        .expect("start crawler");
    // No drift: a running crawler is simply left alone.
    let before = env.calls.snapshot();
    assert_eq!(
        reconcile(&env, &catalog)
            .await
            .expect("resync while running"),
        vec![]
    );
    assert_no_writes(&env.calls, &before, "resync while crawling");

    // Drift while it runs (moto has no UpdateCrawler, so the drift is made by re-creating the
    // crawler with another schedule): the update waits, retryably, and nothing is written.
    let mut other = desired(&env, "full", false, None).await;
    if let Some(crawler) = other.crawler.as_mut() {
        crawler.definition.schedule = "cron(0 * * * ? *)".into();
    }
    let observed = glue::observe(&env.clients.glue, &other)
        .await
        .expect("observe");
    assert_eq!(
        observed.crawler.as_ref().map(|c| c.state.as_str()),
        Some("RUNNING")
    );
    let before = env.calls.snapshot();
    let error = reconcile(&env, &other).await.expect_err("running");
    assert_eq!(
        error,
        Error::CrawlerRunning {
            crawler: "shop-full-curated".into()
        }
    );
    assert!(error.is_retryable());
    assert_eq!(error.reason(), Reason::Retrying);
    assert_eq!(writes_since(&env.calls, &before), Vec::<String>::new());

    // Once the crawl is over the update is planned (and, on moto, fails retryably: no
    // UpdateCrawler there).
    env.set_transition("glue::crawl", json!({"progression": "immediate"}));
    let observed = glue::observe(&env.clients.glue, &other)
        .await
        .expect("observe");
    assert_eq!(
        observed.crawler.as_ref().map(|c| c.state.as_str()),
        Some("READY")
    );
    let changes = glue::Catalog::diff(&other, Some(&observed)).expect("diff");
    assert_eq!(ops(&changes), ["UpdateCrawler"]);
    let error = glue::apply(&env.clients.glue, &changes[0])
        .await
        .expect_err("moto gap");
    assert!(error.is_retryable(), "{error}");
}

#[tokio::test]
async fn switching_to_projection_removes_the_pipelines_crawler() {
    let env = start().await;
    let crawled = desired(&env, "full", false, None).await;
    reconcile(&env, &crawled).await.expect("create");
    let mut pipeline = pipeline("full");
    pipeline.spec.catalog.partitions = PartitionDiscovery::Projection;
    let projection = glue::desired(
        &pipeline.spec,
        &env.names(&pipeline).await,
        Some("shop-full-curated"),
    )
    .expect("valid");
    let made = reconcile(&env, &projection).await.expect("switch");
    assert_eq!(ops(&made), ["UpdateTable", "DeleteCrawler"]);
    assert!(
        env.clients
            .glue
            .get_crawler()
            .name("shop-full-curated")
            .send()
            .await
            .is_err()
    );
    assert_eq!(
        table_parameters(&env, &projection).await["projection.enabled"],
        "true"
    );
    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &projection).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "resync after the switch");
}

#[tokio::test]
async fn conflicts_are_refused() {
    let env = start().await;
    let catalog = desired(&env, "minimal", true, None).await;
    // A database of another pipeline.
    env.clients
        .glue
        .create_database()
        .database_input(
            DatabaseInput::builder()
                .name("heatmap_demo")
                .build()
                .expect("input"),
        )
        .set_tags(Some(
            Owner::new("analytics", "other")
                .tags()
                .into_iter()
                .collect(),
        ))
        .send()
        .await
        .expect("create database");
    let before = env.calls.snapshot();
    let error = reconcile(&env, &catalog).await.expect_err("conflict");
    assert_eq!(error.reason(), Reason::Conflict);
    assert!(
        error.to_string().contains("Glue database heatmap_demo"),
        "{error}"
    );
    assert_eq!(writes_since(&env.calls, &before), Vec::<String>::new());
    assert!(
        !env.calls.since(&before).contains_key("Glue:GetTable"),
        "nothing past a foreign database is read"
    );

    // Our database, but in it a table another pipeline marked as its own.
    let env = start().await;
    let mut marked_by_other = catalog.clone();
    marked_by_other.table.definition.parameters = Owner::new("analytics", "other").tags();
    reconcile(&env, &marked_by_other)
        .await
        .expect("a database of ours with a table of another pipeline");
    let before = env.calls.snapshot();
    let error = reconcile(&env, &catalog).await.expect_err("conflict");
    assert_eq!(error.reason(), Reason::Conflict);
    assert!(
        error
            .to_string()
            .contains("table heatmap_demo.curated_heatmap"),
        "{error}"
    );
    assert_eq!(writes_since(&env.calls, &before), Vec::<String>::new());
}

#[tokio::test]
async fn the_demos_hand_made_catalog_is_adopted_only_when_asked() {
    let env = start().await;
    // The demo made these by hand (and with a crawler): untagged, no owner parameters.
    env.clients
        .glue
        .create_database()
        .database_input(
            DatabaseInput::builder()
                .name("heatmap_demo")
                .build()
                .expect("input"),
        )
        .send()
        .await
        .expect("create database");
    let columns: Vec<Column> = glue::curated_columns()
        .iter()
        .map(|c| {
            Column::builder()
                .name(&c.name)
                .r#type(&c.kind)
                .build()
                .expect("column")
        })
        .collect();
    env.clients
        .glue
        .create_table()
        .database_name("heatmap_demo")
        .table_input(
            TableInput::builder()
                .name("curated_heatmap")
                .storage_descriptor(
                    StorageDescriptor::builder()
                        .set_columns(Some(columns))
                        .location("s3://shop-heatmap-curated-123456789012/curated/curated_heatmap/")
                        .build(),
                )
                .parameters("classification", "parquet")
                .build()
                .expect("table input"),
        )
        .send()
        .await
        .expect("create table");

    let without = desired(&env, "minimal", false, None).await;
    let before = env.calls.snapshot();
    let error = reconcile(&env, &without).await.expect_err("conflict");
    assert!(error.to_string().contains("adoptExisting"), "{error}");
    assert_eq!(writes_since(&env.calls, &before), Vec::<String>::new());

    let with = desired(&env, "minimal", true, None).await;
    assert_eq!(
        ops(&reconcile(&env, &with).await.expect("adopt")),
        ["TagResource", "UpdateTable"]
    );
    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &without).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "resync after adoption");
}

#[tokio::test]
async fn deletion_policies() {
    let env = start().await;
    let catalog = desired(&env, "full", false, None).await;
    reconcile(&env, &catalog).await.expect("create");
    let deleted = glue::delete(&env.clients.glue, &catalog)
        .await
        .expect("delete");
    assert!(
        deleted.iter().all(|(_, d)| *d == Deletion::Gone),
        "{deleted:?}"
    );
    let observed = glue::observe(&env.clients.glue, &catalog)
        .await
        .expect("observe");
    assert_eq!(observed, glue::ObservedCatalog::default());

    // A crawler someone else tagged, with the pipeline's crawler name, survives deletion.
    let env = start().await;
    env.clients
        .glue
        .create_crawler()
        .name("shop-full-curated")
        .role("arn:aws:iam::123456789012:role/x")
        .targets(
            CrawlerTargets::builder()
                .catalog_targets(
                    CatalogTarget::builder()
                        .database_name("x")
                        .tables("y")
                        .build()
                        .expect("target"),
                )
                .build(),
        )
        .set_tags(Some(
            Owner::new("analytics", "other")
                .tags()
                .into_iter()
                .collect(),
        ))
        .send()
        .await
        .expect("create crawler");
    let deleted = glue::delete(&env.clients.glue, &catalog)
        .await
        .expect("delete");
    assert!(matches!(deleted[0].1, Deletion::Kept(_)), "{deleted:?}");
    assert!(
        env.clients
            .glue
            .get_crawler()
            .name("shop-full-curated")
            .send()
            .await
            .is_ok()
    );
}

/// What a team set on its own database, table and crawler, as Glue describes it (the owner
/// parameters the operator adds left out).
async fn own_settings(env: &Env, catalog: &glue::DesiredCatalog) -> Vec<String> {
    let glue = &env.clients.glue;
    let database = glue
        .get_database()
        .name(&catalog.database.name)
        .send()
        .await
        .expect("database")
        .database
        .expect("database");
    let table = glue
        .get_table()
        .database_name(&catalog.table.database)
        .name(&catalog.table.name)
        .send()
        .await
        .expect("table")
        .table
        .expect("table");
    let crawler = glue
        .get_crawler()
        .name("shop-full-curated")
        .send()
        .await
        .expect("crawler")
        .crawler
        .expect("crawler");
    let storage = table.storage_descriptor().expect("storage");
    let serde = storage.serde_info().expect("serde");
    let mut parameters = table.parameters().cloned().unwrap_or_default();
    for key in Owner::new("analytics", "shop-full").tags().keys() {
        parameters.remove(key);
    }
    let sorted = |map: Option<&HashMap<String, String>>| {
        let mut entries: Vec<_> = map.into_iter().flatten().collect();
        entries.sort();
        format!("{entries:?}")
    };
    let configuration: serde_json::Value =
        serde_json::from_str(crawler.configuration().expect("configuration")).expect("json");
    vec![
        format!("{:?}", database.description()),
        sorted(database.parameters()),
        format!("{:?}", table.description()),
        format!("{:?} {}", table.owner(), table.retention()),
        sorted(Some(&parameters)),
        sorted(storage.parameters()),
        format!("{:?} {}", serde.name(), sorted(serde.parameters())),
        format!(
            "{:?}",
            storage
                .columns()
                .iter()
                .map(|c| c.comment())
                .collect::<Vec<_>>()
        ),
        format!("{:?}", crawler.description()),
        format!("{:?}", crawler.recrawl_policy()),
        configuration.to_string(),
    ]
}

#[tokio::test]
async fn adopting_a_teams_catalog_keeps_its_own_settings() {
    let env = start().await;
    let catalog = desired(&env, "full", true, None).await;
    let glue = &env.clients.glue;
    glue.create_database()
        .database_input(
            DatabaseInput::builder()
                .name(&catalog.database.name)
                .description("The web team's click data")
                .parameters("team", "web")
                .build()
                .expect("input"),
        )
        .send()
        .await
        .expect("create database");
    let definition = &catalog.table.definition;
    let columns: Vec<Column> = definition
        .columns
        .iter()
        .map(|c| {
            Column::builder()
                .name(&c.name)
                .r#type(&c.kind)
                .set_comment((c.name == "clicks").then(|| "clicks in the cell".to_owned()))
                .build()
                .expect("column")
        })
        .collect();
    let keys: Vec<Column> = definition
        .partition_keys
        .iter()
        .map(|c| {
            Column::builder()
                .name(&c.name)
                .r#type(&c.kind)
                .build()
                .expect("column")
        })
        .collect();
    glue.create_table()
        .database_name(&catalog.table.database)
        .table_input(
            TableInput::builder()
                .name(&catalog.table.name)
                .table_type("EXTERNAL_TABLE")
                .description("Heatmap cells, one row per page, cell and window")
                .owner("web-team")
                .retention(90)
                .storage_descriptor(
                    StorageDescriptor::builder()
                        .set_columns(Some(columns))
                        .location(&definition.location)
                        .input_format(&definition.input_format)
                        .output_format(&definition.output_format)
                        .serde_info(
                            SerDeInfo::builder()
                                .name("curated")
                                .serialization_library(&definition.serde_library)
                                .parameters("serialization.format", "1")
                                .parameters("parquet.compression", "ZSTD")
                                .build(),
                        )
                        .parameters("team", "web")
                        .build(),
                )
                .set_partition_keys(Some(keys))
                .parameters("classification", "parquet")
                .parameters("EXTERNAL", "TRUE")
                .parameters("team", "web")
                .parameters("recordCount", "1234")
                .build()
                .expect("table input"),
        )
        .send()
        .await
        .expect("create table");
    let crawler = catalog
        .crawler
        .as_ref()
        .expect("crawler")
        .definition
        .clone();
    glue.create_crawler()
        .name(&crawler.name)
        .role(&crawler.role_arn)
        .description("Adds the new hours")
        .targets(
            CrawlerTargets::builder()
                .catalog_targets(
                    CatalogTarget::builder()
                        .database_name(&crawler.database)
                        .set_tables(Some(crawler.tables.clone()))
                        .build()
                        .expect("target"),
                )
                .build(),
        )
        .schedule(&crawler.schedule)
        .schema_change_policy(
            SchemaChangePolicy::builder()
                .update_behavior(UpdateBehavior::Log)
                .delete_behavior(DeleteBehavior::Log)
                .build(),
        )
        .recrawl_policy(
            RecrawlPolicy::builder()
                .recrawl_behavior(RecrawlBehavior::CrawlEverything)
                .build(),
        )
        .configuration(
            json!({
                "Version": 1.0,
                "CrawlerOutput": {"Partitions": {"AddOrUpdateBehavior": "InheritFromTable"}},
                "Grouping": {"TableGroupingPolicy": "CombineCompatibleSchemas"}
            })
            .to_string(),
        )
        .send()
        .await
        .expect("create crawler");
    let settings = own_settings(&env, &catalog).await;

    // Adoption tags the database and crawler and marks the table as the pipeline's (UpdateTable,
    // which replaces the whole table input: everything else is carried over).
    let made = reconcile(&env, &catalog).await.expect("adopt");
    assert_eq!(ops(&made), ["TagResource", "UpdateTable", "TagResource"]);
    assert_eq!(own_settings(&env, &catalog).await, settings);
    let observed = glue::observe(&env.clients.glue, &catalog)
        .await
        .expect("observe");
    assert_eq!(
        glue::Catalog::kept(&catalog, Some(&observed)),
        [
            "Glue database shop_heatmap description",
            "Glue database shop_heatmap parameters [team]",
            "table shop_heatmap.curated_heatmap description, owner web-team, retention 90 days, storage parameters [team], SerDe name curated, comments on [clicks], parameters [team], SerDe parameters [parquet.compression]",
            "crawler shop-full-curated description, recrawl policy CRAWL_EVERYTHING, configuration [Grouping]",
        ]
    );

    // A resync plans nothing, writes nothing, and changes nothing of the team's.
    let before = env.calls.snapshot();
    assert_eq!(reconcile(&env, &catalog).await.expect("resync"), vec![]);
    assert_no_writes(&env.calls, &before, "resync after adoption");
    assert_eq!(own_settings(&env, &catalog).await, settings);
}

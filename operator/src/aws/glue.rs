//! The Glue Data Catalog over the curated data: a database, the `curated_heatmap` table, and —
//! for `partitions: Crawler` — a crawler that adds its partitions.
//!
//! The table is created by the operator with the exact curated Parquet schema (the contract in
//! docs/ARCHITECTURE.md: `page_id string, grid_x int, grid_y int, window_start bigint,
//! window_end bigint, clicks bigint`, partitioned by `dt string, hour string`), so the demo's SQL
//! works the moment the first file lands, and a crawler can never guess a different schema.
//!
//! * `partitions: Projection` (default): Athena partition projection parameters on the table
//!   (`dt` a date from three years ago to now, `hour` two-digit 0–23, and the
//!   `storage.location.template`). No crawler, no partition API calls; a new hour is queryable
//!   at once.
//! * `partitions: Crawler`: a crawler on a *catalog target* (this table) that only adds
//!   partitions: schema changes are logged, never applied (`UpdateBehavior: LOG`), and new
//!   partitions inherit the table's definition. A crawler is never updated while it runs
//!   ([`Error::CrawlerRunning`], retried later).
//!
//! Glue tables cannot carry resource tags, so the table's owner is recorded in two table
//! parameters with the same keys as the tags.
//!
//! **Only what the spec declares.** The operator owns the table's type, location, columns,
//! partition keys, formats, SerDe library, its own parameters (classification, `EXTERNAL`, the
//! owner, and the projection parameters of the spec's `partitions`) and its own SerDe parameter.
//! `UpdateTable` replaces the whole table input, so everything else an existing table has is
//! carried over verbatim ([`UnmanagedTableSettings`]): other table and SerDe parameters (a
//! crawler's statistics, a team's own keys), the description, owner, retention, storage
//! descriptor parameters, SerDe name, compression flag and column comments. The database is
//! never updated (its description and parameters stay as they are). A crawler's configuration
//! JSON only has to *contain* the operator's settings: other keys (grouping, table-level
//! settings) are kept, and an `UpdateCrawler` writes them back merged; the fields it does not
//! name (description, recrawl policy, classifiers, table prefix, lineage, security
//! configuration) keep their values. What is kept is said in the condition ([`Catalog::kept`]).

use std::collections::BTreeMap;
use std::fmt;

use aws_sdk_glue::Client;
use aws_sdk_glue::types::{
    CatalogTarget, Column as SdkColumn, CrawlerTargets, DatabaseInput, DeleteBehavior,
    SchemaChangePolicy, SerDeInfo, StorageDescriptor, TableInput, UpdateBehavior,
};
use clickheatmap_crds::{ClickHeatmapPipelineSpec, PartitionDiscovery, PipelineResources};
use serde::Serialize;

use super::{
    AwsClients, Deletion, PartReconciler, PlanInput, Readiness, SdkResultExt, Service, check_owner,
    is_ours, may_manage, tag_change,
};
use crate::error::Error;
use crate::names::{Names, Owner, crawler_name, curated_table_location};
use crate::pipeline::{DeleteStep, Part};

pub const PARQUET_INPUT_FORMAT: &str =
    "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat";
pub const PARQUET_OUTPUT_FORMAT: &str =
    "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat";
pub const PARQUET_SERDE: &str = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe";
/// The crawler's configuration: partitions it adds inherit the table's definition.
pub const CRAWLER_CONFIGURATION: &str =
    r#"{"Version":1.0,"CrawlerOutput":{"Partitions":{"AddOrUpdateBehavior":"InheritFromTable"}}}"#;

/// Table parameters that only exist for partition projection; removed in crawler mode.
fn is_projection_parameter(key: &str) -> bool {
    key.starts_with("projection.") || key == "storage.location.template"
}

/// Table parameters a Glue crawler writes on the tables it updates: kept like any other, but
/// not worth saying in the condition.
const CRAWLER_TABLE_PARAMETERS: [&str; 9] = [
    "averageRecordSize",
    "compressionType",
    "CrawlerSchemaDeserializerVersion",
    "CrawlerSchemaSerializerVersion",
    "objectCount",
    "recordCount",
    "sizeKey",
    "typeOfData",
    "UPDATED_BY_CRAWLER",
];

/// A column name and its Hive type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl Column {
    fn new(name: &str, kind: &str) -> Column {
        Column {
            name: name.to_owned(),
            kind: kind.to_owned(),
        }
    }
}

/// A table definition, as far as the operator manages it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableDefinition {
    pub table_type: String,
    pub location: String,
    pub columns: Vec<Column>,
    pub partition_keys: Vec<Column>,
    pub input_format: String,
    pub output_format: String,
    pub serde_library: String,
    pub serde_parameters: BTreeMap<String, String>,
    /// All parameters (on a desired table: the managed ones, including the owner).
    pub parameters: BTreeMap<String, String>,
    /// What the table has that the spec does not declare (none on a desired table): never
    /// compared, carried over by every update.
    pub unmanaged: UnmanagedTableSettings,
}

/// The settings of a table that the operator does not manage; see the module comment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnmanagedTableSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Days; 0 when unset.
    pub retention: i32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_parameters: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serde_name: Option<String>,
    pub compressed: bool,
    /// Column comments by column name (lower case).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub column_comments: BTreeMap<String, String>,
}

impl UnmanagedTableSettings {
    /// The settings, described for the condition (empty when there are none).
    fn describe(&self) -> Vec<String> {
        let mut said = Vec::new();
        if self.description.as_deref().is_some_and(|d| !d.is_empty()) {
            said.push("description".to_owned());
        }
        if let Some(owner) = self.owner.as_deref().filter(|o| !o.is_empty()) {
            said.push(format!("owner {owner}"));
        }
        if self.retention > 0 {
            said.push(format!("retention {} days", self.retention));
        }
        if !self.storage_parameters.is_empty() {
            said.push(format!(
                "storage parameters [{}]",
                keys(&self.storage_parameters)
            ));
        }
        if let Some(name) = self.serde_name.as_deref().filter(|n| !n.is_empty()) {
            said.push(format!("SerDe name {name}"));
        }
        if self.compressed {
            said.push("compressed flag".to_owned());
        }
        if !self.column_comments.is_empty() {
            said.push(format!("comments on [{}]", keys(&self.column_comments)));
        }
        said
    }
}

/// `a, b, c`: the keys of a map, for messages.
fn keys(map: &BTreeMap<String, String>) -> String {
    map.keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredDatabase {
    pub name: String,
    pub arn: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredTable {
    pub database: String,
    pub name: String,
    pub definition: TableDefinition,
}

/// A crawler's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CrawlerDefinition {
    pub name: String,
    pub role_arn: String,
    pub schedule: String,
    /// Catalog target: the database and table it crawls.
    pub database: String,
    pub tables: Vec<String>,
    pub update_behavior: String,
    pub delete_behavior: String,
    /// JSON; compared as JSON, not as text.
    pub configuration: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredCrawler {
    pub arn: String,
    pub definition: CrawlerDefinition,
    pub tags: BTreeMap<String, String>,
}

/// The catalog as the spec wants it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredCatalog {
    pub database: DesiredDatabase,
    pub table: DesiredTable,
    /// `Some` for `partitions: Crawler`.
    pub crawler: Option<DesiredCrawler>,
    /// A crawler this pipeline made earlier and no longer wants (partitions switched to
    /// `Projection`): removed if it is still tagged by the pipeline.
    pub crawler_to_remove: Option<(String, String)>,
    pub owner: Owner,
    pub adopt_existing: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedDatabase {
    pub name: String,
    pub catalog_id: Option<String>,
    pub description: Option<String>,
    /// Never written by the operator.
    pub parameters: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedTable {
    pub database: String,
    pub name: String,
    pub definition: TableDefinition,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedCrawler {
    /// `READY`, `RUNNING` or `STOPPING`.
    pub state: String,
    pub definition: CrawlerDefinition,
    /// Number of non-catalog targets (S3, JDBC, …) the crawler also has.
    pub other_targets: usize,
    /// The settings `UpdateCrawler` does not name (description, recrawl policy, …), described:
    /// they keep their values.
    pub unmanaged: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

/// What exists of the catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedCatalog {
    pub database: Option<ObservedDatabase>,
    pub table: Option<ObservedTable>,
    pub crawler: Option<ObservedCrawler>,
    /// The crawler named in [`DesiredCatalog::crawler_to_remove`].
    pub crawler_to_remove: Option<ObservedCrawler>,
}

/// One Glue call the operator would make.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all_fields = "camelCase")]
pub enum Change {
    CreateDatabase {
        database: String,
        description: String,
        tags: BTreeMap<String, String>,
    },
    /// TagResource on a database or crawler.
    TagResource {
        resource: String,
        resource_arn: String,
        tags: BTreeMap<String, String>,
    },
    CreateTable {
        database: String,
        table: String,
        definition: TableDefinition,
    },
    /// UpdateTable with the complete definition (everything the operator does not manage is
    /// carried over: see [`UnmanagedTableSettings`]).
    UpdateTable {
        database: String,
        table: String,
        definition: TableDefinition,
    },
    CreateCrawler {
        crawler: CrawlerDefinition,
        tags: BTreeMap<String, String>,
    },
    /// UpdateCrawler with the operator's settings; the configuration is the existing one with
    /// the operator's keys set (its other keys are kept).
    UpdateCrawler {
        crawler: CrawlerDefinition,
    },
    DeleteCrawler {
        crawler: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::CreateDatabase { database, tags, .. } => write!(
                f,
                "create Glue database {database}, tagged {}",
                super::show_tags(tags)
            ),
            Change::TagResource { resource, tags, .. } => {
                write!(f, "tag {resource} with {}", super::show_tags(tags))
            }
            Change::CreateTable {
                database,
                table,
                definition,
            } => write!(
                f,
                "create table {database}.{table} at {} ({})",
                definition.location,
                describe_partitions(definition)
            ),
            Change::UpdateTable {
                database,
                table,
                definition,
            } => write!(
                f,
                "update table {database}.{table} to the curated schema at {} ({})",
                definition.location,
                describe_partitions(definition)
            ),
            Change::CreateCrawler { crawler, tags } => write!(
                f,
                "create crawler {} on {}.{} scheduled {} as {}, tagged {}",
                crawler.name,
                crawler.database,
                crawler.tables.join(","),
                crawler.schedule,
                crawler.role_arn,
                super::show_tags(tags)
            ),
            Change::UpdateCrawler { crawler } => write!(
                f,
                "update crawler {} to crawl {}.{} scheduled {} as {}",
                crawler.name,
                crawler.database,
                crawler.tables.join(","),
                crawler.schedule,
                crawler.role_arn
            ),
            Change::DeleteCrawler { crawler } => write!(
                f,
                "delete crawler {crawler} (partitions now come from partition projection)"
            ),
        }
    }
}

fn describe_partitions(definition: &TableDefinition) -> &'static str {
    if definition
        .parameters
        .get("projection.enabled")
        .map(String::as_str)
        == Some("true")
    {
        "partition projection on dt, hour"
    } else {
        "partitions dt, hour added by the crawler"
    }
}

/// The curated table's columns: the Parquet contract in docs/ARCHITECTURE.md.
pub fn curated_columns() -> Vec<Column> {
    vec![
        Column::new("page_id", "string"),
        Column::new("grid_x", "int"),
        Column::new("grid_y", "int"),
        Column::new("window_start", "bigint"),
        Column::new("window_end", "bigint"),
        Column::new("clicks", "bigint"),
    ]
}

/// The curated table's partition keys.
pub fn curated_partition_keys() -> Vec<Column> {
    vec![Column::new("dt", "string"), Column::new("hour", "string")]
}

/// The catalog the spec asks for. `previous_crawler` is the crawler this pipeline made earlier
/// (from `status.resources.crawlerName`), so a switch to projection removes it.
pub fn desired(
    spec: &ClickHeatmapPipelineSpec,
    names: &Names,
    previous_crawler: Option<&str>,
) -> Result<DesiredCatalog, Error> {
    let catalog = &spec.catalog;
    let location = curated_table_location(spec);
    let mut parameters = BTreeMap::from([
        ("classification".to_owned(), "parquet".to_owned()),
        ("EXTERNAL".to_owned(), "TRUE".to_owned()),
    ]);
    parameters.extend(names.owner.tags());
    if catalog.partitions == PartitionDiscovery::Projection {
        parameters.extend(
            [
                ("projection.enabled", "true".to_owned()),
                ("projection.dt.type", "date".to_owned()),
                ("projection.dt.range", "NOW-3YEARS,NOW".to_owned()),
                ("projection.dt.format", "yyyy-MM-dd".to_owned()),
                ("projection.dt.interval", "1".to_owned()),
                ("projection.dt.interval.unit", "DAYS".to_owned()),
                ("projection.hour.type", "integer".to_owned()),
                ("projection.hour.range", "0,23".to_owned()),
                ("projection.hour.digits", "2".to_owned()),
                (
                    "storage.location.template",
                    format!("{location}dt=${{dt}}/hour=${{hour}}/"),
                ),
            ]
            .map(|(key, value)| (key.to_owned(), value)),
        );
    }
    let table = DesiredTable {
        database: catalog.database.clone(),
        name: catalog.table.clone(),
        definition: TableDefinition {
            table_type: "EXTERNAL_TABLE".to_owned(),
            location,
            columns: curated_columns(),
            partition_keys: curated_partition_keys(),
            input_format: PARQUET_INPUT_FORMAT.to_owned(),
            output_format: PARQUET_OUTPUT_FORMAT.to_owned(),
            serde_library: PARQUET_SERDE.to_owned(),
            serde_parameters: BTreeMap::from([("serialization.format".to_owned(), "1".to_owned())]),
            parameters,
            unmanaged: UnmanagedTableSettings::default(),
        },
    };
    let crawler_wanted = catalog.partitions == PartitionDiscovery::Crawler;
    let name = crawler_name(spec, &names.owner);
    let crawler = if crawler_wanted {
        let crawler_spec = catalog.crawler.as_ref();
        let role_arn = crawler_spec
            .and_then(|c| c.role_arn.clone())
            .ok_or_else(|| {
                Error::InvalidSpec(
                    "catalog.crawler.roleArn is required when catalog.partitions is Crawler"
                        .to_owned(),
                )
            })?;
        Some(DesiredCrawler {
            arn: names.glue_crawler_arn(&name),
            definition: CrawlerDefinition {
                name: name.clone(),
                role_arn,
                schedule: crawler_spec
                    .map(|c| c.schedule.clone())
                    .unwrap_or_else(|| "cron(0/30 * * * ? *)".to_owned()),
                database: catalog.database.clone(),
                tables: vec![catalog.table.clone()],
                update_behavior: "LOG".to_owned(),
                delete_behavior: "LOG".to_owned(),
                configuration: CRAWLER_CONFIGURATION.to_owned(),
            },
            tags: crate::names::resource_tags(spec, &names.owner),
        })
    } else {
        None
    };
    let crawler_to_remove = previous_crawler
        .filter(|previous| !crawler_wanted || *previous != name)
        .map(|previous| (previous.to_owned(), names.glue_crawler_arn(previous)));
    Ok(DesiredCatalog {
        database: DesiredDatabase {
            name: catalog.database.clone(),
            arn: names.glue_database_arn(&catalog.database),
            description: format!(
                "Click heatmaps of pipeline {} (managed by clickheatmap-operator)",
                names.owner.tag_value()
            ),
            tags: crate::names::resource_tags(spec, &names.owner),
        },
        table,
        crawler,
        crawler_to_remove,
        owner: names.owner.clone(),
        adopt_existing: spec.adopt_existing,
    })
}

async fn get_tags(
    client: &Client,
    arn: &str,
    what: &str,
) -> Result<BTreeMap<String, String>, Error> {
    let output = client
        .get_tags()
        .resource_arn(arn)
        .send()
        .await
        .map_sdk("glue:GetTags", what)?;
    Ok(output
        .tags()
        .map(|tags| {
            tags.iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        })
        .unwrap_or_default())
}

async fn observe_crawler(
    client: &Client,
    name: &str,
    arn: &str,
) -> Result<Option<ObservedCrawler>, Error> {
    let what = format!("crawler {name}");
    let Some(output) = client
        .get_crawler()
        .name(name)
        .send()
        .await
        .found("glue:GetCrawler", &what)?
    else {
        return Ok(None);
    };
    let Some(crawler) = output.crawler() else {
        return Ok(None);
    };
    let targets = crawler.targets();
    let catalog_targets = targets
        .map(CrawlerTargets::catalog_targets)
        .unwrap_or_default();
    let other_targets = targets
        .map(|t| {
            t.s3_targets().len()
                + t.jdbc_targets().len()
                + t.dynamo_db_targets().len()
                + t.mongo_db_targets().len()
                + t.delta_targets().len()
                + t.iceberg_targets().len()
                + t.hudi_targets().len()
        })
        .unwrap_or(0)
        + catalog_targets.len().saturating_sub(1);
    let first = catalog_targets.first();
    let policy = crawler.schema_change_policy();
    let mut unmanaged = Vec::new();
    if crawler.description().is_some_and(|d| !d.is_empty()) {
        unmanaged.push("description".to_owned());
    }
    if let Some(recrawl) = crawler.recrawl_policy().and_then(|p| p.recrawl_behavior()) {
        unmanaged.push(format!("recrawl policy {}", recrawl.as_str()));
    }
    if !crawler.classifiers().is_empty() {
        unmanaged.push(format!(
            "classifiers [{}]",
            crawler.classifiers().join(", ")
        ));
    }
    if let Some(prefix) = crawler.table_prefix().filter(|p| !p.is_empty()) {
        unmanaged.push(format!("table prefix {prefix}"));
    }
    if let Some(security) = crawler
        .crawler_security_configuration()
        .filter(|c| !c.is_empty())
    {
        unmanaged.push(format!("security configuration {security}"));
    }
    if let Some(lineage) = crawler
        .lineage_configuration()
        .and_then(|l| l.crawler_lineage_settings())
        .filter(|l| l.as_str() == "ENABLE")
    {
        unmanaged.push(format!("lineage {}", lineage.as_str()));
    }
    Ok(Some(ObservedCrawler {
        state: crawler
            .state()
            .map(|state| state.as_str().to_owned())
            .unwrap_or_else(|| "READY".to_owned()),
        definition: CrawlerDefinition {
            name: crawler.name().unwrap_or(name).to_owned(),
            role_arn: crawler.role().unwrap_or_default().to_owned(),
            schedule: crawler
                .schedule()
                .and_then(|s| s.schedule_expression())
                .unwrap_or_default()
                .to_owned(),
            database: first
                .map(|t| t.database_name().to_owned())
                .unwrap_or_default(),
            tables: first.map(|t| t.tables().to_vec()).unwrap_or_default(),
            update_behavior: policy
                .and_then(|p| p.update_behavior())
                .map(|b| b.as_str().to_owned())
                .unwrap_or_default(),
            delete_behavior: policy
                .and_then(|p| p.delete_behavior())
                .map(|b| b.as_str().to_owned())
                .unwrap_or_default(),
            configuration: crawler.configuration().unwrap_or_default().to_owned(),
        },
        other_targets,
        unmanaged,
        tags: get_tags(client, arn, &what).await?,
    }))
}

/// Column comments by lower-case column name.
fn comments_from_sdk(columns: &[SdkColumn]) -> BTreeMap<String, String> {
    columns
        .iter()
        .filter_map(|c| {
            c.comment()
                .filter(|comment| !comment.is_empty())
                .map(|comment| (c.name().to_ascii_lowercase(), comment.to_owned()))
        })
        .collect()
}

fn map_of(map: Option<&std::collections::HashMap<String, String>>) -> BTreeMap<String, String> {
    map.map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn columns_from_sdk(columns: &[SdkColumn]) -> Vec<Column> {
    columns
        .iter()
        .map(|c| Column::new(c.name(), c.r#type().unwrap_or_default()))
        .collect()
}

/// Reads the database (and its tags), the table and the crawlers. Nothing past the database
/// is read when the database belongs to someone else.
pub async fn observe(client: &Client, desired: &DesiredCatalog) -> Result<ObservedCatalog, Error> {
    let mut observed = ObservedCatalog::default();
    let db = &desired.database;
    let what = format!("Glue database {}", db.name);
    let output = client
        .get_database()
        .name(&db.name)
        .send()
        .await
        .found("glue:GetDatabase", &what)?;
    if let Some(database) = output.as_ref().and_then(|output| output.database()) {
        let tags = get_tags(client, &db.arn, &what).await?;
        observed.database = Some(ObservedDatabase {
            name: database.name().to_owned(),
            catalog_id: database.catalog_id().map(str::to_owned),
            description: database.description().map(str::to_owned),
            parameters: map_of(database.parameters()),
            tags,
        });
    }
    if let Some(database) = &observed.database
        && !may_manage(&database.tags, &desired.owner, desired.adopt_existing)
    {
        return Ok(observed);
    }
    if observed.database.is_some() {
        let table = &desired.table;
        let what = format!("table {}.{}", table.database, table.name);
        let output = client
            .get_table()
            .database_name(&table.database)
            .name(&table.name)
            .send()
            .await
            .found("glue:GetTable", &what)?;
        if let Some(found) = output.as_ref().and_then(|output| output.table()) {
            let storage = found.storage_descriptor();
            let serde = storage.and_then(StorageDescriptor::serde_info);
            observed.table = Some(ObservedTable {
                database: table.database.clone(),
                name: found.name().to_owned(),
                definition: TableDefinition {
                    table_type: found.table_type().unwrap_or_default().to_owned(),
                    location: storage
                        .and_then(StorageDescriptor::location)
                        .unwrap_or_default()
                        .to_owned(),
                    columns: storage
                        .map(|s| columns_from_sdk(s.columns()))
                        .unwrap_or_default(),
                    partition_keys: columns_from_sdk(found.partition_keys()),
                    input_format: storage
                        .and_then(StorageDescriptor::input_format)
                        .unwrap_or_default()
                        .to_owned(),
                    output_format: storage
                        .and_then(StorageDescriptor::output_format)
                        .unwrap_or_default()
                        .to_owned(),
                    serde_library: serde
                        .and_then(SerDeInfo::serialization_library)
                        .unwrap_or_default()
                        .to_owned(),
                    serde_parameters: map_of(serde.and_then(SerDeInfo::parameters)),
                    parameters: map_of(found.parameters()),
                    unmanaged: UnmanagedTableSettings {
                        description: found.description().map(str::to_owned),
                        owner: found.owner().map(str::to_owned),
                        retention: found.retention(),
                        storage_parameters: map_of(storage.and_then(StorageDescriptor::parameters)),
                        serde_name: serde.and_then(SerDeInfo::name).map(str::to_owned),
                        compressed: storage.is_some_and(StorageDescriptor::compressed),
                        column_comments: storage
                            .map(|s| comments_from_sdk(s.columns()))
                            .unwrap_or_default(),
                    },
                },
            });
        }
    }
    if let Some(crawler) = &desired.crawler {
        observed.crawler = observe_crawler(client, &crawler.definition.name, &crawler.arn).await?;
    }
    if let Some((name, arn)) = &desired.crawler_to_remove {
        observed.crawler_to_remove = observe_crawler(client, name, arn).await?;
    }
    Ok(observed)
}

/// The definition to write: the desired one, plus everything of the observed table the
/// operator does not manage — its other parameters (minus projection parameters the desired
/// table does not have), other SerDe parameters and [`UnmanagedTableSettings`].
fn merged_definition(desired: &TableDefinition, observed: &TableDefinition) -> TableDefinition {
    let mut parameters: BTreeMap<String, String> = observed
        .parameters
        .iter()
        .filter(|(key, _)| !is_projection_parameter(key))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    parameters.extend(desired.parameters.clone());
    let mut serde_parameters = observed.serde_parameters.clone();
    serde_parameters.extend(desired.serde_parameters.clone());
    TableDefinition {
        parameters,
        serde_parameters,
        unmanaged: observed.unmanaged.clone(),
        ..desired.clone()
    }
}

/// The table's settings and parameters that the operator keeps as they are, described.
fn kept_of_table(desired: &TableDefinition, observed: &TableDefinition) -> Vec<String> {
    let mut said = observed.unmanaged.describe();
    let other = |ours: &BTreeMap<String, String>, theirs: &BTreeMap<String, String>| {
        theirs
            .iter()
            .filter(|(key, _)| {
                !ours.contains_key(*key)
                    && !is_projection_parameter(key)
                    && !CRAWLER_TABLE_PARAMETERS.contains(&key.as_str())
            })
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let parameters = other(&desired.parameters, &observed.parameters);
    if !parameters.is_empty() {
        said.push(format!("parameters [{}]", keys(&parameters)));
    }
    let serde = other(&desired.serde_parameters, &observed.serde_parameters);
    if !serde.is_empty() {
        said.push(format!("SerDe parameters [{}]", keys(&serde)));
    }
    said
}

/// True when every key of `desired` is in `observed` with the same value (objects compared key
/// by key, anything else as a whole): other keys of `observed` are its own.
fn json_contains(observed: &serde_json::Value, desired: &serde_json::Value) -> bool {
    match (observed, desired) {
        (serde_json::Value::Object(observed), serde_json::Value::Object(desired)) => {
            desired.iter().all(|(key, value)| {
                observed
                    .get(key)
                    .is_some_and(|found| json_contains(found, value))
            })
        }
        _ => observed == desired,
    }
}

/// `observed` with the keys of `desired` set (objects merged key by key).
fn json_merge(observed: &serde_json::Value, desired: &serde_json::Value) -> serde_json::Value {
    match (observed, desired) {
        (serde_json::Value::Object(observed), serde_json::Value::Object(desired)) => {
            let mut merged = observed.clone();
            for (key, value) in desired {
                let next = match observed.get(key) {
                    Some(found) => json_merge(found, value),
                    None => value.clone(),
                };
                merged.insert(key.clone(), next);
            }
            serde_json::Value::Object(merged)
        }
        _ => desired.clone(),
    }
}

/// The dotted paths of the keys `observed` has and `desired` does not.
fn json_extra_keys(
    observed: &serde_json::Value,
    desired: &serde_json::Value,
    prefix: &str,
    into: &mut Vec<String>,
) {
    let (serde_json::Value::Object(observed), serde_json::Value::Object(desired)) =
        (observed, desired)
    else {
        return;
    };
    for (key, value) in observed {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match desired.get(key) {
            Some(ours) => json_extra_keys(value, ours, &path, into),
            None => into.push(path),
        }
    }
}

fn parse_json(text: &str) -> Option<serde_json::Value> {
    serde_json::from_str(text).ok()
}

/// The configuration to write: the existing one with the operator's keys set; the operator's
/// alone when the existing one is empty or not JSON.
fn merged_configuration(desired: &str, observed: &str) -> String {
    match (parse_json(desired), parse_json(observed)) {
        (Some(ours), Some(theirs)) => json_merge(&theirs, &ours).to_string(),
        _ => desired.to_owned(),
    }
}

fn table_matches(desired: &TableDefinition, observed: &TableDefinition) -> bool {
    let same_parameters = desired
        .parameters
        .iter()
        .all(|(key, value)| observed.parameters.get(key) == Some(value))
        && observed
            .parameters
            .keys()
            .filter(|key| is_projection_parameter(key))
            .all(|key| desired.parameters.contains_key(key));
    let same_columns = |a: &[Column], b: &[Column]| {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.name.eq_ignore_ascii_case(&y.name) && x.kind.eq_ignore_ascii_case(&y.kind)
            })
    };
    same_parameters
        && desired.table_type == observed.table_type
        && desired.location == observed.location
        && same_columns(&desired.columns, &observed.columns)
        && same_columns(&desired.partition_keys, &observed.partition_keys)
        && desired.input_format == observed.input_format
        && desired.output_format == observed.output_format
        && desired.serde_library == observed.serde_library
        && desired
            .serde_parameters
            .iter()
            .all(|(key, value)| observed.serde_parameters.get(key) == Some(value))
}

fn crawler_matches(desired: &CrawlerDefinition, observed: &ObservedCrawler) -> bool {
    let same_configuration = match (
        parse_json(&desired.configuration),
        parse_json(&observed.definition.configuration),
    ) {
        (Some(ours), Some(theirs)) => json_contains(&theirs, &ours),
        _ => desired.configuration == observed.definition.configuration,
    };
    let observed = &observed.definition;
    same_configuration
        && desired.role_arn == observed.role_arn
        && desired.schedule == observed.schedule
        && desired.database == observed.database
        && desired.tables == observed.tables
        && desired.update_behavior == observed.update_behavior
        && desired.delete_behavior == observed.delete_behavior
}

fn build_error(what: &str) -> impl FnOnce(aws_sdk_glue::error::BuildError) -> Error + '_ {
    move |error| Error::internal(format!("building {what}: {error}"))
}

fn sdk_columns(
    columns: &[Column],
    comments: &BTreeMap<String, String>,
) -> Result<Vec<SdkColumn>, Error> {
    columns
        .iter()
        .map(|c| {
            SdkColumn::builder()
                .name(&c.name)
                .r#type(&c.kind)
                .set_comment(comments.get(&c.name.to_ascii_lowercase()).cloned())
                .build()
                .map_err(build_error("a Glue column"))
        })
        .collect()
}

fn table_input(name: &str, definition: &TableDefinition) -> Result<TableInput, Error> {
    let unmanaged = &definition.unmanaged;
    let serde = SerDeInfo::builder()
        .serialization_library(&definition.serde_library)
        .set_name(unmanaged.serde_name.clone())
        .set_parameters(Some(
            definition.serde_parameters.clone().into_iter().collect(),
        ))
        .build();
    let comments = &unmanaged.column_comments;
    let storage = StorageDescriptor::builder()
        .set_columns(Some(sdk_columns(&definition.columns, comments)?))
        .location(&definition.location)
        .input_format(&definition.input_format)
        .output_format(&definition.output_format)
        .serde_info(serde)
        .set_parameters(
            (!unmanaged.storage_parameters.is_empty())
                .then(|| unmanaged.storage_parameters.clone().into_iter().collect()),
        )
        .set_compressed(unmanaged.compressed.then_some(true))
        .build();
    TableInput::builder()
        .name(name)
        .table_type(&definition.table_type)
        .set_description(unmanaged.description.clone())
        .set_owner(unmanaged.owner.clone())
        .set_retention((unmanaged.retention > 0).then_some(unmanaged.retention))
        .storage_descriptor(storage)
        .set_partition_keys(Some(sdk_columns(&definition.partition_keys, comments)?))
        .set_parameters(Some(definition.parameters.clone().into_iter().collect()))
        .build()
        .map_err(build_error("the table input"))
}

fn crawler_targets(crawler: &CrawlerDefinition) -> Result<CrawlerTargets, Error> {
    let target = CatalogTarget::builder()
        .database_name(&crawler.database)
        .set_tables(Some(crawler.tables.clone()))
        .build()
        .map_err(build_error("the crawler's catalog target"))?;
    Ok(CrawlerTargets::builder().catalog_targets(target).build())
}

fn schema_change_policy(crawler: &CrawlerDefinition) -> SchemaChangePolicy {
    SchemaChangePolicy::builder()
        .update_behavior(UpdateBehavior::from(crawler.update_behavior.as_str()))
        .delete_behavior(DeleteBehavior::from(crawler.delete_behavior.as_str()))
        .build()
}

/// Makes one Glue call.
pub async fn apply(client: &Client, change: &Change) -> Result<(), Error> {
    match change {
        Change::CreateDatabase {
            database,
            description,
            tags,
        } => {
            let input = DatabaseInput::builder()
                .name(database)
                .description(description)
                .build()
                .map_err(build_error("the database input"))?;
            client
                .create_database()
                .database_input(input)
                .set_tags(Some(tags.clone().into_iter().collect()))
                .send()
                .await
                .map_sdk(
                    "glue:CreateDatabase",
                    format_args!("Glue database {database}"),
                )?;
            Ok(())
        }
        Change::TagResource {
            resource,
            resource_arn,
            tags,
        } => {
            client
                .tag_resource()
                .resource_arn(resource_arn)
                .set_tags_to_add(Some(tags.clone().into_iter().collect()))
                .send()
                .await
                .map_sdk("glue:TagResource", resource)?;
            Ok(())
        }
        Change::CreateTable {
            database,
            table,
            definition,
        } => {
            client
                .create_table()
                .database_name(database)
                .table_input(table_input(table, definition)?)
                .send()
                .await
                .map_sdk("glue:CreateTable", format_args!("table {database}.{table}"))?;
            Ok(())
        }
        Change::UpdateTable {
            database,
            table,
            definition,
        } => {
            client
                .update_table()
                .database_name(database)
                .table_input(table_input(table, definition)?)
                .send()
                .await
                .map_sdk("glue:UpdateTable", format_args!("table {database}.{table}"))?;
            Ok(())
        }
        Change::CreateCrawler { crawler, tags } => {
            client
                .create_crawler()
                .name(&crawler.name)
                .role(&crawler.role_arn)
                .database_name(&crawler.database)
                .targets(crawler_targets(crawler)?)
                .schedule(&crawler.schedule)
                .schema_change_policy(schema_change_policy(crawler))
                .configuration(&crawler.configuration)
                .set_tags(Some(tags.clone().into_iter().collect()))
                .send()
                .await
                .map_sdk("glue:CreateCrawler", &crawler.name)?;
            Ok(())
        }
        Change::UpdateCrawler { crawler } => {
            client
                .update_crawler()
                .name(&crawler.name)
                .role(&crawler.role_arn)
                .database_name(&crawler.database)
                .targets(crawler_targets(crawler)?)
                .schedule(&crawler.schedule)
                .schema_change_policy(schema_change_policy(crawler))
                .configuration(&crawler.configuration)
                .send()
                .await
                .map_sdk("glue:UpdateCrawler", &crawler.name)?;
            Ok(())
        }
        Change::DeleteCrawler { crawler } => {
            client
                .delete_crawler()
                .name(crawler)
                .send()
                .await
                .map_sdk("glue:DeleteCrawler", crawler)?;
            Ok(())
        }
    }
}

/// Removes the crawler, the table and the database under `deletionPolicy: Delete`, each only
/// if this pipeline owns it. Deleting the database also deletes any other table in it: the
/// database is the pipeline's.
pub async fn delete(
    client: &Client,
    desired: &DesiredCatalog,
) -> Result<Vec<(String, Deletion)>, Error> {
    let owner = &desired.owner;
    let probe = DesiredCatalog {
        adopt_existing: false,
        ..desired.clone()
    };
    let observed = observe(client, &probe).await?;
    let mut outcomes = Vec::new();
    let crawlers = [
        (
            desired.crawler.as_ref().map(|c| c.definition.name.clone()),
            &observed.crawler,
        ),
        (
            desired
                .crawler_to_remove
                .as_ref()
                .map(|(name, _)| name.clone()),
            &observed.crawler_to_remove,
        ),
    ];
    for (name, found) in crawlers {
        let Some(name) = name else { continue };
        let what = format!("crawler {name}");
        let outcome = match found {
            None => Deletion::Gone,
            Some(found) if !is_ours(&found.tags, owner) => Deletion::Kept(format!(
                "{what} is not tagged by pipeline {}",
                owner.tag_value()
            )),
            Some(found) if found.state != "READY" => {
                Deletion::InProgress(format!("{what} is {}; deleted once it stops", found.state))
            }
            Some(_) => {
                apply(
                    client,
                    &Change::DeleteCrawler {
                        crawler: name.clone(),
                    },
                )
                .await?;
                Deletion::Gone
            }
        };
        outcomes.push((what, outcome));
    }
    let table = &desired.table;
    let what = format!("table {}.{}", table.database, table.name);
    let outcome = match &observed.table {
        None => Deletion::Gone,
        Some(found) if !is_ours(&found.definition.parameters, owner) => Deletion::Kept(format!(
            "{what} is not marked as pipeline {}'s",
            owner.tag_value()
        )),
        Some(_) => {
            client
                .delete_table()
                .database_name(&table.database)
                .name(&table.name)
                .send()
                .await
                .map_sdk("glue:DeleteTable", &what)?;
            Deletion::Gone
        }
    };
    outcomes.push((what, outcome));
    let db = &desired.database;
    let what = format!("Glue database {}", db.name);
    let outcome = match &observed.database {
        None => Deletion::Gone,
        Some(found) if !is_ours(&found.tags, owner) => Deletion::Kept(format!(
            "{what} is not tagged by pipeline {}",
            owner.tag_value()
        )),
        Some(_) => {
            client
                .delete_database()
                .name(&db.name)
                .send()
                .await
                .map_sdk("glue:DeleteDatabase", &what)?;
            Deletion::Gone
        }
    };
    outcomes.push((what, outcome));
    Ok(outcomes)
}

/// The catalog part: the Glue database, the curated table and, for `partitions: Crawler`, the
/// crawler.
pub struct Catalog;

impl PartReconciler for Catalog {
    const PART: Part = Part::Catalog;
    const CONDITION_TYPE: &'static str = "CatalogReady";
    const NAME: &'static str = "catalog";
    const SERVICE: Service = Service::new("glue");

    type Desired = DesiredCatalog;
    type Observed = ObservedCatalog;
    type Change = Change;

    // Glue catalog calls take effect before they return: nothing needs settling.
    fn apply<'a>(
        clients: &'a AwsClients,
        change: &'a Change,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        apply(&clients.glue, change)
    }

    fn desired(input: PlanInput<'_>) -> Result<Vec<DesiredCatalog>, Error> {
        Ok(vec![desired(
            input.spec,
            input.names,
            input.previous.crawler_name.as_deref(),
        )?])
    }

    fn summary(desired: &[DesiredCatalog]) -> String {
        desired
            .iter()
            .map(|catalog| {
                format!(
                    "Glue table {}.{} matches the spec",
                    catalog.table.database, catalog.table.name
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn observe(
        clients: &AwsClients,
        desired: &DesiredCatalog,
    ) -> Result<Option<ObservedCatalog>, Error> {
        Ok(Some(observe(&clients.glue, desired).await?))
    }

    /// The calls that turn `observed` into `desired`, database first. Empty when they match.
    fn diff(
        desired: &DesiredCatalog,
        observed: Option<&ObservedCatalog>,
    ) -> Result<Vec<Change>, Error> {
        let nothing = ObservedCatalog::default();
        let observed = observed.unwrap_or(&nothing);
        let mut changes = Vec::new();
        let owner = &desired.owner;
        let adopt = desired.adopt_existing;
        let db = &desired.database;
        match &observed.database {
            None => changes.push(Change::CreateDatabase {
                database: db.name.clone(),
                description: db.description.clone(),
                tags: db.tags.clone(),
            }),
            Some(found) => {
                let what = format!("Glue database {}", db.name);
                check_owner(&what, &found.tags, owner, adopt)?;
                changes.extend(tag_change(&found.tags, &db.tags, |tags| {
                    Change::TagResource {
                        resource: what,
                        resource_arn: db.arn.clone(),
                        tags,
                    }
                }));
            }
        }
        let table = &desired.table;
        match &observed.table {
            None => changes.push(Change::CreateTable {
                database: table.database.clone(),
                table: table.name.clone(),
                definition: table.definition.clone(),
            }),
            Some(found) => {
                let what = format!("table {}.{}", table.database, table.name);
                check_owner(&what, &found.definition.parameters, owner, adopt)?;
                if !table_matches(&table.definition, &found.definition) {
                    changes.push(Change::UpdateTable {
                        database: table.database.clone(),
                        table: table.name.clone(),
                        definition: merged_definition(&table.definition, &found.definition),
                    });
                }
            }
        }
        if let Some(crawler) = &desired.crawler {
            let name = &crawler.definition.name;
            match &observed.crawler {
                None => changes.push(Change::CreateCrawler {
                    crawler: crawler.definition.clone(),
                    tags: crawler.tags.clone(),
                }),
                Some(found) => {
                    let what = format!("crawler {name}");
                    check_owner(&what, &found.tags, owner, adopt)?;
                    changes.extend(tag_change(&found.tags, &crawler.tags, |tags| {
                        Change::TagResource {
                            resource: what,
                            resource_arn: crawler.arn.clone(),
                            tags,
                        }
                    }));
                    if found.other_targets > 0 || !crawler_matches(&crawler.definition, found) {
                        if found.state != "READY" {
                            return Err(Error::CrawlerRunning {
                                crawler: name.clone(),
                            });
                        }
                        changes.push(Change::UpdateCrawler {
                            crawler: CrawlerDefinition {
                                configuration: merged_configuration(
                                    &crawler.definition.configuration,
                                    &found.definition.configuration,
                                ),
                                ..crawler.definition.clone()
                            },
                        });
                    }
                }
            }
        }
        if let (Some((name, _)), Some(found)) =
            (&desired.crawler_to_remove, &observed.crawler_to_remove)
            && is_ours(&found.tags, owner)
        {
            if found.state != "READY" {
                return Err(Error::CrawlerRunning {
                    crawler: name.clone(),
                });
            }
            changes.push(Change::DeleteCrawler {
                crawler: name.clone(),
            });
        }
        Ok(changes)
    }

    /// What the database, table and crawler have that the spec does not declare.
    fn kept(desired: &DesiredCatalog, observed: Option<&ObservedCatalog>) -> Vec<String> {
        let Some(observed) = observed else {
            return Vec::new();
        };
        let mut kept = Vec::new();
        if let Some(database) = &observed.database {
            let what = format!("Glue database {}", database.name);
            if database
                .description
                .as_deref()
                .is_some_and(|d| !d.is_empty() && d != desired.database.description)
            {
                kept.push(format!("{what} description"));
            }
            if !database.parameters.is_empty() {
                kept.push(format!(
                    "{what} parameters [{}]",
                    keys(&database.parameters)
                ));
            }
        }
        if let Some(table) = &observed.table {
            let said = kept_of_table(&desired.table.definition, &table.definition);
            if !said.is_empty() {
                kept.push(format!(
                    "table {}.{} {}",
                    table.database,
                    table.name,
                    said.join(", ")
                ));
            }
        }
        if let (Some(ours), Some(found)) = (&desired.crawler, &observed.crawler) {
            let mut said = found.unmanaged.clone();
            if let (Some(ours), Some(theirs)) = (
                parse_json(&ours.definition.configuration),
                parse_json(&found.definition.configuration),
            ) {
                let mut extra = Vec::new();
                json_extra_keys(&theirs, &ours, "", &mut extra);
                if !extra.is_empty() {
                    said.push(format!("configuration [{}]", extra.join(", ")));
                }
            }
            if !said.is_empty() {
                kept.push(format!(
                    "crawler {} {}",
                    ours.definition.name,
                    said.join(", ")
                ));
            }
        }
        kept
    }

    /// The catalog is ready when the database and table exist (and the crawler, if wanted).
    fn readiness(desired: &DesiredCatalog, observed: Option<&ObservedCatalog>) -> Readiness {
        let nothing = ObservedCatalog::default();
        let observed = observed.unwrap_or(&nothing);
        if observed.database.is_none() {
            return Readiness::Provisioning("the Glue database does not exist yet".to_owned());
        }
        if observed.table.is_none() {
            return Readiness::Provisioning("the curated table does not exist yet".to_owned());
        }
        if desired.crawler.is_some() && observed.crawler.is_none() {
            return Readiness::Provisioning("the crawler does not exist yet".to_owned());
        }
        Readiness::Ready
    }

    fn resources(
        desired: &DesiredCatalog,
        _observed: Option<&ObservedCatalog>,
        into: &mut PipelineResources,
    ) {
        into.glue_database = Some(desired.database.name.clone());
        into.glue_table = Some(desired.table.name.clone());
        into.crawler_name = desired.crawler.as_ref().map(|c| c.definition.name.clone());
    }

    /// A crawler that could not be removed yet stays recorded, so removal is retried.
    fn resources_when_blocked(desired: &DesiredCatalog, into: &mut PipelineResources) {
        if let Some((name, _)) = &desired.crawler_to_remove {
            into.crawler_name = Some(name.clone());
        }
    }

    fn record(from: &PipelineResources, into: &mut PipelineResources) {
        into.glue_database.clone_from(&from.glue_database);
        into.glue_table.clone_from(&from.glue_table);
        into.crawler_name.clone_from(&from.crawler_name);
    }

    async fn delete(
        clients: &AwsClients,
        input: PlanInput<'_>,
        _done: &[DeleteStep],
    ) -> Result<Vec<(String, Deletion)>, Error> {
        delete(&clients.glue, &for_deletion(input)?).await
    }
}

/// The catalog's names for deletion, even from a spec whose crawler has no role (deletion needs
/// only names).
fn for_deletion(input: PlanInput<'_>) -> Result<DesiredCatalog, Error> {
    let mut spec = input.spec.clone();
    if spec.catalog.partitions == PartitionDiscovery::Crawler {
        let crawler = spec
            .catalog
            .crawler
            .get_or_insert(clickheatmap_crds::CrawlerSpec {
                name: None,
                schedule: "cron(0/30 * * * ? *)".to_owned(),
                role_arn: None,
            });
        crawler.role_arn.get_or_insert_with(String::new);
    }
    desired(&spec, input.names, input.previous.crawler_name.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fixture, names_for};

    fn in_sync(desired: &DesiredCatalog) -> ObservedCatalog {
        ObservedCatalog {
            database: Some(ObservedDatabase {
                name: desired.database.name.clone(),
                catalog_id: Some("123456789012".into()),
                description: None,
                parameters: BTreeMap::new(),
                tags: desired.database.tags.clone(),
            }),
            table: Some(ObservedTable {
                database: desired.table.database.clone(),
                name: desired.table.name.clone(),
                definition: desired.table.definition.clone(),
            }),
            crawler: desired.crawler.as_ref().map(|c| ObservedCrawler {
                state: "READY".into(),
                definition: c.definition.clone(),
                other_targets: 0,
                unmanaged: Vec::new(),
                tags: c.tags.clone(),
            }),
            crawler_to_remove: None,
        }
    }

    #[test]
    fn the_minimal_example_uses_partition_projection() {
        let pipeline = fixture("pipeline-minimal.yaml");
        let catalog = desired(&pipeline.spec, &names_for(&pipeline), None).expect("valid");
        assert_eq!(catalog.database.name, "heatmap_demo");
        assert_eq!(catalog.table.name, "curated_heatmap");
        assert!(catalog.crawler.is_none());
        let definition = &catalog.table.definition;
        assert_eq!(
            definition.location,
            "s3://shop-heatmap-curated-123456789012/curated/curated_heatmap/"
        );
        let columns: Vec<_> = definition
            .columns
            .iter()
            .map(|c| format!("{} {}", c.name, c.kind))
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
        let keys: Vec<_> = definition
            .partition_keys
            .iter()
            .map(|c| format!("{} {}", c.name, c.kind))
            .collect();
        assert_eq!(keys, ["dt string", "hour string"]);
        assert_eq!(definition.input_format, PARQUET_INPUT_FORMAT);
        assert_eq!(definition.serde_library, PARQUET_SERDE);
        let p = &definition.parameters;
        assert_eq!(p["projection.enabled"], "true");
        assert_eq!(p["projection.dt.type"], "date");
        assert_eq!(p["projection.dt.range"], "NOW-3YEARS,NOW");
        assert_eq!(p["projection.dt.format"], "yyyy-MM-dd");
        assert_eq!(p["projection.hour.type"], "integer");
        assert_eq!(p["projection.hour.range"], "0,23");
        assert_eq!(p["projection.hour.digits"], "2");
        assert_eq!(
            p["storage.location.template"],
            "s3://shop-heatmap-curated-123456789012/curated/curated_heatmap/dt=${dt}/hour=${hour}/"
        );
        assert_eq!(p["clickheatmap.io/pipeline"], "default/shop");
    }

    #[test]
    fn the_full_example_uses_a_crawler() {
        let pipeline = fixture("pipeline-full.yaml");
        let catalog = desired(&pipeline.spec, &names_for(&pipeline), None).expect("valid");
        assert_eq!(catalog.database.name, "shop_heatmap");
        assert!(
            !catalog
                .table
                .definition
                .parameters
                .keys()
                .any(|k| is_projection_parameter(k))
        );
        let crawler = catalog.crawler.expect("crawler");
        assert_eq!(crawler.definition.name, "shop-full-curated");
        assert_eq!(crawler.definition.schedule, "cron(0/15 * * * ? *)");
        assert_eq!(
            crawler.definition.role_arn,
            "arn:aws:iam::123456789012:role/shop-heatmap-crawler"
        );
        assert_eq!(crawler.definition.tables, ["curated_heatmap"]);
        assert_eq!(crawler.definition.update_behavior, "LOG");
        assert_eq!(
            crawler.arn,
            "arn:aws:glue:ap-northeast-2:123456789012:crawler/shop-full-curated"
        );
    }

    #[test]
    fn crawler_without_role_is_invalid() {
        let mut pipeline = fixture("pipeline-minimal.yaml");
        pipeline.spec.catalog.partitions = PartitionDiscovery::Crawler;
        let error = desired(&pipeline.spec, &names_for(&pipeline), None).expect_err("invalid");
        assert_eq!(error.reason(), crate::error::Reason::InvalidSpec);
    }

    #[test]
    fn nothing_then_everything() {
        for file in ["pipeline-minimal.yaml", "pipeline-full.yaml"] {
            let pipeline = fixture(file);
            let catalog = desired(&pipeline.spec, &names_for(&pipeline), None).expect("valid");
            let changes = Catalog::diff(&catalog, Some(&ObservedCatalog::default())).expect("diff");
            let ops: Vec<_> = changes
                .iter()
                .map(|c| serde_json::to_value(c).expect("json")["op"].clone())
                .collect();
            let expected: &[&str] = if catalog.crawler.is_some() {
                &["CreateDatabase", "CreateTable", "CreateCrawler"]
            } else {
                &["CreateDatabase", "CreateTable"]
            };
            assert_eq!(ops, expected, "{file}");
            assert_eq!(
                Catalog::diff(&catalog, Some(&in_sync(&catalog))),
                Ok(vec![]),
                "{file}"
            );
        }
    }

    #[test]
    fn crawler_statistics_are_not_drift_and_are_kept() {
        let pipeline = fixture("pipeline-full.yaml");
        let catalog = desired(&pipeline.spec, &names_for(&pipeline), None).expect("valid");
        let mut observed = in_sync(&catalog);
        let table = observed.table.as_mut().expect("table");
        table
            .definition
            .parameters
            .insert("recordCount".into(), "42".into());
        assert_eq!(Catalog::diff(&catalog, Some(&observed)), Ok(vec![]));
        // A schema change is drift; the update keeps the statistics.
        let table = observed.table.as_mut().expect("table");
        table.definition.columns[1].kind = "bigint".into();
        let changes = Catalog::diff(&catalog, Some(&observed)).expect("diff");
        let [Change::UpdateTable { definition, .. }] = changes.as_slice() else {
            panic!("{changes:?}");
        };
        assert_eq!(definition.parameters["recordCount"], "42");
        assert_eq!(definition.columns[1].kind, "int");
    }

    #[test]
    fn an_update_keeps_everything_the_spec_does_not_declare() {
        let pipeline = fixture("pipeline-full.yaml");
        let catalog = desired(&pipeline.spec, &names_for(&pipeline), None).expect("valid");
        let mut observed = in_sync(&catalog);
        let table = observed.table.as_mut().expect("table");
        table
            .definition
            .parameters
            .insert("team".into(), "web".into());
        table
            .definition
            .parameters
            .insert("recordCount".into(), "42".into());
        table
            .definition
            .serde_parameters
            .insert("parquet.compression".into(), "ZSTD".into());
        table.definition.unmanaged = UnmanagedTableSettings {
            description: Some("heatmaps".into()),
            owner: Some("web-team".into()),
            retention: 30,
            storage_parameters: BTreeMap::from([("team".into(), "web".into())]),
            serde_name: Some("parquet".into()),
            compressed: true,
            column_comments: BTreeMap::from([("page_id".into(), "the page".into())]),
        };
        // None of it is drift.
        assert_eq!(Catalog::diff(&catalog, Some(&observed)), Ok(vec![]));
        assert_eq!(
            Catalog::kept(&catalog, Some(&observed)),
            [
                "table shop_heatmap.curated_heatmap description, owner web-team, retention 30 days, storage parameters [team], SerDe name parquet, compressed flag, comments on [page_id], parameters [team], SerDe parameters [parquet.compression]"
            ]
        );
        // A schema change is; the update carries all of it over.
        let table = observed.table.as_mut().expect("table");
        table.definition.columns[0].kind = "varchar(10)".into();
        let changes = Catalog::diff(&catalog, Some(&observed)).expect("diff");
        let [Change::UpdateTable { definition, .. }] = changes.as_slice() else {
            panic!("{changes:?}");
        };
        let found = &observed.table.as_ref().expect("table").definition;
        assert_eq!(definition.unmanaged, found.unmanaged);
        assert_eq!(definition.parameters["team"], "web");
        assert_eq!(definition.serde_parameters["parquet.compression"], "ZSTD");
        assert_eq!(definition.serde_parameters["serialization.format"], "1");
        assert_eq!(definition.columns[0].kind, "string");
        let input = table_input("curated_heatmap", definition).expect("input");
        assert_eq!(input.description(), Some("heatmaps"));
        assert_eq!(input.retention(), 30);
        let storage = input.storage_descriptor().expect("storage");
        assert_eq!(storage.columns()[0].comment(), Some("the page"));
        assert_eq!(storage.columns()[1].comment(), None);
        assert!(storage.compressed());
    }

    #[test]
    fn a_crawler_configuration_only_has_to_contain_the_operators_keys() {
        let pipeline = fixture("pipeline-full.yaml");
        let catalog = desired(&pipeline.spec, &names_for(&pipeline), None).expect("valid");
        let mut observed = in_sync(&catalog);
        let crawler = observed.crawler.as_mut().expect("crawler");
        crawler.definition.configuration = r#"{"Version":1.0,"Grouping":{"TableGroupingPolicy":"CombineCompatibleSchemas"},"CrawlerOutput":{"Partitions":{"AddOrUpdateBehavior":"InheritFromTable"},"Tables":{"AddOrUpdateBehavior":"MergeNewColumns"}}}"#.into();
        crawler.unmanaged = vec!["recrawl policy CRAWL_NEW_FOLDERS_ONLY".into()];
        assert_eq!(Catalog::diff(&catalog, Some(&observed)), Ok(vec![]));
        assert_eq!(
            Catalog::kept(&catalog, Some(&observed)),
            [
                "crawler shop-full-curated recrawl policy CRAWL_NEW_FOLDERS_ONLY, configuration [CrawlerOutput.Tables, Grouping]"
            ]
        );
        // The operator's key changed: the update sets it and keeps the others.
        let crawler = observed.crawler.as_mut().expect("crawler");
        crawler.definition.configuration = crawler
            .definition
            .configuration
            .replace("InheritFromTable", "Other");
        let changes = Catalog::diff(&catalog, Some(&observed)).expect("diff");
        let [Change::UpdateCrawler { crawler }] = changes.as_slice() else {
            panic!("{changes:?}");
        };
        let written: serde_json::Value =
            serde_json::from_str(&crawler.configuration).expect("json");
        assert_eq!(
            written,
            serde_json::json!({
                "Version": 1.0,
                "Grouping": {"TableGroupingPolicy": "CombineCompatibleSchemas"},
                "CrawlerOutput": {
                    "Partitions": {"AddOrUpdateBehavior": "InheritFromTable"},
                    "Tables": {"AddOrUpdateBehavior": "MergeNewColumns"}
                }
            })
        );
    }

    #[test]
    fn switching_to_crawler_mode_removes_projection() {
        let minimal = fixture("pipeline-minimal.yaml");
        let projection = desired(&minimal.spec, &names_for(&minimal), None).expect("valid");
        let mut crawled = minimal.clone();
        crawled.spec.catalog.partitions = PartitionDiscovery::Crawler;
        crawled.spec.catalog.crawler = Some(clickheatmap_crds::CrawlerSpec {
            name: None,
            schedule: "cron(0/30 * * * ? *)".into(),
            role_arn: Some("arn:aws:iam::123456789012:role/c".into()),
        });
        let catalog = desired(&crawled.spec, &names_for(&crawled), None).expect("valid");
        let mut observed = in_sync(&projection);
        observed.crawler = None;
        let changes = Catalog::diff(&catalog, Some(&observed)).expect("diff");
        let Change::UpdateTable { definition, .. } = &changes[0] else {
            panic!("{changes:?}");
        };
        assert!(
            !definition
                .parameters
                .keys()
                .any(|k| is_projection_parameter(k))
        );
        assert!(matches!(changes[1], Change::CreateCrawler { .. }));
    }

    #[test]
    fn a_running_crawler_is_not_updated() {
        let pipeline = fixture("pipeline-full.yaml");
        let catalog = desired(&pipeline.spec, &names_for(&pipeline), None).expect("valid");
        let mut observed = in_sync(&catalog);
        let crawler = observed.crawler.as_mut().expect("crawler");
        crawler.state = "RUNNING".into();
        assert_eq!(
            Catalog::diff(&catalog, Some(&observed)),
            Ok(vec![]),
            "no drift, no error"
        );
        let crawler = observed.crawler.as_mut().expect("crawler");
        crawler.definition.schedule = "cron(0 * * * ? *)".into();
        let error = Catalog::diff(&catalog, Some(&observed)).expect_err("running");
        assert_eq!(
            error,
            Error::CrawlerRunning {
                crawler: "shop-full-curated".into()
            }
        );
        assert!(error.is_retryable());
        let crawler = observed.crawler.as_mut().expect("crawler");
        crawler.state = "READY".into();
        assert!(matches!(
            Catalog::diff(&catalog, Some(&observed))
                .expect("diff")
                .as_slice(),
            [Change::UpdateCrawler { .. }]
        ));
    }

    #[test]
    fn configuration_is_compared_as_json() {
        let pipeline = fixture("pipeline-full.yaml");
        let catalog = desired(&pipeline.spec, &names_for(&pipeline), None).expect("valid");
        let mut observed = in_sync(&catalog);
        let crawler = observed.crawler.as_mut().expect("crawler");
        crawler.definition.configuration = "{ \"Version\": 1.0, \"CrawlerOutput\": { \"Partitions\": { \"AddOrUpdateBehavior\": \"InheritFromTable\" } } }".into();
        assert_eq!(Catalog::diff(&catalog, Some(&observed)), Ok(vec![]));
    }

    #[test]
    fn a_foreign_table_or_database_conflicts() {
        let pipeline = fixture("pipeline-minimal.yaml");
        let catalog = desired(&pipeline.spec, &names_for(&pipeline), None).expect("valid");
        let mut observed = in_sync(&catalog);
        let table = observed.table.as_mut().expect("table");
        table
            .definition
            .parameters
            .extend(Owner::new("x", "y").tags());
        let error = Catalog::diff(&catalog, Some(&observed)).expect_err("conflict");
        assert!(
            error
                .to_string()
                .contains("table heatmap_demo.curated_heatmap")
        );
        let mut observed = in_sync(&catalog);
        let database = observed.database.as_mut().expect("database");
        database.tags.clear();
        let error = Catalog::diff(&catalog, Some(&observed)).expect_err("conflict");
        assert!(error.to_string().contains("adoptExisting"));
    }

    #[test]
    fn a_crawler_left_from_crawler_mode_is_removed() {
        let pipeline = fixture("pipeline-minimal.yaml");
        let catalog =
            desired(&pipeline.spec, &names_for(&pipeline), Some("shop-curated")).expect("valid");
        assert_eq!(
            catalog.crawler_to_remove.as_ref().map(|(n, _)| n.as_str()),
            Some("shop-curated")
        );
        let mut observed = in_sync(&catalog);
        observed.crawler_to_remove = Some(ObservedCrawler {
            state: "READY".into(),
            definition: CrawlerDefinition {
                name: "shop-curated".into(),
                role_arn: String::new(),
                schedule: String::new(),
                database: String::new(),
                tables: vec![],
                update_behavior: String::new(),
                delete_behavior: String::new(),
                configuration: String::new(),
            },
            other_targets: 0,
            unmanaged: Vec::new(),
            tags: catalog.owner.tags(),
        });
        assert_eq!(
            Catalog::diff(&catalog, Some(&observed)),
            Ok(vec![Change::DeleteCrawler {
                crawler: "shop-curated".into()
            }])
        );
        // Someone else's crawler of that name is left alone.
        if let Some(found) = observed.crawler_to_remove.as_mut() {
            found.tags.clear();
        }
        assert_eq!(Catalog::diff(&catalog, Some(&observed)), Ok(vec![]));
    }
}

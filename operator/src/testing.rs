//! Fixtures for unit tests: the example manifests and names in moto's default account.

use clickheatmap_crds::ClickHeatmapPipeline;

use crate::names::{Account, Names};

/// An example manifest from `examples/`, parsed.
pub fn fixture(file: &str) -> ClickHeatmapPipeline {
    let text = match file {
        "pipeline-minimal.yaml" => include_str!("../../examples/pipeline-minimal.yaml"),
        "pipeline-full.yaml" => include_str!("../../examples/pipeline-full.yaml"),
        other => panic!("no fixture {other}"),
    };
    let mut pipelines = crate::manifest::parse_pipelines(text).expect("example parses");
    pipelines.remove(0)
}

/// Names for a fixture in account 123456789012 (the examples' and moto's account).
pub fn names_for(pipeline: &ClickHeatmapPipeline) -> Names {
    Names::for_pipeline(pipeline, Account::new("123456789012", "aws"))
}

//! Reading `ClickHeatmapPipeline` manifests from YAML, for the `plan` command and tests.
//!
//! A file may hold several documents (`---`); documents of other kinds are skipped, so the
//! command can be pointed at a whole directory's worth of manifests concatenated, or at a Helm
//! rendering.

use clickheatmap_crds::ClickHeatmapPipeline;
use serde::Deserialize;

use crate::error::Error;

/// The `apiVersion` of the custom resource.
pub const API_VERSION: &str = "clickheatmap.io/v1alpha1";
/// The `kind` of the custom resource.
pub const KIND: &str = "ClickHeatmapPipeline";

/// Every `ClickHeatmapPipeline` in a YAML text, in order.
pub fn parse_pipelines(text: &str) -> Result<Vec<ClickHeatmapPipeline>, Error> {
    let mut pipelines = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = serde_norway::Value::deserialize(document)
            .map_err(|e| Error::Manifest(format!("document {}: {e}", index + 1)))?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(serde_norway::Value::as_str);
        let api_version = value
            .get("apiVersion")
            .and_then(serde_norway::Value::as_str);
        if kind != Some(KIND) {
            continue;
        }
        if api_version != Some(API_VERSION) {
            return Err(Error::Manifest(format!(
                "document {}: apiVersion {:?} is not {API_VERSION}",
                index + 1,
                api_version.unwrap_or("")
            )));
        }
        let pipeline: ClickHeatmapPipeline = serde_norway::from_value(value)
            .map_err(|e| Error::Manifest(format!("document {}: {e}", index + 1)))?;
        if pipeline.metadata.name.as_deref().unwrap_or("").is_empty() {
            return Err(Error::Manifest(format!(
                "document {}: metadata.name is missing",
                index + 1
            )));
        }
        pipelines.push(pipeline);
    }
    Ok(pipelines)
}

/// Reads a manifest file (`-` for standard input).
pub fn read_pipelines(path: &std::path::Path) -> Result<Vec<ClickHeatmapPipeline>, Error> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| Error::Manifest(format!("reading standard input: {e}")))?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Error::Manifest(format!("reading {}: {e}", path.display())))?
    };
    parse_pipelines(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_examples() {
        let text = include_str!("../../examples/pipeline-full.yaml");
        let pipelines = parse_pipelines(text).expect("parse");
        assert_eq!(pipelines.len(), 1);
        assert_eq!(pipelines[0].metadata.name.as_deref(), Some("shop-full"));
    }

    #[test]
    fn skips_other_kinds_and_empty_documents() {
        let text = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n---\n---\n{}\n---\n{}",
            include_str!("../../examples/pipeline-minimal.yaml"),
            include_str!("../../examples/pipeline-full.yaml")
        );
        let pipelines = parse_pipelines(&text).expect("parse");
        let names: Vec<_> = pipelines
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, ["shop", "shop-full"]);
    }

    #[test]
    fn reports_bad_documents() {
        let error = parse_pipelines(
            "apiVersion: clickheatmap.io/v1alpha1\nkind: ClickHeatmapPipeline\nmetadata: {name: x}\nspec: {region: 3}\n",
        )
        .expect_err("bad");
        assert_eq!(error.reason(), crate::error::Reason::InvalidSpec);
        assert!(
            error.to_string().starts_with("manifest: document 1"),
            "{error}"
        );
        let error = parse_pipelines(
            "apiVersion: clickheatmap.io/v2\nkind: ClickHeatmapPipeline\nmetadata: {name: x}\n",
        )
        .expect_err("version");
        assert!(error.to_string().contains("v2"));
    }
}

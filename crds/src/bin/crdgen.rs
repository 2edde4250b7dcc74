//! Prints a CustomResourceDefinition as YAML: `ClickHeatmapPipeline` by default, or
//! `ClickHeatmapBackfill` with the argument `backfills`.
//!
//! ```text
//! cargo run -p clickheatmap-crds --features resource --bin crdgen \
//!     > charts/clickheatmap-operator/crds/clickheatmap.io_clickheatmappipelines.yaml
//! cargo run -p clickheatmap-crds --features resource --bin crdgen -- backfills \
//!     > charts/clickheatmap-operator/crds/clickheatmap.io_clickheatmapbackfills.yaml
//! ```

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let rendered = match std::env::args().nth(1).as_deref() {
        None | Some("pipelines") => clickheatmap_crds::crd_yaml(),
        Some("backfills") => clickheatmap_crds::backfill_crd_yaml(),
        Some(other) => {
            eprintln!("crdgen: unknown CRD {other:?}; use `pipelines` or `backfills`");
            return ExitCode::FAILURE;
        }
    };
    let yaml = match rendered {
        Ok(yaml) => yaml,
        Err(error) => {
            eprintln!("crdgen: cannot render the CRD as YAML: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout
        .write_all(yaml.as_bytes())
        .and_then(|()| stdout.flush())
    {
        eprintln!("crdgen: cannot write the CRD: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

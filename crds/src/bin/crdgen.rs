//! Prints the `ClickHeatmapPipeline` CustomResourceDefinition as YAML.
//!
//! ```text
//! cargo run -p clickheatmap-crds --features resource --bin crdgen \
//!     > charts/clickheatmap-operator/crds/clickheatmap.io_clickheatmappipelines.yaml
//! ```

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = match clickheatmap_crds::crd_yaml() {
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

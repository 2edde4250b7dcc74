//! The `clickheatmap-operator` command line.
//!
//! * `plan -f manifest.yaml` — prints the AWS changes the operator would make for each
//!   `ClickHeatmapPipeline` in the file: it observes and diffs, and never writes. Credentials
//!   and endpoints come from the SDK's default chain, so `AWS_ENDPOINT_URL` points it at an
//!   emulator. Exit status 0 when every pipeline could be planned, 1 otherwise; with
//!   `--detailed-exitcode`, 2 when changes are pending.
//! * `run` — the Kubernetes controller (see [`crate::controller`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::aws::AwsClients;
use crate::controller::LogFormat;
use crate::error::Error;
use crate::pipeline::{PipelinePlan, plan_pipeline};

#[derive(Debug, Parser)]
#[command(
    name = "clickheatmap-operator",
    version,
    about = "Reconciles ClickHeatmapPipeline resources into AWS resources"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the AWS changes the operator would make for the pipelines in a manifest (reads
    /// only; uses the AWS SDK's default credential chain and AWS_ENDPOINT_URL).
    Plan {
        /// Manifest file with one or more ClickHeatmapPipeline documents ("-" for stdin).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Exit with status 2 when changes are pending (0 when everything is in sync).
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Run the Kubernetes controller.
    Run(crate::controller::RunArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // One TLS provider for every HTTPS client of the process (see clickheatmap-tls).
    clickheatmap_tls::install_crypto_provider();
    // A bad argument of a run that asked for JSON logs is a JSON log line too.
    let cli: Cli = match clickheatmap_logging::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match &cli.command {
        // Text logs are for people at a terminal: warnings and errors only, unless RUST_LOG.
        Command::Run(args) if args.log_format == LogFormat::Json => {
            clickheatmap_logging::init(LogFormat::Json, "info")
        }
        _ => clickheatmap_logging::init(LogFormat::Text, "warn"),
    }
    match cli.command {
        Command::Run(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("clickheatmap-operator: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crate::controller::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "the controller stopped");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Plan {
            file,
            output,
            detailed_exitcode,
        } => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("clickheatmap-operator: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(plan_command(&file, output, detailed_exitcode))
        }
    }
}

async fn plan_command(file: &std::path::Path, output: Output, detailed: bool) -> ExitCode {
    let pipelines = match crate::manifest::read_pipelines(file) {
        Ok(pipelines) if pipelines.is_empty() => {
            eprintln!("{}: no ClickHeatmapPipeline in it", file.display());
            return ExitCode::FAILURE;
        }
        Ok(pipelines) => pipelines,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let mut clients: BTreeMap<String, AwsClients> = BTreeMap::new();
    let mut failed = false;
    let mut pending = false;
    let mut documents = Vec::new();
    for pipeline in &pipelines {
        let owner = crate::names::Owner::of(pipeline).tag_value();
        let region = pipeline.spec.region.clone();
        let result = async {
            if !clients.contains_key(&region) {
                let created = AwsClients::from_env(&region, Default::default()).await?;
                clients.insert(region.clone(), created);
            }
            match clients.get(&region) {
                Some(client) => plan_pipeline(client, pipeline).await,
                None => Err(Error::internal("no clients for the region")),
            }
        }
        .await;
        match result {
            Ok(plan) => {
                failed |= !plan.errors().is_empty();
                pending |= !plan.changes().is_empty();
                match output {
                    Output::Text => print!("{}", render_text(&owner, &plan)),
                    Output::Json => documents.push(render_json(&owner, &plan)),
                }
            }
            Err(error) => {
                failed = true;
                match output {
                    Output::Text => println!(
                        "Pipeline {owner}: cannot plan: {error} [{}]\n",
                        error.reason()
                    ),
                    Output::Json => documents.push(json!({
                        "pipeline": owner,
                        "error": { "reason": error.reason(), "message": error.to_string() },
                    })),
                }
            }
        }
    }
    if output == Output::Json {
        match serde_json::to_string_pretty(&documents) {
            Ok(text) => println!("{text}"),
            Err(error) => {
                eprintln!("rendering JSON: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else if detailed && pending {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// The plan as text: one block per pipeline, one section per part.
pub fn render_text(owner: &str, plan: &PipelinePlan) -> String {
    let changes = plan.changes().len();
    let mut text = format!(
        "Pipeline {owner} (region {}, account {}): {}\n",
        plan.names.region,
        plan.names.account.id,
        match changes {
            0 if plan.errors().is_empty() => "in sync, no changes".to_owned(),
            0 => "no changes can be planned".to_owned(),
            1 => "1 change".to_owned(),
            n => format!("{n} changes"),
        }
    );
    for part in &plan.parts {
        text.push_str(&format!("  {} ({}):\n", part.part, part.part.service()));
        for change in &part.changes {
            text.push_str(&format!("    + {change}\n"));
        }
        if let Some(error) = &part.error {
            text.push_str(&format!("    ! {} — {error}\n", error.reason()));
        } else if part.changes.is_empty() {
            match &part.readiness {
                crate::aws::Readiness::Ready => {
                    text.push_str(&format!("    = {}\n", part.summary));
                    for kept in &part.kept {
                        text.push_str(&format!("    ! kept: {kept}\n"));
                    }
                }
                crate::aws::Readiness::Provisioning(message)
                | crate::aws::Readiness::Deferred { message, .. } => {
                    text.push_str(&format!("    ~ no changes; {message}\n"));
                }
            }
        }
    }
    text.push('\n');
    text
}

/// The plan as JSON.
pub fn render_json(owner: &str, plan: &PipelinePlan) -> serde_json::Value {
    let parts: Vec<_> = plan
        .parts
        .iter()
        .map(|part| {
            json!({
                "part": part.part,
                "condition": part.part.condition_type(),
                "changes": part.changes.iter().map(|change| json!({
                    "service": change.service(),
                    "description": change.to_string(),
                    "call": change,
                })).collect::<Vec<_>>(),
                "error": part.error.as_ref().map(|error| json!({
                    "reason": error.reason(),
                    "retryable": error.is_retryable(),
                    "message": error.to_string(),
                })),
            })
        })
        .collect();
    json!({
        "pipeline": owner,
        "region": plan.names.region,
        "account": plan.names.account.id,
        "inSync": plan.is_in_sync(),
        "parts": parts,
    })
}

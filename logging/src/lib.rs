//! Logs of every clickheatmap binary, set up one way.
//!
//! * [`LogFormat`]: `text` for people, `json` (one object per line, tracing-subscriber's JSON
//!   format) for log pipelines; every workload the operator creates runs with `json`.
//! * [`init`]: stderr, filtered by `RUST_LOG` (default: `info`, or what the binary passes).
//! * [`parse_args`]: clap's parsing, except that a command-line error of a run that asked for
//!   JSON logs (`--log-format json`, `--log-format=json`, or `CLICKHEATMAP_LOG_FORMAT=json`) is
//!   one JSON error line like every other log line, not clap's text: a pod that cannot start says
//!   why in the format its log pipeline reads.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

/// The environment variable the workloads' log format may come from.
pub const LOG_FORMAT_ENV: &str = "CLICKHEATMAP_LOG_FORMAT";

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` or else `default_filter` (e.g. `info`).
/// A second call is ignored.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// True when these arguments (or the environment) ask for JSON logs.
pub fn wants_json(args: &[OsString], env: Option<OsString>) -> bool {
    let args: Vec<&str> = args.iter().filter_map(|arg| arg.to_str()).collect();
    args.windows(2)
        .any(|pair| pair[0] == "--log-format" && pair[1] == "json")
        || args.contains(&"--log-format=json")
        || env.is_some_and(|value| value == "json")
}

/// Parses the process's arguments into `C`. On `--help`/`--version` prints them and returns
/// `Err(success)`; on an error reports it (a JSON log line when JSON logs were asked for, see
/// the module) and returns `Err` with clap's exit code.
pub fn parse_args<C: Parser>() -> Result<C, ExitCode> {
    let args: Vec<OsString> = std::env::args_os().collect();
    parse_from(args, std::env::var_os(LOG_FORMAT_ENV))
}

/// [`parse_args`] over given arguments and `CLICKHEATMAP_LOG_FORMAT` value.
pub fn parse_from<C: Parser>(args: Vec<OsString>, env: Option<OsString>) -> Result<C, ExitCode> {
    match C::try_parse_from(&args) {
        Ok(parsed) => Ok(parsed),
        Err(error) => Err(report(&error, wants_json(&args, env))),
    }
}

fn report(error: &clap::Error, json: bool) -> ExitCode {
    let code = u8::try_from(error.exit_code()).unwrap_or(2);
    if json && error.use_stderr() {
        // Not through `init`: RUST_LOG (e.g. `clickheatmap_operator=debug`) must not filter
        // out the one line that says why the process exits.
        let _ = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::ERROR)
            .with_writer(std::io::stderr)
            .try_init();
        let rendered = error.render().to_string();
        tracing::error!(error = rendered.trim(), "invalid command line");
    } else {
        let _ = error.print();
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn json_is_asked_by_flag_or_environment() {
        assert!(wants_json(
            &args(&["x", "--log-format", "json", "run"]),
            None
        ));
        assert!(wants_json(&args(&["x", "--log-format=json"]), None));
        assert!(wants_json(&args(&["x"]), Some("json".into())));
        assert!(!wants_json(&args(&["x", "--log-format", "text"]), None));
        assert!(!wants_json(&args(&["x"]), Some("text".into())));
    }

    #[derive(Parser, Debug)]
    struct Demo {
        #[arg(long, value_enum, env = LOG_FORMAT_ENV, default_value = "text")]
        log_format: LogFormat,
        #[arg(long)]
        port: u16,
    }

    #[test]
    fn errors_are_reported_with_clap_exit_codes() {
        let parsed: Demo = parse_from(args(&["x", "--port", "80"]), None).expect("valid");
        assert_eq!((parsed.port, parsed.log_format), (80, LogFormat::Text));
        // The JSON line itself is checked on the binaries' stderr (their cli tests).
        let error =
            parse_from::<Demo>(args(&["x", "--port", "nope", "--log-format", "json"]), None)
                .expect_err("invalid");
        assert_eq!(error, ExitCode::from(2));
    }
}

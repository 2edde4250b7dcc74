//! The command lines as pods run them: a bad argument is reported in the log format asked for
//! (`--log-format json` or `CLICKHEATMAP_LOG_FORMAT=json`), for every binary of the image.

use std::path::PathBuf;
use std::process::Command;

/// The binary `name` of this `cargo test` run (the others are siblings of the operator's).
fn binary(name: &str) -> Option<PathBuf> {
    let operator = PathBuf::from(env!("CARGO_BIN_EXE_clickheatmap-operator"));
    let path = operator.with_file_name(name);
    if path.exists() {
        return Some(path);
    }
    // `cargo test --workspace` (CI) builds every binary; `-p clickheatmap-operator` alone does not.
    assert!(
        !clickheatmap_testkit::in_ci(),
        "{} is missing: cargo test --workspace builds it",
        path.display()
    );
    eprintln!("SKIP {name}: not built (run cargo test --workspace)");
    None
}

fn run(binary: &PathBuf, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(binary)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .output()
        .expect("running the binary");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Each binary with an argument it must refuse, and that argument's name.
const CASES: [(&str, &[&str], &str); 4] = [
    (
        "clickheatmap-operator",
        &["run", "--resync-seconds", "0"],
        "--resync-seconds",
    ),
    (
        "clickheatmap-aggregator",
        &["run", "--no-such-flag"],
        "--no-such-flag",
    ),
    (
        "clickheatmap-collector",
        &["serve", "--rate-limit", "fast"],
        "--rate-limit",
    ),
    ("clickheatmap-viewer", &["--columns", "many"], "--columns"),
];

#[test]
fn a_bad_argument_is_one_json_line_when_json_logs_were_asked_for() {
    for (name, args, flag) in CASES {
        let Some(path) = binary(name) else { continue };
        // Through the flag, and through the environment the operator sets on its workloads.
        // After the subcommand, where every binary takes it (the viewer has none).
        let at = usize::from(name != "clickheatmap-viewer");
        let mut with_flag = args.to_vec();
        with_flag.splice(at..at, ["--log-format", "json"]);
        for (args, env) in [
            (with_flag.as_slice(), &[][..]),
            (args, &[("CLICKHEATMAP_LOG_FORMAT", "json")][..]),
        ] {
            let (code, stderr) = run(&path, args, env);
            assert_eq!(code, Some(2), "{name} {args:?}: {stderr}");
            let line: serde_json::Value = serde_json::from_str(stderr.trim())
                .unwrap_or_else(|e| panic!("{name} {args:?}: one JSON line, not {stderr:?}: {e}"));
            assert_eq!(line["level"], "ERROR", "{name}: {line}");
            assert_eq!(
                line["fields"]["message"], "invalid command line",
                "{name}: {line}"
            );
            assert!(
                line["fields"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(flag)),
                "{name}: {line}"
            );
        }
    }
}

#[test]
fn a_bad_argument_is_clap_text_otherwise() {
    for (name, args, _) in CASES {
        let Some(path) = binary(name) else { continue };
        let (code, stderr) = run(&path, args, &[("CLICKHEATMAP_LOG_FORMAT", "text")]);
        assert_eq!(code, Some(2), "{name}: {stderr}");
        assert!(stderr.starts_with("error:"), "{name}: {stderr}");
        assert!(serde_json::from_str::<serde_json::Value>(stderr.trim()).is_err());
    }
}

//! The command line as a pod runs it: a bad argument is reported in the log format asked for.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_clickheatmap-operator"))
        .args(args)
        .output()
        .expect("running the operator binary");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_argument_is_one_json_line_when_json_logs_were_asked_for() {
    let (code, stderr) = run(&["run", "--log-format", "json", "--resync-seconds", "0"]);
    assert_eq!(code, Some(2));
    let line: serde_json::Value = serde_json::from_str(stderr.trim()).expect("one JSON line");
    assert_eq!(line["level"], "ERROR");
    assert!(
        line["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("--resync-seconds")),
        "{line}"
    );
}

#[test]
fn a_bad_argument_is_clap_text_otherwise() {
    let (code, stderr) = run(&["run", "--resync-seconds", "0"]);
    assert_eq!(code, Some(2));
    assert!(stderr.starts_with("error:"), "{stderr}");
    assert!(serde_json::from_str::<serde_json::Value>(stderr.trim()).is_err());
}

//! The viewer binary as built with the rest of the workspace completes TLS handshakes with both
//! of its HTTPS stacks: object_store (the local engine over `s3://`) and the AWS SDK (the Athena
//! engine). moto serves HTTPS only, with a certificate of a test CA trusted through
//! `SSL_CERT_FILE`. A build with two rustls crypto providers panics on the first request instead.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clickheatmap_testkit::{MotoServer, free_port, wait_for_port};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_viewer(moto: &MotoServer, args: &[&str]) -> (KillOnDrop, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_clickheatmap-viewer"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .envs(moto.aws_env())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the viewer");
    let child = KillOnDrop(child);
    assert!(
        wait_for_port(port, Duration::from_secs(30)),
        "the viewer listens"
    );
    (child, port)
}

/// GET on the viewer: status and body.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn the_local_engine_reads_s3_over_https() {
    let moto = MotoServer::start_https();
    let ca = moto.ca().expect("https").ca_file();
    let created = Command::new("curl")
        .args(["--silent", "--fail", "--cacert"])
        .arg(&ca)
        .args(["-X", "PUT", &format!("{}/tls-viewer", moto.endpoint())])
        .status()
        .expect("curl (apt-get install curl)");
    assert!(created.success(), "creating the bucket over HTTPS");
    let (_viewer, port) = start_viewer(&moto, &["--curated", "s3://tls-viewer/curated"]);
    let (status, body) = get(port, "/api/pages");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"pages\":[]"), "{body}");
}

#[test]
fn the_athena_engine_reaches_athena_over_https() {
    let moto = MotoServer::start_https();
    let (_viewer, port) = start_viewer(
        &moto,
        &[
            "--engine",
            "athena",
            "--region",
            "us-east-1",
            // moto's built-in workgroup.
            "--workgroup",
            "primary",
            "--output-location",
            "s3://tls-results/athena/",
        ],
    );
    let (status, body) = get(port, "/api/pages");
    // moto runs the query and returns its preset (empty) result: the handshake worked when the
    // engine answers at all rather than failing to connect.
    assert_eq!(status, 200, "{body}");
}

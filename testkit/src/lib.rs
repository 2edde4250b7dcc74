//! Real emulators for integration tests.
//!
//! [`MotoServer::start`] runs `moto_server` (the Python AWS emulator) on `127.0.0.1` with a free
//! port and stops it by PID when dropped. moto is installed on first use into the workspace's
//! `.venv` (`python3 -m venv` + `pip install 'moto[server]'`), under a lock so that parallel tests
//! install it once; `.ci/run` installs it up front. Set `MOTO_SERVER` to use another binary.
//!
//! Nothing here is used outside tests, so failures panic with a message that says what to do.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether a missing prerequisite (a tool, an emulator, a cluster) must fail a test rather than
/// skip it: under CI (`CI` set, and not `false` or `0`) nothing may pass by skipping.
pub fn in_ci() -> bool {
    std::env::var_os("CI")
        .is_some_and(|value| !value.is_empty() && value != "false" && value != "0")
}

/// Polls `check` until it returns `Some`, and fails the test after `timeout` saying what it
/// waited for. Polls soon at first (a fast condition costs little waiting), then every 250 ms
/// (a slow one costs few calls).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// The workspace root (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The project's Python virtual environment, created (with moto) if missing.
pub fn python_venv() -> PathBuf {
    let venv = workspace_root().join(".venv");
    let marker = venv.join(".moto-installed");
    if marker.exists() {
        return venv;
    }
    let lock = workspace_root().join(".venv.lock");
    let started = Instant::now();
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => break,
            Err(_) if marker.exists() => return venv,
            Err(_) => {
                let stale = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(900));
                if stale {
                    let _ = std::fs::remove_file(&lock);
                }
                assert!(
                    started.elapsed() < Duration::from_secs(900),
                    "waited 15 minutes for another test to install moto ({})",
                    lock.display()
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    let result = install_moto(&venv);
    let _ = std::fs::remove_file(&lock);
    if let Err(problem) = result {
        panic!(
            "installing moto into {}: {problem}; run `bash .ci/run` or install it by hand",
            venv.display()
        );
    }
    let _ = std::fs::write(&marker, b"");
    venv
}

fn install_moto(venv: &Path) -> Result<(), String> {
    let run = |command: &mut Command| -> Result<(), String> {
        let status = command.status().map_err(|e| format!("{command:?}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{command:?} exited with {status}"))
        }
    };
    if !venv.join("bin/python").exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(venv))?;
    }
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "moto[server]>=5",
    ]))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

enum Listening {
    Yes,
    Exited,
    NotInTime,
}

/// Waits until `child` itself listens on `port` (not merely something on that port), or exits.
fn wait_until_listening(child: &mut Child, port: u16, timeout: Duration) -> Listening {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if !matches!(child.try_wait(), Ok(None)) {
            return Listening::Exited;
        }
        if process_listens_on(child.id(), port) {
            return Listening::Yes;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Listening::NotInTime
}

/// Whether process `pid` holds a TCP socket listening on `port`: the listening sockets' inodes
/// from `/proc/net/tcp{,6}`, looked for among the process's file descriptors.
fn process_listens_on(pid: u32, port: u16) -> bool {
    const LISTEN: &str = "0A";
    let port_hex = format!("{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1).and_then(|local| local.rsplit(':').next());
            if local_port == Some(port_hex.as_str())
                && fields.get(3) == Some(&LISTEN)
                && let Some(inode) = fields.get(9)
            {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(descriptors) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    descriptors.flatten().any(|descriptor| {
        std::fs::read_link(descriptor.path()).is_ok_and(|target| {
            inodes
                .iter()
                .any(|inode| target.as_os_str() == inode.as_str())
        })
    })
}

/// A certificate authority made for one test run, and a server certificate it signed for
/// `127.0.0.1` and `localhost` (made with the `openssl` command, EC P-256, valid two days).
/// Clients trust it through `SSL_CERT_FILE=<ca_file>` (rustls-native-certs reads it) or by
/// loading [`TestCa::ca_pem`].
pub struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "clickheatmap-ca-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap_or_else(|e| panic!("writing the certificate extensions: {e}"));
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("running openssl (apt-get install openssl): {e}"));
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=clickheatmap test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&ca);
        let mut csr = vec!["req"];
        csr.extend(ec);
        csr.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(&csr);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        TestCa { dir }
    }

    /// The CA certificate (PEM file): the value of `SSL_CERT_FILE` for clients.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.ca_file()).unwrap_or_else(|e| panic!("reading the test CA: {e}"))
    }

    /// The server certificate and key (PEM files).
    pub fn server_cert(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("server.pem"), self.dir.join("server.key"))
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn moto_binary() -> PathBuf {
    std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| python_venv().join("bin/moto_server"))
}

/// A moto server listening on 127.0.0.1, stopped when dropped.
pub struct MotoServer {
    child: Child,
    port: u16,
    /// Set when it serves HTTPS: the CA that signed its certificate.
    ca: Option<TestCa>,
}

impl MotoServer {
    pub fn start() -> MotoServer {
        MotoServer::launch(None)
    }

    /// A moto server that speaks HTTPS only, with a certificate from a new [`TestCa`]: real AWS
    /// endpoints are HTTPS, so this is how a test proves a client completes a TLS handshake.
    pub fn start_https() -> MotoServer {
        MotoServer::launch(Some(TestCa::new()))
    }

    fn launch(ca: Option<TestCa>) -> MotoServer {
        let tls_args: Vec<String> = match &ca {
            Some(ca) => {
                let (cert, key) = ca.server_cert();
                vec![
                    "--ssl-cert".to_owned(),
                    cert.display().to_string(),
                    "--ssl-key".to_owned(),
                    key.display().to_string(),
                ]
            }
            None => Vec::new(),
        };
        let binary = moto_binary();
        // Tests start servers in parallel: two may be handed the same free port, and then only
        // one binds it while the other's wait would see that one listening (moto takes seconds
        // to import before it even tries). So the port counts only once our own process holds
        // its listening socket; if it exits first, it lost the port: try another.
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new(&binary)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .args(&tls_args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
            let mut server = MotoServer {
                child,
                port,
                ca: None,
            };
            match wait_until_listening(&mut server.child, port, Duration::from_secs(60)) {
                Listening::Yes => {
                    server.ca = ca;
                    return server;
                }
                Listening::NotInTime => {
                    let _ = server.child.kill();
                    panic!("moto_server did not listen on 127.0.0.1:{port} within 60 s");
                }
                // The port was taken by another server; `server` is dropped.
                Listening::Exited => continue,
            }
        }
        panic!("moto_server could not get a free port on 127.0.0.1 in 5 tries");
    }

    /// A plain-HTTP moto server on `host:port` (e.g. `0.0.0.0` inside a test cluster's network
    /// namespace, where pods reach it on the node's address).
    pub fn start_on(host: &str, port: u16) -> MotoServer {
        let binary = moto_binary();
        let child = Command::new(&binary)
            .args(["-H", host, "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut server = MotoServer {
            child,
            port,
            ca: None,
        };
        assert!(
            wait_for_port(port, Duration::from_secs(60))
                && matches!(server.child.try_wait(), Ok(None)),
            "moto_server did not listen on {host}:{port} within 60 s"
        );
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, or `https://` for [`MotoServer::start_https`].
    pub fn endpoint(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Stops the server and starts a new, empty one on the same port (and with the same
    /// certificate): AWS unreachable for a while, then back.
    pub fn restart(&mut self) {
        self.stop();
        let binary = moto_binary();
        let mut command = Command::new(&binary);
        command.args(["-H", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(ca) = &self.ca {
            let (cert, key) = ca.server_cert();
            command
                .arg("--ssl-cert")
                .arg(cert)
                .arg("--ssl-key")
                .arg(key);
        }
        self.child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        assert!(
            wait_for_port(self.port, Duration::from_secs(60)),
            "moto_server did not listen on 127.0.0.1:{} again",
            self.port
        );
    }

    /// Stops the server (AWS unreachable).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The CA of an HTTPS server.
    pub fn ca(&self) -> Option<&TestCa> {
        self.ca.as_ref()
    }

    /// Environment for a child process (or an SDK loader) to talk to this server only.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_SESSION_TOKEN", "testing".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ];
        if let Some(ca) = &self.ca {
            env.retain(|(name, _)| *name != "AWS_ALLOW_HTTP");
            env.push(("SSL_CERT_FILE", ca.ca_file().display().to_string()));
        }
        env
    }
}

impl MotoServer {
    /// Creates an S3 bucket (moto accepts unsigned requests; no SDK needed for this).
    pub fn create_bucket(&self, bucket: &str) {
        assert!(
            self.ca.is_none(),
            "create_bucket speaks plain HTTP; create buckets of an HTTPS moto with an SDK client"
        );
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("connecting to moto: {e}"));
        let request = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        stream
            .write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("creating bucket {bucket}: {e}"));
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        assert!(
            response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
            "creating bucket {bucket}: {response}"
        );
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The pieces of the end-to-end suite: a real control plane, the chart as Helm renders it, the
//! operator process with the chart's ServiceAccount token, moto over HTTPS, the audit log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use clickheatmap_testkit::eventually;
use clickheatmap_testkit::{MotoServer, free_port, workspace_root};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::{Client, Config};
use serde_json::{Value, json};

/// The field manager of what the tests apply (a user's `kubectl apply --server-side`).
pub const USER: &str = "e2e-user";

/// The cluster the suite runs against: one per test binary.
pub struct Cluster {
    pub kubeconfig: PathBuf,
    /// The apiserver's audit log, when the suite started the control plane itself.
    pub audit_log: Option<PathBuf>,
    /// The control plane's folder, when the suite started it.
    pub state: Option<PathBuf>,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();

use clickheatmap_testkit::in_ci;

/// The shared cluster, started on first use; `None` (after saying why) when there is none and
/// this is not CI. Under `CI=true` a missing control plane fails the test.
pub fn cluster() -> Option<&'static Cluster> {
    CLUSTER.get_or_init(start_cluster).as_ref()
}

fn start_cluster() -> Option<Cluster> {
    if let Some(path) = std::env::var_os("CLICKHEATMAP_E2E_KUBECONFIG").filter(|p| !p.is_empty()) {
        eprintln!("e2e: using the cluster of CLICKHEATMAP_E2E_KUBECONFIG={path:?}");
        return Some(Cluster {
            kubeconfig: PathBuf::from(path),
            audit_log: None,
            state: None,
        });
    }
    let kube_dir = std::env::var_os("CLICKHEATMAP_KUBE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/kube"));
    if !kube_dir.join("up.sh").exists() {
        let message = format!(
            "no control plane: {} has no up.sh (set CLICKHEATMAP_KUBE_DIR, or \
             CLICKHEATMAP_E2E_KUBECONFIG for a cluster of your own)",
            kube_dir.display()
        );
        assert!(!in_ci(), "{message}");
        eprintln!("SKIP e2e: {message}");
        return None;
    }
    // Short: the control plane puts unix sockets under it (70 characters at most).
    let state = PathBuf::from(format!("/tmp/chm-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).expect("state dir");
    let policy = state.join("audit-policy.yaml");
    let audit_log = state.join("audit.log");
    // Every request of a ServiceAccount (the operator's), at metadata level.
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
         - level: Metadata\n  userGroups: [\"system:serviceaccounts\"]\n- level: None\n",
    )
    .expect("audit policy");
    let started = Instant::now();
    let output = Command::new("bash")
        .arg(kube_dir.join("up.sh"))
        .arg(&state)
        .env(
            "KUBE_APISERVER_EXTRA_FLAGS",
            format!(
                "--audit-policy-file={} --audit-log-path={}",
                policy.display(),
                audit_log.display()
            ),
        )
        .stdin(Stdio::null())
        .output()
        .expect("running up.sh");
    assert!(
        output.status.success(),
        "up.sh failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "e2e: control plane up in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        state.display()
    );
    // The control plane lives as long as this test process: a watchdog stops it afterwards
    // (Rust's test harness has no hook at the end of a binary).
    let _ = Command::new("setsid")
        .args([
            "sh",
            "-c",
            &format!(
                "while kill -0 {} 2>/dev/null; do sleep 1; done; bash {} {} >/dev/null 2>&1",
                std::process::id(),
                kube_dir.join("down.sh").display(),
                state.display()
            ),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    start_stand_in_kubelet(state.join("kubeconfig"));
    Some(Cluster {
        kubeconfig: state.join("kubeconfig"),
        audit_log: Some(audit_log),
        state: Some(state),
    })
}

/// This control plane has no node, so the workloads' pods stay Pending and the operator's
/// `AggregatorReady`/`CollectorReady`/`ViewerReady` would never become True. A thread stands in
/// for the kubelet: it marks every pod of the operator's workloads Running and Ready, as a
/// kubelet reports a pod whose probes answer. The StatefulSet and ReplicaSet controllers of the
/// real controller manager then count them. (Pods that really run are tested in the node
/// cluster: operator/tests/node.)
fn start_stand_in_kubelet(kubeconfig: PathBuf) {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            let client = async {
                let kubeconfig = Kubeconfig::read_from(&kubeconfig).ok()?;
                let config =
                    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                        .await
                        .ok()?;
                Client::try_from(config).ok()
            };
            let Some(client) = client.await else {
                return;
            };
            let pods: Api<Pod> = Api::all(client.clone());
            let selector =
                ListParams::default().labels("app.kubernetes.io/managed-by=clickheatmap-operator");
            let running = json!({"status": {
                "phase": "Running",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Initialized", "status": "True"},
                    {"type": "ContainersReady", "status": "True"},
                    {"type": "Ready", "status": "True"},
                ],
            }});
            loop {
                if let Ok(list) = pods.list(&selector).await {
                    for pod in list.items {
                        let ready = pod
                            .status
                            .as_ref()
                            .and_then(|status| status.conditions.as_ref())
                            .is_some_and(|conditions| {
                                conditions
                                    .iter()
                                    .any(|c| c.type_ == "Ready" && c.status == "True")
                            });
                        if ready || pod.metadata.deletion_timestamp.is_some() {
                            continue;
                        }
                        let (Some(namespace), Some(name)) = (
                            pod.metadata.namespace.as_deref(),
                            pod.metadata.name.as_deref(),
                        ) else {
                            continue;
                        };
                        let _ = Api::<Pod>::namespaced(client.clone(), namespace)
                            .patch_status(name, &PatchParams::default(), &Patch::Merge(&running))
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    });
}

impl Cluster {
    pub async fn admin(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("client config");
        Client::try_from(config).expect("client")
    }

    /// A kubeconfig that authenticates with `token` (a ServiceAccount's).
    pub fn kubeconfig_with_token(&self, token: &str, path: &Path) {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let cluster = kubeconfig
            .clusters
            .first()
            .and_then(|named| named.cluster.clone())
            .expect("a cluster in the kubeconfig");
        let text = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {
                "server": cluster.server,
                "certificate-authority-data": cluster.certificate_authority_data,
                "certificate-authority": cluster.certificate_authority,
            }}],
            "users": [{"name": "operator", "user": {"token": token}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "operator"}}],
            "current-context": "e2e",
        });
        std::fs::write(path, text.to_string()).expect("writing a kubeconfig");
    }

    /// The audit entries of `user`'s completed requests after `offset` bytes of the log; `None`
    /// without an audit log.
    fn audit_entries(&self, user: &str, offset: u64) -> Option<Vec<Value>> {
        let log = self.audit_log.as_ref()?;
        let text = std::fs::read(log).unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(0).min(text.len());
        Some(
            String::from_utf8_lossy(&text[start..])
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .filter(|entry| entry["user"]["username"] == user)
                .filter(|entry| entry["stage"] == "ResponseComplete")
                .collect(),
        )
    }

    /// Write requests (create, update, patch, delete) that `user` made after `offset` bytes of
    /// the audit log, as `verb resource/name subresource`; `None` without an audit log.
    pub fn writes_by(&self, user: &str, offset: u64) -> Option<Vec<String>> {
        let entries = self.audit_entries(user, offset)?;
        Some(
            entries
                .iter()
                .filter(|entry| {
                    matches!(
                        entry["verb"].as_str(),
                        Some("create" | "update" | "patch" | "delete" | "deletecollection")
                    )
                })
                .map(|entry| {
                    let object = &entry["objectRef"];
                    format!(
                        "{} {}/{} {}",
                        entry["verb"].as_str().unwrap_or(""),
                        object["resource"].as_str().unwrap_or(""),
                        object["name"].as_str().unwrap_or(""),
                        object["subresource"].as_str().unwrap_or("")
                    )
                })
                .collect(),
        )
    }

    /// Every request `user` made after `offset` bytes of the audit log, as `verb resource`.
    pub fn requests_by(&self, user: &str, offset: u64) -> Option<Vec<String>> {
        let entries = self.audit_entries(user, offset)?;
        Some(
            entries
                .iter()
                .map(|entry| {
                    format!(
                        "{} {}",
                        entry["verb"].as_str().unwrap_or(""),
                        entry["objectRef"]["resource"].as_str().unwrap_or("")
                    )
                })
                .collect(),
        )
    }

    /// Stops the kube-apiserver and starts it again with the same command line (only for a
    /// control plane this suite started); returns once it answers again.
    pub fn restart_apiserver(&self) {
        let state = self
            .state
            .as_ref()
            .expect("a control plane of the suite's own");
        let pid_file = state.join("kube-apiserver.pid");
        let pid = std::fs::read_to_string(&pid_file).expect("apiserver pid");
        let pid = pid.trim().to_owned();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("apiserver cmdline");
        let args: Vec<String> = cmdline
            .split(|byte| *byte == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        let _ = Command::new("kill").arg(&pid).status();
        while Path::new(&format!("/proc/{pid}")).exists() {
            std::thread::sleep(Duration::from_millis(100));
        }
        let log =
            std::fs::File::create(state.join("logs/kube-apiserver.restarted.log")).expect("log");
        // Outlives this call on purpose: down.sh stops it through the pid file, like the first.
        #[allow(clippy::zombie_processes)]
        let child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("restarting kube-apiserver");
        std::fs::write(&pid_file, child.id().to_string()).expect("pid file");
        let kubeconfig = std::fs::read_to_string(&self.kubeconfig).unwrap_or_default();
        let port = kubeconfig
            .split("https://127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|port| port.parse::<u16>().ok())
            .expect("apiserver port");
        assert!(
            clickheatmap_testkit::wait_for_port(port, Duration::from_secs(60)),
            "the restarted apiserver listens"
        );
        // Listening comes before serving: wait for /readyz through a client.
        std::thread::sleep(Duration::from_secs(3));
    }

    /// The audit log's length now, to count from.
    pub fn audit_offset(&self) -> u64 {
        self.audit_log
            .as_ref()
            .and_then(|log| std::fs::metadata(log).ok())
            .map_or(0, |meta| meta.len())
    }
}

/// Server-side applies an object of any kind, found through discovery.
pub async fn apply(client: &Client, object: &Value, namespace: Option<&str>) -> DynamicObject {
    let api_version = object["apiVersion"].as_str().expect("apiVersion");
    let kind = object["kind"].as_str().expect("kind");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, capabilities) = discovery::pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|e| panic!("discovering {api_version} {kind}: {e}"));
    let name = object["metadata"]["name"].as_str().expect("metadata.name");
    let api: Api<DynamicObject> = match (&capabilities.scope, namespace) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
        _ => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        name,
        &PatchParams::apply(USER).force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"))
}

pub async fn create_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    api.patch(name, &PatchParams::apply(USER), &Patch::Apply(&namespace))
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
}

/// The chart as `helm install` would have created it in one namespace.
pub struct Installed {
    pub namespace: String,
    pub service_account: String,
    pub deployment: Deployment,
}

/// Renders the chart with the real Helm library (tests/helm/render.py): `{"crds": [...],
/// "objects": [...]}`.
pub fn render_chart(namespace: &str, values: &Value) -> Value {
    let python = workspace_root().join(".venv/bin/python");
    let output = Command::new(&python)
        .arg(workspace_root().join("tests/helm/render.py"))
        .args([
            "--release",
            "clickheatmap-operator",
            "--namespace",
            namespace,
        ])
        .arg("--values")
        .arg(values.to_string())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    assert!(
        output.status.success(),
        "rendering the chart (needs `.venv/bin/pip install -r tests/helm/requirements.txt`, \
         which .ci/run does): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("render output")
}

/// Renders the chart ([`render_chart`]), applies its CRD and waits until it is Established,
/// then applies every rendered object into `namespace`.
pub async fn install_chart(client: &Client, namespace: &str, values: Value) -> Installed {
    let rendered = render_chart(namespace, &values);
    for crd in rendered["crds"].as_array().expect("crds") {
        apply(client, crd, None).await;
        let name = crd["metadata"]["name"]
            .as_str()
            .expect("crd name")
            .to_owned();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        eventually("the CRD to be Established", Duration::from_secs(30), || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let crd = crds.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        })
        .await;
    }
    let mut deployment = None;
    let mut service_account = None;
    for object in rendered["objects"].as_array().expect("objects") {
        let applied = apply(client, object, Some(namespace)).await;
        match object["kind"].as_str() {
            Some("Deployment") => {
                deployment = Some(serde_json::from_value(object.clone()).expect("deployment"))
            }
            Some("ServiceAccount") => service_account = applied.metadata.name,
            _ => {}
        }
    }
    Installed {
        namespace: namespace.to_owned(),
        service_account: service_account.expect("the chart renders a ServiceAccount"),
        deployment: deployment.expect("the chart renders a Deployment"),
    }
}

impl Installed {
    /// A token of the chart's ServiceAccount (TokenRequest, as `kubectl create token`).
    pub async fn token(&self, client: &Client) -> String {
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &self.namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        accounts
            .create_token_request(&self.service_account, &PostParams::default(), &request)
            .await
            .expect("TokenRequest")
            .status
            .expect("token status")
            .token
    }

    /// The user name the API server gives the operator.
    pub fn user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }

    /// The operator container's arguments as the chart renders them.
    pub fn args(&self) -> Vec<String> {
        self.deployment
            .spec
            .as_ref()
            .and_then(|spec| spec.template.spec.as_ref())
            .and_then(|pod| pod.containers.first())
            .and_then(|container| container.args.clone())
            .unwrap_or_default()
    }
}

/// The operator binary, run as the chart's Deployment would run it.
pub struct OperatorProcess {
    child: Child,
    pub identity: String,
    pub metrics_port: u16,
    log: PathBuf,
}

impl OperatorProcess {
    /// Starts the operator with the chart's arguments (the metrics port moved to a free one on
    /// 127.0.0.1), the chart's ServiceAccount token, moto's endpoint and CA, and `extra` args.
    pub async fn start(
        cluster: &Cluster,
        installed: &Installed,
        client: &Client,
        moto: &MotoServer,
        identity: &str,
        extra: &[&str],
    ) -> OperatorProcess {
        let dir = std::env::temp_dir().join(format!(
            "chm-e2e-op-{}-{identity}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("operator dir");
        let kubeconfig = dir.join("kubeconfig");
        cluster.kubeconfig_with_token(&installed.token(client).await, &kubeconfig);
        let metrics_port = free_port();
        let mut args = installed.args();
        if let Some(at) = args.iter().position(|arg| arg == "--metrics-port") {
            args[at + 1] = metrics_port.to_string();
        }
        args.extend(["--metrics-bind-address".to_owned(), "127.0.0.1".to_owned()]);
        // Extra `--flag value` pairs replace the chart's value of the same flag.
        for pair in extra.chunks(2) {
            match (pair, args.iter().position(|arg| arg == pair[0])) {
                ([_, value], Some(at)) if at + 1 < args.len() => args[at + 1] = (*value).to_owned(),
                _ => args.extend(pair.iter().map(|arg| (*arg).to_owned())),
            }
        }
        let log = dir.join("operator.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_clickheatmap-operator"))
            .args(&args)
            .envs(moto.aws_env())
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAMESPACE", &installed.namespace)
            .env("POD_NAME", identity)
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("starting the operator");
        let process = OperatorProcess {
            child,
            identity: identity.to_owned(),
            metrics_port,
            log,
        };
        let started = Instant::now();
        while process.get("/healthz").is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the operator did not serve /healthz: {}",
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        process
    }

    fn get(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
    }

    /// The operator's metrics page.
    pub fn metrics(&self) -> String {
        self.get("/metrics").unwrap_or_default()
    }

    /// The sum of the samples of `name` whose labels contain every `label`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> u64 {
        sum_metric(&self.metrics(), name, labels)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Peak RSS and CPU time so far.
    pub fn usage(&self) -> Usage {
        usage_of(self.child.id())
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- operator {} log (last lines) ---\n{}",
                self.identity,
                self.log_tail()
            );
        }
        self.kill();
        // Its kubeconfig holds a token: keep the folder only to read a failed test's log.
        if !std::thread::panicking()
            && let Some(dir) = self.log.parent()
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Sums the samples of a metric in a Prometheus text page.
pub fn sum_metric(page: &str, name: &str, labels: &[&str]) -> u64 {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

/// AWS SDK configuration for checking moto from the test (it trusts moto's CA).
pub async fn aws_config(moto: &MotoServer, region: &str) -> aws_config::SdkConfig {
    let ca = moto.ca().expect("an HTTPS moto").ca_pem();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(clickheatmap_tls::aws_http_client_trusting(&ca).expect("CA"))
        .endpoint_url(moto.endpoint())
        .region(aws_config::Region::new(region.to_owned()))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "testing", "testing", None, None, "e2e",
        ))
        .load()
        .await
}

/// A manifest of examples/ as JSON.
pub fn example(name: &str) -> Value {
    let path = workspace_root().join("examples").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Resource use of a process, from /proc.
pub struct Usage {
    pub peak_rss_kib: u64,
    pub cpu_seconds: f64,
}

/// Peak RSS and CPU time of process `pid`.
pub fn usage_of(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 14th field overall.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    Usage {
        peak_rss_kib,
        cpu_seconds: ticks / 100.0,
    }
}

/// The Argo CD health of `object` as `deploy/argocd/health.lua` assesses it under Lua 5.1 (Argo
/// CD's gopher-lua), as `(status, message)`; `None` when no `lua5.1` is installed (not in CI).
pub fn argo_health(object: &Value) -> Option<(String, String)> {
    let script = format!(
        "local obj = {}\n\
         local chunk = assert(loadfile({:?}))\n\
         setfenv(chunk, {{obj = obj, ipairs = ipairs, pairs = pairs, next = next, type = type,\n\
           tostring = tostring, tonumber = tonumber, error = error, pcall = pcall,\n\
           select = select, unpack = unpack, string = string, table = table, math = math}})\n\
         local hs = chunk()\n\
         io.write(hs.status, '\\n', hs.message or '')\n",
        to_lua(object),
        workspace_root()
            .join("deploy/argocd/health.lua")
            .display()
            .to_string()
    );
    let output = match Command::new("lua5.1").arg("-e").arg(&script).output() {
        Ok(output) => output,
        Err(error) => {
            assert!(
                !in_ci(),
                "lua5.1 is needed for the Argo CD health check: {error}"
            );
            eprintln!("SKIP Argo CD health check: no lua5.1 ({error})");
            return None;
        }
    };
    assert!(
        output.status.success(),
        "health.lua failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    Some((status.to_owned(), message.to_owned()))
}

/// A JSON value as a Lua table constructor (null fields are left out, as Argo CD does).
fn to_lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(to_lua).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), to_lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn lua_string(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            c if (c as u32) < 0x20 => quoted.push_str(&format!("\\{}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// The pipeline's condition of this type, if its status has one.
pub fn condition<'a>(
    pipeline: &'a clickheatmap_crds::ClickHeatmapPipeline,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    pipeline
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

//! A real browser, Debian's headless Chromium:
//!
//! * a person's round trip: Playwright (`tests/browser/demo_clicks.mjs`) clicks local mode's demo
//!   page, follows its link to the viewer and reads the clicks back off the heatmap;
//! * a site on another origin loads the collector's snippet and its clicks reach the viewer's
//!   live feed (CORS).
//!
//! Skipped, with a message, when Chromium (`apt-get install -y chromium`) or the Playwright
//! package (`npm ci --prefix tests/browser`) is missing — except under CI (`CI` set), where
//! `.ci/run` installs both and a missing one is a failure.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use clickheatmap_collector::client::HttpClient;
use clickheatmap_local::{Options, start};

fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

// Whether a missing tool must fail the test rather than skip it.
use clickheatmap_testkit::in_ci as required;

fn skip_or_fail(message: &str) {
    assert!(!required(), "CI must run the browser tests: {message}");
    eprintln!("skipped: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_clicks_show_on_the_viewer_heatmap() {
    let Some(chromium) = find_chromium() else {
        return skip_or_fail("no chromium installed (apt-get install -y chromium)");
    };
    let scripts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/browser");
    if !scripts
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        return skip_or_fail("Playwright is not installed (npm ci --prefix tests/browser)");
    }
    // A fresh local mode with the defaults a newcomer gets (60 s windows, live mode on).
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::in_dir(dir.path());
    options.port_collector = 0;
    options.port_viewer = 0;
    let running = start(&options).await.unwrap();
    let screenshots = tempfile::tempdir().unwrap();

    let demo = format!("{}/", running.collector_url());
    let script = scripts.join("demo_clicks.mjs");
    let shots = screenshots.path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(demo)
            .arg(shots)
            .env("CHROMIUM", chromium)
            .stdin(Stdio::null())
            .output()
    })
    .await
    .unwrap()
    .expect("node runs (apt-get install -y nodejs)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser did not find the clicks in the viewer:\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}");
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["clicks"], 7, "{seen}");
    assert!(screenshots.path().join("viewer.png").is_file());
    // What the browser read off the heatmap is what the curated table and the live windows hold
    // (asked again if a window closed between the two questions).
    let mut cells = std::collections::BTreeMap::new();
    for _ in 0..20 {
        cells = stored_and_live(&running).await;
        if cells.values().sum::<i64>() == 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(cells.get(&(2, 6)), Some(&3), "{cells:?}");
    assert_eq!(cells.get(&(12, 9)), Some(&2), "{cells:?}");
    assert_eq!(cells.get(&(18, 17)), Some(&1), "{cells:?}");
    assert_eq!(cells.values().sum::<i64>(), 7, "{cells:?}");
    running.stop().await.unwrap();
}

/// The demo page's cells, curated table plus open windows, as `(x, y) -> clicks`.
async fn stored_and_live(
    running: &clickheatmap_local::Running,
) -> std::collections::BTreeMap<(i64, i64), i64> {
    let mut client = HttpClient::connect(running.viewer_addr).await.unwrap();
    let now = clickheatmap_aggregator::time::now_ms();
    let stored = client
        .get(&format!(
            "/api/heatmap?page=demo-page&from={}&to={}",
            now - 3_600_000,
            now + 60_000
        ))
        .await
        .unwrap()
        .json();
    let live = client.get("/v1/live?page=demo-page").await.unwrap().json();
    let mut cells = std::collections::BTreeMap::new();
    for cell in stored["cells"]
        .as_array()
        .unwrap()
        .iter()
        .chain(live["cells"].as_array().unwrap())
    {
        *cells
            .entry((cell[0].as_i64().unwrap(), cell[1].as_i64().unwrap()))
            .or_insert(0) += cell[2].as_i64().unwrap();
    }
    cells
}

/// Stops the browser (SIGTERM, then SIGKILL) when dropped, by its process id.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_in_headless_chromium_reach_the_viewer() {
    let Some(chromium) = find_chromium() else {
        return skip_or_fail("no chromium installed (apt-get install -y chromium)");
    };
    // The page a site would have, on its own origin.
    let site = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site_addr = site.local_addr().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::in_dir(dir.path());
    options.port_collector = 0;
    options.port_viewer = 0;
    options.window = "1d".parse().unwrap();
    options.allowed_origins = vec![format!("http://{site_addr}")];
    let running = start(&options).await.unwrap();

    let page = format!(
        r#"<!doctype html><html><body style="margin:0;width:100vw;height:100vh">
<script src="{}/v1/snippet.js" data-page-id="browser-page" data-flush-ms="1000"></script>
<script>
window.addEventListener('load', function () {{
  for (var i = 0; i < 3; i++) {{
    document.body.dispatchEvent(new MouseEvent('click', {{ clientX: 5, clientY: 5, bubbles: true }}));
  }}
}});
</script></body></html>"#,
        running.collector_url()
    );
    let site_server = tokio::spawn(async move {
        let app = Router::new().route("/", get(move || async move { Html(page) }));
        let _ = axum::serve(site, app).await;
    });

    let profile = tempfile::tempdir().unwrap();
    let browser = Browser(
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("http://{site_addr}/"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let deadline = Instant::now() + Duration::from_secs(90);
    let live = loop {
        let mut client = HttpClient::connect(running.viewer_addr).await.unwrap();
        let live = client
            .get("/api/live?page=browser-page")
            .await
            .unwrap()
            .json();
        if live["cells"]
            .as_array()
            .is_some_and(|cells| !cells.is_empty())
        {
            break live;
        }
        assert!(
            Instant::now() < deadline,
            "no browser clicks arrived: {live}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    drop(browser);
    // Three clicks in the top-left cell.
    assert_eq!(live["cells"], serde_json::json!([[0, 0, 3]]), "{live}");
    site_server.abort();
    running.stop().await.unwrap();
}

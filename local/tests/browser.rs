//! A real browser: headless Chromium opens a page that loads the collector's snippet, clicks on
//! it, and the clicks show up in the viewer's live feed. Skipped (with a message) when no
//! `chromium` is installed (`apt-get install -y chromium`).

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
        eprintln!("skipped: no chromium installed (apt-get install -y chromium)");
        return;
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

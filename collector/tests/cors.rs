//! CORS against the real server: preflight, allowed and refused origins, no credentials ever.

mod common;

use std::sync::Arc;

use clickheatmap_collector::client::HttpResponse;
use clickheatmap_collector::{AllowedOrigins, ChannelSink, CollectorConfig};
use common::{Running, event};

const SHOP: &str = "https://shop.example.com";

async fn start(origins: &[&str]) -> (Running, tokio::sync::mpsc::Receiver<bytes::Bytes>) {
    let (sink, receiver) = ChannelSink::new(1024);
    let config = CollectorConfig {
        allowed_origins: AllowedOrigins::parse(origins).unwrap(),
        rate_limit: None,
        ..CollectorConfig::default()
    };
    (Running::start(config, Arc::new(sink)).await, receiver)
}

fn no_credentials(response: &HttpResponse) {
    assert_eq!(response.header("access-control-allow-credentials"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_get_cors_headers_and_others_are_refused() {
    let (server, _records) = start(&[SHOP, "http://localhost:3000"]).await;
    let mut client = server.client().await;

    let preflight = client
        .request(
            "OPTIONS",
            "/v1/clicks",
            &[
                ("origin", SHOP),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-origin"), Some(SHOP));
    assert!(
        preflight
            .header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    assert!(
        preflight
            .header("access-control-allow-headers")
            .unwrap()
            .contains("content-type")
    );
    assert!(preflight.header("vary").unwrap().contains("origin"));
    no_credentials(&preflight);

    let post = client
        .request(
            "POST",
            "/v1/clicks",
            &[
                ("origin", SHOP),
                ("content-type", "text/plain;charset=UTF-8"),
            ],
            event(1).as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(post.status, 202, "{}", post.text());
    assert_eq!(post.header("access-control-allow-origin"), Some(SHOP));
    assert!(post.header("vary").unwrap().contains("origin"));
    no_credentials(&post);

    // Another site: refused at preflight and at the POST itself (a text/plain POST needs no
    // preflight, so the server must refuse it, not only the browser).
    let evil = "https://evil.example.net";
    let preflight = client
        .request(
            "OPTIONS",
            "/v1/clicks",
            &[("origin", evil), ("access-control-request-method", "POST")],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(preflight.status, 403);
    assert_eq!(preflight.header("access-control-allow-origin"), None);
    let before = server.metrics.snapshot().events_accepted;
    for origin in [
        evil,
        "null",
        "https://shop.example.com.evil.net",
        "http://shop.example.com",
    ] {
        let post = client
            .request(
                "POST",
                "/v1/clicks",
                &[("origin", origin), ("content-type", "text/plain")],
                event(2).as_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(post.status, 403, "{origin}");
        assert_eq!(post.header("access-control-allow-origin"), None);
        assert!(post.json()["error"].as_str().unwrap().contains("origin"));
    }
    assert_eq!(
        server.metrics.snapshot().events_accepted,
        before,
        "nothing accepted"
    );

    // Not from a browser (no Origin): allowed, no CORS headers. Same origin: allowed.
    let post = client
        .post("/v1/clicks", "application/json", event(3).as_bytes())
        .await
        .unwrap();
    assert_eq!(post.status, 202);
    assert_eq!(post.header("access-control-allow-origin"), None);
    let own = format!("http://{}", server.address);
    let post = client
        .request(
            "POST",
            "/v1/clicks",
            &[("origin", &own), ("content-type", "application/json")],
            event(4).as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(post.status, 202, "{}", post.text());
    assert_eq!(
        post.header("access-control-allow-origin"),
        Some(own.as_str())
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_only_when_configured_and_still_without_credentials() {
    let (server, _records) = start(&["*"]).await;
    let mut client = server.client().await;
    let preflight = client
        .request(
            "OPTIONS",
            "/v1/clicks",
            &[
                ("origin", "https://anyone.example.org"),
                ("access-control-request-method", "POST"),
            ],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
    no_credentials(&preflight);
    let post = client
        .request(
            "POST",
            "/v1/clicks",
            &[
                ("origin", "https://anyone.example.org"),
                ("content-type", "application/json"),
            ],
            event(1).as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(post.status, 202);
    assert_eq!(post.header("access-control-allow-origin"), Some("*"));
    no_credentials(&post);
    server.stop().await;

    // With no list at all, browsers on other sites are refused.
    let (server, _records) = start(&[]).await;
    let mut client = server.client().await;
    let post = client
        .request(
            "POST",
            "/v1/clicks",
            &[("origin", SHOP), ("content-type", "application/json")],
            event(1).as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(post.status, 403);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snippet_and_health_endpoints_are_served() {
    let (server, _records) = start(&[SHOP]).await;
    let mut client = server.client().await;
    let snippet = client.get("/v1/snippet.js").await.unwrap();
    assert_eq!(snippet.status, 200);
    assert!(
        snippet
            .header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    let text = snippet.text();
    for needle in [
        "sendBeacon",
        "keepalive",
        "clientX",
        "innerWidth",
        "event_time_ms",
        "pagehide",
    ] {
        assert!(text.contains(needle), "{needle}");
    }
    assert_eq!(client.get("/healthz").await.unwrap().status, 200);
    let ready = client.get("/readyz").await.unwrap();
    assert_eq!(ready.status, 200, "{}", ready.text());
    let metrics = client.get("/metrics").await.unwrap();
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(
        metrics
            .text()
            .contains("# TYPE collector_events_accepted_total counter")
    );
    server.stop().await;
}

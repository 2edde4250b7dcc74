//! `clickheatmap`: local mode — collector, embedded stream, aggregator and viewer in one process.

use clap::Parser;
use clickheatmap_local::{Options, start};

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops local mode");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One TLS provider for every HTTPS client of the process (see clickheatmap-tls).
    clickheatmap_tls::install_crypto_provider();
    let options = Options::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let running = start(&options).await?;
    let collector = running.collector_url();
    let viewer = running.viewer_url();
    println!("clickheatmap local mode");
    println!("  demo page (click here): {collector}/");
    println!("  collector:              {collector}/v1/clicks");
    println!("  viewer:                 {viewer}/?page=demo-page&live=1");
    println!("  live endpoint:          {viewer}/v1/live?page=demo-page");
    println!("  stream log:             {}", running.log_path.display());
    println!(
        "  curated Parquet:        {}",
        running.curated_path.display()
    );
    if let Some(rate) = options.synthetic {
        println!("  synthetic clicks:       {rate}/s");
    }
    println!("Ctrl-C stops.");
    shutdown_signal().await;
    running.stop().await?;
    Ok(())
}

//! `clickheatmap-viewer`: serve the heatmap viewer until SIGINT/SIGTERM.

use std::process::ExitCode;

use clickheatmap_viewer::config::Config;
use clickheatmap_viewer::server;

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
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the viewer");
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
async fn main() -> ExitCode {
    // One TLS provider for every HTTPS client of the process (see clickheatmap-tls).
    clickheatmap_tls::install_crypto_provider();
    let config: Config = match clickheatmap_logging::parse_args() {
        Ok(config) => config,
        Err(code) => return code,
    };
    clickheatmap_logging::init(config.log_format, "info");
    let viewer = match config.build().await {
        Ok(viewer) => viewer,
        Err(error) => {
            tracing::error!(%error, "invalid configuration");
            return ExitCode::from(2);
        }
    };
    if viewer.allow_raw_sql && !viewer.engine.supports_raw_sql() {
        tracing::warn!(
            engine = viewer.engine.name(),
            "--allow-raw-sql has no effect: only the Athena engine runs raw SQL"
        );
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(address = %config.listen, %error, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        address = %config.listen,
        engine = viewer.engine.name(),
        table = %viewer.table.quoted(),
        live = viewer.live.is_some(),
        raw_sql = viewer.allow_raw_sql,
        "serving the heatmap viewer on http://{}/",
        config.listen
    );
    match server::serve(listener, viewer, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "server failed");
            ExitCode::FAILURE
        }
    }
}

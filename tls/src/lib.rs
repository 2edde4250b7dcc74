//! One TLS crypto provider for the whole workspace.
//!
//! rustls picks its process-wide crypto provider from its cargo features, and gives up (a panic
//! on the first TLS handshake) when both `ring` and `aws-lc-rs` are compiled in — which a build
//! of several workspace members would do if each dependency brought its favourite. So the
//! workspace compiles exactly one, **ring**:
//!
//! * object_store's S3 client (aggregator, viewer) hard-wires ring (reqwest 0.12's
//!   `rustls-tls-native-roots`, and ring for request signing), so ring is there in any case;
//! * the AWS SDK's own default HTTPS client would bring aws-lc-rs, so the SDK crates are built
//!   without `default-https-client` and every SDK configuration is given `aws_http_client`
//!   (this crate's `aws` feature, which binaries without the SDK — local mode — leave off);
//! * kube is built with its `ring` feature and reqwest 0.13 (the viewer's live proxy) with
//!   `rustls-no-provider`, which uses the process default.
//!
//! Every binary still calls [`install_crypto_provider`] first, so that a dependency that later
//! enables a second provider cannot turn into a crash loop; `tests/tls_handshake.rs` in each
//! binary's crate proves a real handshake works as built.

#[cfg(feature = "aws")]
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
#[cfg(feature = "aws")]
use aws_smithy_runtime_api::client::http::SharedHttpClient;

/// Installs ring as the process-wide rustls crypto provider. Idempotent; returns whether this
/// call installed it (false when a provider was already installed, which is fine).
pub fn install_crypto_provider() -> bool {
    rustls::crypto::ring::default_provider()
        .install_default()
        .is_ok()
}

/// The HTTPS client for AWS SDK configurations: rustls with ring, the system's root
/// certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR` are honoured, which is how tests trust a
/// local CA), plain HTTP allowed for emulators on 127.0.0.1.
///
/// A new client (and connection pool) per call: a pool is bound to the Tokio runtime that
/// first used it, so one shared across runtimes (tests) would hand out dead connections.
#[cfg(feature = "aws")]
pub fn aws_http_client() -> SharedHttpClient {
    install_crypto_provider();
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// Like [`aws_http_client`], trusting the system's roots plus `extra_ca_pem` (PEM certificates
/// of a private CA: an emulator's, or a TLS-inspecting proxy's).
#[cfg(feature = "aws")]
pub fn aws_http_client_trusting(extra_ca_pem: &[u8]) -> Result<SharedHttpClient, TlsError> {
    install_crypto_provider();
    let trust = tls::TrustStore::empty()
        .with_native_roots(true)
        .with_pem_certificate(extra_ca_pem.to_vec());
    let context = tls::TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|error| TlsError(error.to_string()))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .tls_context(context)
        .build_https())
}

/// A TLS configuration that cannot be built (e.g. a certificate that does not parse).
#[derive(Debug, thiserror::Error)]
#[error("TLS configuration: {0}")]
pub struct TlsError(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installing_twice_is_harmless() {
        install_crypto_provider();
        assert!(!install_crypto_provider());
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}

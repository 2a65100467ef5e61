//! TLS files read at start: the RTMPS certificate and key, and the CA
//! bundle for `https://` webhooks. Errors name the key and the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Config, ServerError};

/// The RTMPS acceptor (when `server.rtmps_addr` is set) and the webhook
/// TLS roots, or the error that stops the start.
pub(super) fn prepare(config: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, ServerError> {
    let s = &config.server;
    let tls = match (s.rtmps_addr, &s.tls_cert, &s.tls_key) {
        (Some(_), Some(cert), Some(key)) => Some(load_tls(cert, key)?),
        _ => None,
    };
    let https_webhook = config.apps.values().any(|a| {
        [&a.publish_webhook, &a.read_webhook]
            .into_iter()
            .flatten()
            .any(|u| u.starts_with("https://"))
    });
    crate::auth::init_webhook_tls(s.webhook_ca.as_deref(), https_webhook).map_err(|why| {
        ServerError::Tls {
            key: "server.webhook_ca",
            path: s
                .webhook_ca
                .clone()
                .unwrap_or_else(|| PathBuf::from("not set")),
            why,
        }
    })?;
    Ok(tls)
}

/// Read `server.tls_cert` (PEM chain, leaf first) and `server.tls_key`
/// (PEM PKCS#8, PKCS#1 or SEC1) into a TLS acceptor. Errors name the key
/// and the file.
pub fn load_tls(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read = |k: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| ServerError::TlsFile {
            key: k,
            path: path.to_path_buf(),
            source,
        })
    };
    let bad = |k: &'static str, path: &Path, why: String| ServerError::Tls {
        key: k,
        path: path.to_path_buf(),
        why,
    };
    let cert_pem = read("server.tls_cert", cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("server.tls_cert", cert, format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(bad(
            "server.tls_cert",
            cert,
            "no PEM certificate (BEGIN CERTIFICATE) found".into(),
        ));
    }
    let key_pem = read("server.tls_key", key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        bad(
            "server.tls_key",
            key,
            format!(
                "no usable PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY): {e}"
            ),
        )
    })?;
    // The ring provider, explicitly: no process-wide default to install.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("server.tls_cert", cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            bad(
                "server.tls_key",
                key,
                format!("does not fit server.tls_cert ({}): {e}", cert.display()),
            )
        })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}

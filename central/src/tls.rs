//! TLS listeners: gRPC (tonic, optional client certificates) and REST (rustls + hyper).

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::v1::agent_server::AgentServer;
use cairn_proto::v1::enrollment_server::EnrollmentServer;
use cairn_proto::MAX_MESSAGE_BYTES;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::grpc::{AgentService, EnrollmentService};
use crate::{Shared, StartError};

/// A TLS handshake that has not finished by then is dropped (slow or garbage clients).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve the agent gRPC API until shutdown. Enrollment needs no client certificate; the Agent
/// service checks for one itself, so client auth is optional at the TLS layer.
pub(crate) fn serve_grpc(
    listener: TcpListener,
    shared: Arc<Shared>,
    cert_pem: &str,
    key_pem: &str,
    mut shutdown: watch::Receiver<bool>,
) -> Result<impl std::future::Future<Output = ()>, StartError> {
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .client_ca_root(Certificate::from_pem(shared.ca.cert_pem()))
        .client_auth_optional(true)
        .timeout(HANDSHAKE_TIMEOUT);
    let router = Server::builder()
        .tls_config(tls)
        .map_err(|e| StartError::Tls(e.to_string()))?
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(
            EnrollmentServer::new(EnrollmentService(shared.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            AgentServer::new(AgentService(shared))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(cairn_proto::MAX_BUNDLE_MESSAGE_BYTES),
        );
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    Ok(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
            tracing::error!(error = %e, "gRPC server stopped with an error");
        }
    })
}

/// rustls config for the REST listener.
pub(crate) fn rest_tls_config(
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, StartError> {
    let certs = rustls_pki_types::pem::PemObject::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<rustls_pki_types::CertificateDer<'static>>, _>>()
        .map_err(|e| StartError::Tls(format!("server certificate: {e}")))?;
    let key = <rustls_pki_types::PrivateKeyDer<'static> as rustls_pki_types::pem::PemObject>::from_pem_slice(
        key_pem.as_bytes(),
    )
    .map_err(|e| StartError::Tls(format!("server key: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StartError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| StartError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serve the REST router over TLS until shutdown. Each connection is its own task, so a broken
/// client never affects another.
pub(crate) async fn serve_rest(
    listener: TcpListener,
    router: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "REST accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let acceptor = acceptor.clone();
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "REST TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "REST TLS handshake timed out");
                    return;
                }
            };
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, error = %e, "REST connection ended with an error");
            }
        });
    }
}

//! TLS listeners: gRPC (tonic, optional client certificates) and REST (rustls + hyper).

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::v1::agent_server::AgentServer;
use cairn_proto::v1::enrollment_server::EnrollmentServer;
use cairn_proto::MAX_MESSAGE_BYTES;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;

use crate::grpc::{AgentService, EnrollmentService};
use crate::listen::{Deadlines, SourceCap, Watched, FIRST_BYTES_TIMEOUT, HANDSHAKE_TIMEOUT};
use crate::{Shared, StartError};

/// How the listeners treat connections: per-source caps and the REST idle time (from
/// [`crate::config::CentralConfig`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenLimits {
    /// Connections one address may hold on the gRPC listener (0: no cap).
    pub grpc_per_source: u32,
    /// Connections one address may hold on the REST listener (0: no cap).
    pub rest_per_source: u32,
    /// A REST connection with no byte either way for this long is closed.
    pub rest_idle: Duration,
}

/// Serve the agent gRPC API until shutdown. Enrollment needs no client certificate; the Agent
/// service checks for one itself, so client auth is optional at the TLS layer. Connections
/// come through [`accept_tls`] (source cap, handshake and first-bytes deadlines); idle streams
/// are watched by HTTP/2 keepalive pings instead of an idle deadline (a device's stream is
/// quiet between heartbeats).
pub(crate) fn serve_grpc(
    listener: TcpListener,
    shared: Arc<Shared>,
    cert_pem: &str,
    key_pem: &str,
    limits: ListenLimits,
    mut shutdown: watch::Receiver<bool>,
) -> Result<impl std::future::Future<Output = ()>, StartError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(shared.ca.cert_pem().as_bytes()) {
        let cert = cert.map_err(|e| StartError::Tls(format!("fleet CA certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| StartError::Tls(format!("fleet CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| StartError::Tls(format!("client certificate verifier: {e}")))?;
    let (certs, key) = server_identity(cert_pem, key_pem)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let router = Server::builder()
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
    let (tx, rx) = mpsc::channel::<Result<Connection, std::io::Error>>(64);
    let accepting = accept_tls(
        listener,
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        SourceCap::new(limits.grpc_per_source),
        Deadlines {
            first_bytes: FIRST_BYTES_TIMEOUT,
            idle: None,
        },
        "gRPC",
        shutdown.clone(),
        move |connection, _peer| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Ok(connection)).await;
            }
        },
    );
    Ok(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        let serving = router.serve_with_incoming_shutdown(ReceiverStream::new(rx), stop);
        let (served, ()) = tokio::join!(serving, accepting);
        if let Err(e) = served {
            tracing::error!(error = %e, "gRPC server stopped with an error");
        }
    })
}

/// A TLS connection the listeners hand to HTTP.
type Connection = Watched<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

/// Accept TCP connections until shutdown: a source past its cap is closed at once; the others
/// get [`HANDSHAKE_TIMEOUT`] for TLS and are then handed to `serve` watched by `rules`. Each
/// connection is its own task, so a broken client never affects another.
async fn accept_tls<F, Fut>(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    cap: Arc<SourceCap>,
    rules: Deadlines,
    what: &'static str,
    mut shutdown: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(Connection, std::net::SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let mut refused: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Some(slot) = cap.admit(peer.ip()) else {
            refused += 1;
            // One line per 1000 refusals: a flood does not flood the log as well.
            if refused % 1000 == 1 {
                tracing::warn!(%peer, listener = what, refused, "refused a connection: its address holds the most connections one source may");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let serve = serve.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, listener = what, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, listener = what, "TLS handshake timed out");
                    return;
                }
            };
            serve(Watched::new(tls, slot, rules), peer).await;
        });
    }
}

/// The server certificate chain and key from PEM.
fn server_identity(
    cert_pem: &str,
    key_pem: &str,
) -> Result<
    (
        Vec<rustls_pki_types::CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    ),
    StartError,
> {
    let certs = rustls_pki_types::pem::PemObject::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<rustls_pki_types::CertificateDer<'static>>, _>>()
        .map_err(|e| StartError::Tls(format!("server certificate: {e}")))?;
    let key = <rustls_pki_types::PrivateKeyDer<'static> as rustls_pki_types::pem::PemObject>::from_pem_slice(
        key_pem.as_bytes(),
    )
    .map_err(|e| StartError::Tls(format!("server key: {e}")))?;
    Ok((certs, key))
}

/// rustls config for the REST listener.
pub(crate) fn rest_tls_config(
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, StartError> {
    let (certs, key) = server_identity(cert_pem, key_pem)?;
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

/// Serve the REST router over TLS until shutdown, through [`accept_tls`]; an HTTP/1 request
/// head must arrive within [`FIRST_BYTES_TIMEOUT`], and a connection with no byte either way
/// and no request being answered for `limits.rest_idle` is closed.
pub(crate) async fn serve_rest(
    listener: TcpListener,
    router: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    limits: ListenLimits,
    shutdown: watch::Receiver<bool>,
) {
    accept_tls(
        listener,
        tokio_rustls::TlsAcceptor::from(tls),
        SourceCap::new(limits.rest_per_source),
        Deadlines {
            first_bytes: FIRST_BYTES_TIMEOUT,
            idle: Some(limits.rest_idle),
        },
        "REST",
        shutdown,
        move |connection, peer| {
            // Counts the requests being answered, so a long one (a placement over a large
            // fleet) is not cut as idle while central computes it.
            let busy = connection.busy();
            let router = router.clone();
            let service = hyper::service::service_fn(move |request| {
                let answering = busy.enter();
                let answer = tower::ServiceExt::oneshot(router.clone(), request);
                async move {
                    let response = answer.await;
                    drop(answering);
                    response
                }
            });
            async move {
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(FIRST_BYTES_TIMEOUT);
                if let Err(e) = builder
                    .serve_connection(TokioIo::new(connection), service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "REST connection ended with an error");
                }
            }
        },
    )
    .await;
}

//! gRPC channels to central over the agent's own rustls configuration.
//!
//! tonic only sees a plain `http://host:port` endpoint; our connector does the TCP connect and the
//! TLS handshake (ALPN `h2`, server name from `central_endpoint`, trust root = only the configured
//! CA, optional client certificate signed by the device key). This keeps the TPM key usable for
//! client auth and keeps the system trust store out of the picture.
//!
//! Certificate validity is checked against the agent's [`Clock`], except on the one channel made
//! for asking central's time ([`CentralDialer::time_channel`]): there the chain and the name are
//! checked as always, at a moment when every certificate of the chain is valid, whatever the
//! device's clock says.

use std::io;
use std::path::{Path, PathBuf};

use cairn_io::{FileError, PathContext};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::v1::agent_client::AgentClient;
use cairn_proto::v1::enrollment_client::EnrollmentClient;
use cairn_proto::MAX_MESSAGE_BYTES;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::{debug, info_span, Instrument};

use crate::clock::Clock;
use crate::config::{AgentConfig, CentralAddress, FieldError};
use crate::key::DeviceKey;
use crate::tls_key::DeviceCertResolver;

/// Limit for TCP connect plus TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit for one unary call (Enroll, Renew, Ping) and for opening the Sync stream.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 keep-alive ping period; a dead connection is noticed within this plus the timeout.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a keep-alive ping may stay unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A channel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The CA file could not be read.
    #[error("{0}; check `ca_cert` in the agent config")]
    ReadCa(#[source] FileError),
    /// The CA file holds no usable certificate.
    #[error(
        "central's CA file {path} holds no usable PEM certificate ({reason}); check `ca_cert`"
    )]
    BadCa {
        /// The CA file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `central_endpoint` could not be used.
    #[error("central_endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The configured endpoint.
        endpoint: String,
        /// What is wrong.
        #[source]
        reason: FieldError,
    },
    /// rustls refused the TLS configuration (e.g. certificate not matching the device key).
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    /// TCP connect, TLS handshake or HTTP/2 setup failed.
    #[error("cannot connect to central at {endpoint}: {reason}; check the network, the endpoint and that central is running")]
    Connect {
        /// The configured endpoint.
        endpoint: String,
        /// The transport error chain.
        reason: String,
    },
}

/// Everything needed to dial central, built once and reused for every connection.
#[derive(Clone)]
pub struct CentralDialer {
    endpoint: String,
    address: CentralAddress,
    server_name: ServerName<'static>,
    roots: Arc<RootCertStore>,
    clock: Clock,
}

impl std::fmt::Debug for CentralDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CentralDialer")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl CentralDialer {
    /// Reads the CA (blocking file read) and parses the endpoint from `config`; certificates are
    /// checked against `clock`.
    pub fn from_config(config: &AgentConfig, clock: Clock) -> Result<Self, ChannelError> {
        let endpoint = config.central_endpoint.clone();
        let address = config
            .central_address()
            .map_err(|reason| ChannelError::Endpoint {
                endpoint: endpoint.clone(),
                reason,
            })?;
        let roots = load_ca_roots(&config.ca_cert)?;
        Self::new(endpoint, address, roots, clock)
    }

    /// A dialer for `address` trusting only `roots`, checking validity against `clock`.
    pub fn new(
        endpoint: String,
        address: CentralAddress,
        roots: RootCertStore,
        clock: Clock,
    ) -> Result<Self, ChannelError> {
        let server_name =
            ServerName::try_from(address.host.clone()).map_err(|e| ChannelError::Endpoint {
                endpoint: endpoint.clone(),
                reason: FieldError::new(
                    "central_endpoint",
                    format!("has a host that is not a valid TLS server name: {e}"),
                ),
            })?;
        Ok(CentralDialer {
            endpoint,
            address,
            server_name,
            roots: Arc::new(roots),
            clock,
        })
    }

    /// The clock certificates are checked against.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The configured endpoint (for logs).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A TLS-only channel (no client certificate) for the Enrollment service.
    pub async fn enrollment_channel(&self) -> Result<Channel, ChannelError> {
        let tls = self.tls_config(None)?;
        self.connect(tls)
            .instrument(info_span!("central.connect", mtls = false))
            .await
    }

    /// An mTLS channel presenting `cert_der` with `key` for the Agent service.
    pub async fn device_channel(
        &self,
        cert_der: Vec<u8>,
        key: DeviceKey,
    ) -> Result<Channel, ChannelError> {
        let resolver = DeviceCertResolver::new(cert_der, key);
        resolver.check_keys_match()?;
        let tls = self.tls_config(Some(Arc::new(resolver)))?;
        self.connect(tls)
            .instrument(info_span!("central.connect", mtls = true))
            .await
    }

    /// A TLS-only channel for `Enrollment.Time` that checks central's chain to the fleet CA and
    /// its name but not the validity period (see [`AnyTimeVerifier`]), and the certificate central
    /// presented, to check the time answer's signature with. Use it for that call only.
    pub async fn time_channel(&self) -> Result<(Channel, SeenCertificate), ChannelError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .map_err(|e| ChannelError::Tls(rustls::Error::General(e.to_string())))?;
        let seen = SeenCertificate::default();
        let verifier = AnyTimeVerifier {
            inner,
            seen: seen.clone(),
        };
        let mut tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let channel = self
            .connect(tls)
            .instrument(info_span!("central.connect", mtls = false, any_time = true))
            .await?;
        Ok((channel, seen))
    }

    fn tls_config(
        &self,
        client_cert: Option<Arc<dyn ResolvesClientCert>>,
    ) -> Result<ClientConfig, ChannelError> {
        let builder = ClientConfig::builder_with_details(
            Arc::new(rustls::crypto::ring::default_provider()),
            Arc::new(self.clock.clone()),
        )
        .with_safe_default_protocol_versions()?
        .with_root_certificates(self.roots.clone());
        let mut config = match client_cert {
            Some(resolver) => builder.with_client_cert_resolver(resolver),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    async fn connect(&self, tls: ClientConfig) -> Result<Channel, ChannelError> {
        let connect_err = |reason: String| ChannelError::Connect {
            endpoint: self.endpoint.clone(),
            reason,
        };
        // tonic speaks plain h2 to whatever the connector returns; the URI only feeds :authority.
        let authority = match self.server_name {
            ServerName::IpAddress(_) if self.address.host.contains(':') => {
                format!("[{}]:{}", self.address.host, self.address.port)
            }
            _ => format!("{}:{}", self.address.host, self.address.port),
        };
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| connect_err(format!("invalid endpoint URI: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let connector = TlsConnector::from(Arc::new(tls));
        let server_name = self.server_name.clone();
        let host = self.address.host.clone();
        let port = self.address.port;
        let dial = tower::service_fn(move |_uri: Uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            let host = host.clone();
            async move {
                let tcp = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    TcpStream::connect((host.as_str(), port)),
                )
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out"))??;
                tcp.set_nodelay(true)?;
                let tls =
                    tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(server_name, tcp))
                        .await
                        .map_err(|_| {
                            io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                        })??;
                let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
                if alpn.as_deref() != Some(b"h2") {
                    return Err(io::Error::other(format!(
                        "central did not negotiate HTTP/2 (ALPN {:?})",
                        alpn.map(|a| String::from_utf8_lossy(&a).into_owned())
                    )));
                }
                debug!("TLS session established");
                Ok::<_, io::Error>(TokioIo::new(tls))
            }
        });
        endpoint
            .connect_with_connector(dial)
            .await
            .map_err(|e| connect_err(error_chain(&e)))
    }
}

/// The end-entity certificate the server presented on a [`CentralDialer::time_channel`].
#[derive(Debug, Clone, Default)]
pub struct SeenCertificate(Arc<std::sync::Mutex<Option<CertificateDer<'static>>>>);

impl SeenCertificate {
    /// The certificate, once the handshake verified it.
    pub fn get(&self) -> Option<CertificateDer<'static>> {
        self.0.lock().expect("certificate lock").clone()
    }
}

/// Verifies central's chain to the fleet CA and its name like rustls always does, but at a moment
/// when every presented certificate is valid (the latest `notBefore` of the chain) instead of
/// the device's clock, which may be years off. A chain whose certificates are never valid at the
/// same moment is refused. Used only for asking central's time, whose answer is then signed.
#[derive(Debug)]
struct AnyTimeVerifier {
    inner: Arc<WebPkiServerVerifier>,
    seen: SeenCertificate,
}

/// The latest `notBefore` of `certs` if it is not after their earliest `notAfter`.
fn common_validity_start(certs: &[&CertificateDer<'_>]) -> Result<UnixTime, rustls::Error> {
    let mut start = i64::MIN;
    let mut end = i64::MAX;
    for cert in certs {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        start = start.max(parsed.validity().not_before.timestamp());
        end = end.min(parsed.validity().not_after.timestamp());
    }
    if start > end || start < 0 {
        return Err(rustls::Error::General(
            "central's certificate chain is never valid at one moment".into(),
        ));
    }
    Ok(UnixTime::since_unix_epoch(Duration::from_secs(
        start.unsigned_abs(),
    )))
}

impl ServerCertVerifier for AnyTimeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity];
        chain.extend(intermediates);
        let at = common_validity_start(&chain)?;
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            at,
        )?;
        *self.seen.0.lock().expect("certificate lock") = Some(end_entity.clone().into_owned());
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Reads a PEM file of one or more CA certificates into a root store (blocking).
pub fn load_ca_roots(path: &Path) -> Result<RootCertStore, ChannelError> {
    let pem = std::fs::read(path)
        .at("read central's CA certificate", path)
        .map_err(ChannelError::ReadCa)?;
    let bad = |reason: String| ChannelError::BadCa {
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("invalid PEM: {e}")))?;
    for item in certs {
        roots.add(item).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    Ok(roots)
}

/// An error and its sources joined with ": " (tonic's transport errors hide the cause otherwise).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// An Enrollment client with the protocol's message size limits.
pub fn enrollment_client(channel: Channel) -> EnrollmentClient<Channel> {
    EnrollmentClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// An Agent client with the protocol's message size limits.
pub fn agent_client(channel: Channel) -> AgentClient<Channel> {
    AgentClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_loading_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = load_ca_roots(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        assert!(matches!(
            load_ca_roots(&empty),
            Err(ChannelError::BadCa { .. })
        ));
        let ca = rcgen::generate_simple_self_signed(vec!["central".into()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        assert_eq!(load_ca_roots(&good).unwrap().len(), 1);
    }
}

//! PostgreSQL over TLS on rustls, with libpq's `sslmode` meanings.
//!
//! The client library parses only `sslmode=disable|prefer|require` and checks no certificate
//! itself: the connector it is handed decides. [`parse_url`] reads `sslmode` and `sslrootcert`
//! out of a `postgres://` URL as libpq does and builds that connector:
//!
//! | sslmode       | TLS                          | certificate checked                      |
//! |---------------|------------------------------|------------------------------------------|
//! | `disable`     | never                        | –                                        |
//! | `prefer` (default) | when the server offers it | chain, only when `sslrootcert` is given |
//! | `require`     | always                       | chain, only when `sslrootcert` is given  |
//! | `verify-ca`   | always                       | chain to `sslrootcert`                   |
//! | `verify-full` | always                       | chain to `sslrootcert` and the host name |
//!
//! `sslrootcert` names a PEM file of CA certificates. Over TLS the login binds itself to the
//! server's certificate (SCRAM-SHA-256-PLUS, `tls-server-end-point`), so a relay in the middle
//! cannot pass a password exchange on even when no certificate is checked.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use postgres::Socket;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most CA certificates read from an `sslrootcert` file.
const MAX_ROOT_CERTS: usize = 64;
/// Largest `sslrootcert` file read.
const MAX_ROOT_FILE_BYTES: u64 = 1 << 20;

/// libpq's `sslmode`, less `allow` (plain first, TLS if refused), which protects nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it (libpq's default).
    Prefer,
    /// Always TLS.
    Require,
    /// Always TLS, the chain checked against `sslrootcert`.
    VerifyCa,
    /// Always TLS, the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode=allow is not supported (it falls back to plain text); use prefer, require, verify-ca or verify-full".into(),
                )
            }
            _ => {
                return Err(format!(
                    "sslmode={value:?} is not one of disable, prefer, require, verify-ca, verify-full"
                ))
            }
        })
    }

    /// The client library's own mode for this one (it knows no verify-*).
    fn client_mode(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require | Self::VerifyCa | Self::VerifyFull => "require",
        }
    }
}

/// A `postgres://` URL read: the client's configuration and, unless `sslmode=disable`, the
/// TLS connector to hand it.
pub struct Target {
    /// The client configuration (sslmode mapped onto the client's own three).
    pub config: postgres::Config,
    /// The mode asked for.
    pub mode: SslMode,
    /// The connector; `None` for `disable`.
    pub tls: Option<RustlsConnect>,
}

/// Read `url`: `sslmode` and `sslrootcert` as libpq does (the CA file is read now), the rest
/// by the client library. The error says what is wrong and never repeats the URL (it may hold
/// a password).
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut mode = None;
    let mut root_file = None;
    let mut rest: Vec<&str> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| format!("the value of {key} is not UTF-8"))?;
        match key {
            "sslmode" => mode = Some(SslMode::parse(&decoded)?),
            "sslrootcert" => root_file = Some(PathBuf::from(decoded.as_ref())),
            _ => rest.push(pair),
        }
    }
    let mode = mode.unwrap_or(SslMode::Prefer);
    let client_mode = format!("sslmode={}", mode.client_mode());
    rest.push(&client_mode);
    let config: postgres::Config = format!("{base}?{}", rest.join("&"))
        .parse()
        .map_err(|e| format!("it does not parse ({e})"))?;
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_file.is_none() {
        return Err(format!(
            "sslmode={} needs sslrootcert=<a PEM file of the CA certificates that sign the server's>",
            if mode == SslMode::VerifyCa { "verify-ca" } else { "verify-full" }
        ));
    }
    let tls = match mode {
        SslMode::Disable => None,
        _ => {
            let roots = root_file.as_deref().map(read_roots).transpose()?;
            Some(RustlsConnect::new(mode, roots)?)
        }
    };
    Ok(Target { config, mode, tls })
}

/// The CA certificates in the PEM file at `path`.
fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let meta =
        std::fs::metadata(path).map_err(|e| format!("sslrootcert {shown} cannot be read: {e}"))?;
    if meta.len() > MAX_ROOT_FILE_BYTES {
        return Err(format!(
            "sslrootcert {shown} is {} bytes; a CA file is at most {MAX_ROOT_FILE_BYTES}",
            meta.len()
        ));
    }
    let pem =
        std::fs::read(path).map_err(|e| format!("sslrootcert {shown} cannot be read: {e}"))?;
    let mut store = RootCertStore::empty();
    for (n, cert) in rustls_pemfile_certs(&pem).enumerate() {
        if n == MAX_ROOT_CERTS {
            return Err(format!(
                "sslrootcert {shown} holds more than {MAX_ROOT_CERTS} certificates"
            ));
        }
        let cert = cert.map_err(|e| format!("sslrootcert {shown}: {e}"))?;
        store
            .add(cert)
            .map_err(|e| format!("sslrootcert {shown}: a certificate is not a usable CA ({e})"))?;
    }
    if store.is_empty() {
        return Err(format!(
            "sslrootcert {shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(store)
}

/// The certificates of a PEM text.
fn rustls_pemfile_certs(
    pem: &[u8],
) -> impl Iterator<Item = Result<CertificateDer<'static>, String>> + '_ {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem).map(|c| c.map_err(|e| format!("bad PEM ({e:?})")))
}

/// A TLS connector for the client library, on rustls.
#[derive(Clone)]
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
}

impl RustlsConnect {
    fn new(mode: SslMode, roots: Option<RootCertStore>) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = roots
            .map(|roots| {
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("sslrootcert cannot be used: {e}"))
            })
            .transpose()?;
        let verifier = Arc::new(Verifier {
            webpki,
            check_name: mode == SslMode::VerifyFull,
            provider: provider.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up failed: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // PostgreSQL 17's direct TLS requires it; earlier servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

impl MakeTlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type TlsConnect = RustlsHandshake;
    type Error = rustls::Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsHandshake, rustls::Error> {
        let name = ServerName::try_from(host)
            .map_err(|_| rustls::Error::General(format!("{host:?} is not a TLS server name")))?
            .to_owned();
        Ok(RustlsHandshake {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
        })
    }
}

/// One handshake to come.
pub struct RustlsHandshake {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsHandshake {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        Box::pin(async move {
            let stream = self.connector.connect(self.name, socket).await?;
            Ok(RustlsStream(stream))
        })
    }
}

/// A TLS connection to PostgreSQL.
pub struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| server_end_point(cert))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

/// RFC 5929's `tls-server-end-point`: the server certificate hashed with its signature's hash
/// (SHA-256 for MD5 and SHA-1). `None` where no hash is defined (Ed25519, RSA-PSS): the login
/// then runs without the binding rather than with a wrong one.
fn server_end_point(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use x509_parser::oid_registry as oid;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let alg = &parsed.signature_algorithm.algorithm;
    let digest = if *alg == oid::OID_PKCS1_SHA384WITHRSA || *alg == oid::OID_SIG_ECDSA_WITH_SHA384 {
        &ring::digest::SHA384
    } else if *alg == oid::OID_PKCS1_SHA512WITHRSA || *alg == oid::OID_SIG_ECDSA_WITH_SHA512 {
        &ring::digest::SHA512
    } else if [
        oid::OID_PKCS1_SHA256WITHRSA,
        oid::OID_SIG_ECDSA_WITH_SHA256,
        oid::OID_PKCS1_SHA1WITHRSA,
        oid::OID_PKCS1_MD5WITHRSAENC,
    ]
    .contains(alg)
    {
        &ring::digest::SHA256
    } else {
        return None;
    };
    Some(ring::digest::digest(digest, cert).as_ref().to_vec())
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// What a connection checks of the server's certificate: the chain against the CA file when
/// there is one (the host name too for verify-full), else nothing (libpq's `prefer` and
/// `require`). The handshake signatures are checked either way, so the session is with the
/// holder of that certificate's key.
#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            // verify-ca: webpki checks the name last, after the chain, so this error means
            // the chain is good and only the name differs.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_map_onto_the_client_and_verify_needs_a_ca() {
        let t = parse_url("postgres://u:p@127.0.0.1:5432/db").unwrap();
        assert_eq!(t.mode, SslMode::Prefer);
        assert!(t.tls.is_some());
        let t = parse_url("postgres://u:p@127.0.0.1:5432/db?sslmode=disable").unwrap();
        assert!(t.tls.is_none());
        assert_eq!(t.config.get_ssl_mode(), postgres::config::SslMode::Disable);
        let err = parse_url("postgres://u:hunter2@h/db?sslmode=verify-full")
            .err()
            .unwrap();
        assert!(err.contains("sslrootcert"), "{err}");
        let err = parse_url("postgres://u:hunter2@h/db?sslmode=allow")
            .err()
            .unwrap();
        assert!(err.contains("allow") && !err.contains("hunter2"), "{err}");
        let err = parse_url("postgres://u:hunter2@h/db?sslmode=bogus")
            .err()
            .unwrap();
        assert!(err.contains("bogus") && !err.contains("hunter2"), "{err}");
        let err =
            parse_url("postgres://u:hunter2@h/db?sslmode=verify-ca&sslrootcert=%2Fnone%2Fca.pem")
                .err()
                .unwrap();
        assert!(
            err.contains("/none/ca.pem") && !err.contains("hunter2"),
            "{err}"
        );
        // Other options pass on to the client library.
        let t = parse_url("postgres://u:p@h/db?application_name=x&sslmode=require").unwrap();
        assert_eq!(t.config.get_ssl_mode(), postgres::config::SslMode::Require);
        assert_eq!(t.config.get_application_name(), Some("x"));
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let url = format!(
            "postgres://u:p@h/db?sslmode=verify-full&sslrootcert={}",
            path.display()
        );
        let err = parse_url(&url).err().unwrap();
        assert!(err.contains("no PEM certificate"), "{err}");
        let ca = rcgen::generate_simple_self_signed(vec!["db.example".into()]).unwrap();
        std::fs::write(&path, ca.cert.pem()).unwrap();
        assert_eq!(parse_url(&url).unwrap().mode, SslMode::VerifyFull);
    }

    #[test]
    fn the_end_point_hash_follows_the_signature() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let hash = server_end_point(cert.der()).unwrap();
        assert_eq!(
            hash,
            ring::digest::digest(&ring::digest::SHA384, cert.der()).as_ref()
        );
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(server_end_point(cert.der()), None);
    }
}

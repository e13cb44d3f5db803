//! Device identities: a software P-256 key per device, enrolled through the real Enrollment RPC,
//! and an on-disk cache so repeated benchmark runs skip enrollment.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use cairn_proto::v1::enrollment_client::EnrollmentClient;
use cairn_proto::v1::{EnrollRequest, EnrollStatus, HardwareFacts};
use serde::{Deserialize, Serialize};

use crate::connect::{self, ConnectError};

/// Enrollment channels shared by all enrolling devices (HTTP/2 multiplexes the calls).
const ENROLL_CHANNELS: usize = 4;

/// Why identities could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Key or CSR generation failed.
    #[error("could not make a key or CSR for device {serial}: {source}")]
    Key {
        /// The device serial.
        serial: String,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// No channel to central.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Central refused or failed the Enroll call.
    #[error("central refused to enroll device {serial}: {status}; check the token (policy auto, enough uses)")]
    Refused {
        /// The device serial.
        serial: String,
        /// The gRPC status.
        status: tonic::Status,
    },
    /// Central answered pending: the token is not `auto`.
    #[error("device {serial} is pending approval; the simulator needs an enrollment token with policy `auto`")]
    Pending {
        /// The device serial.
        serial: String,
    },
    /// Reading or writing the cache failed.
    #[error("identity cache {path}: {source}; delete it to enroll again")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// The I/O or parse failure.
        source: std::io::Error,
    },
}

/// What a simulated device needs to talk to central.
#[derive(Clone, Serialize, Deserialize)]
pub struct DeviceIdentity {
    /// Device id central assigned.
    pub device_id: String,
    /// PKCS#8 DER of its key, base64.
    key_pkcs8: String,
    /// DER of its certificate, base64.
    cert_der: String,
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl DeviceIdentity {
    /// The tonic client identity (certificate and key as PEM).
    pub fn tls_identity(&self) -> tonic::transport::Identity {
        let b64 = base64::engine::general_purpose::STANDARD;
        let cert = b64
            .decode(&self.cert_der)
            .expect("cached certificate is base64");
        let key = b64.decode(&self.key_pkcs8).expect("cached key is base64");
        tonic::transport::Identity::from_pem(
            pem::encode(&pem::Pem::new("CERTIFICATE", cert)),
            pem::encode(&pem::Pem::new("PRIVATE KEY", key)),
        )
    }
}

/// Enroll new devices with fleet indices `indices` (serials `{prefix}-{i}`, results in that
/// order) with an `auto` token, at most `concurrency` calls in flight.
pub async fn enroll_many(
    grpc: SocketAddr,
    ca_pem: &str,
    token: &str,
    prefix: &str,
    indices: impl IntoIterator<Item = usize>,
    concurrency: usize,
) -> Result<Vec<DeviceIdentity>, IdentityError> {
    let mut clients = Vec::new();
    for i in 0..ENROLL_CHANNELS {
        clients.push(EnrollmentClient::new(
            connect::channel(grpc, connect::source_ip(i), ca_pem, None).await?,
        ));
    }
    let token: Arc<str> = token.into();
    let prefix: Arc<str> = prefix.into();
    use futures::stream::{StreamExt, TryStreamExt};
    futures::stream::iter(indices)
        .map(|i| {
            let mut client = clients[i % ENROLL_CHANNELS].clone();
            let token = token.clone();
            let serial = format!("{prefix}-{i}");
            async move { enroll_one(&mut client, &token, serial).await }
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await
}

async fn enroll_one(
    client: &mut EnrollmentClient<tonic::transport::Channel>,
    token: &str,
    serial: String,
) -> Result<DeviceIdentity, IdentityError> {
    let key_err = |serial: &str| {
        let serial = serial.to_owned();
        move |source| IdentityError::Key { serial, source }
    };
    let key = rcgen::KeyPair::generate().map_err(key_err(&serial))?;
    let csr = rcgen::CertificateParams::new(vec![serial.clone()])
        .map_err(key_err(&serial))?
        .serialize_request(&key)
        .map_err(key_err(&serial))?;
    let request = EnrollRequest {
        token: token.to_owned(),
        csr_der: csr.der().to_vec(),
        facts: Some(HardwareFacts {
            serial: serial.clone(),
            tpm_ek_sha256: String::new(),
            hostname: format!("sim-{serial}"),
            agent_version: "cairn-sim".into(),
            os_version: "sim".into(),
            key_storage: "software".into(),
        }),
        ..Default::default()
    };
    let response = client
        .enroll(request)
        .await
        .map_err(|status| IdentityError::Refused {
            serial: serial.clone(),
            status,
        })?
        .into_inner();
    if response.status != EnrollStatus::Approved as i32 {
        return Err(IdentityError::Pending { serial });
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(DeviceIdentity {
        device_id: response.device_id,
        key_pkcs8: b64.encode(key.serialize_der()),
        cert_der: b64.encode(&response.certificate_der),
    })
}

/// Load cached identities (one JSON object a line); empty when the file does not exist.
pub fn load_cache(path: &Path) -> Result<Vec<DeviceIdentity>, IdentityError> {
    let cache_err = |source| IdentityError::Cache {
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(cache_err(e)),
    };
    let mut out = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(cache_err)?;
        out.push(serde_json::from_str(&line).map_err(|e| cache_err(e.into()))?);
    }
    Ok(out)
}

/// Append identities to the cache.
pub fn append_cache(path: &Path, identities: &[DeviceIdentity]) -> Result<(), IdentityError> {
    let cache_err = |source| IdentityError::Cache {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(cache_err)?;
    let mut out = std::io::BufWriter::new(file);
    for identity in identities {
        serde_json::to_writer(&mut out, identity).map_err(|e| cache_err(e.into()))?;
        out.write_all(b"\n").map_err(cache_err)?;
    }
    out.flush().map_err(cache_err)
}

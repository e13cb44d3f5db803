//! A stand-in for central whose TLS certificate, issued by the real fleet CA, expired years ago
//! (a real central always issues itself a valid one, so this is the only way to face a device
//! with one). It answers `Enrollment.Time` honestly, signed with that certificate's key, refuses
//! `Enroll`, and records every TLS handshake a client broke off, with the reason.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cairn_central::ca::FleetCa;
use cairn_central::time::TimeSigner;
use cairn_proto::v1::enrollment_server::{Enrollment, EnrollmentServer};
use cairn_proto::v1::{EnrollRequest, EnrollResponse, TimeRequest, TimeResponse};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

/// The stand-in, serving on `127.0.0.1:port` until dropped.
pub struct ExpiredCentral {
    /// Its port on the host's loopback.
    pub port: u16,
    refused: Arc<Mutex<Vec<String>>>,
    answered: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

struct TimeOnly {
    signer: TimeSigner,
    answered: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl Enrollment for TimeOnly {
    async fn enroll(&self, _: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        Err(Status::unavailable(
            "this stand-in central only tells the time",
        ))
    }

    async fn time(&self, request: Request<TimeRequest>) -> Result<Response<TimeResponse>, Status> {
        let now = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let answer = self
            .signer
            .answer(request.get_ref(), now as i64)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.answered.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(answer))
    }
}

impl ExpiredCentral {
    /// Serves with a certificate for `names` from the fleet CA in `data_dir` (a central's), valid
    /// from five to four years ago.
    pub async fn start(data_dir: &Path, names: &[String]) -> ExpiredCentral {
        let ca = FleetCa::load_or_create(data_dir).expect("the fleet CA loads");
        let now = OffsetDateTime::now_utc();
        let (cert_pem, key_pem) = ca
            .issue_server_certificate_valid(
                names,
                now - Duration::days(5 * 365),
                now - Duration::days(4 * 365),
            )
            .expect("an expired server certificate");
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let refused = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(AtomicU64::new(0));
        let (streams, incoming) = tokio::sync::mpsc::channel(16);
        let accept = {
            let refused = refused.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    let streams = streams.clone();
                    let refused = refused.clone();
                    tokio::spawn(async move {
                        match acceptor.accept(tcp).await {
                            Ok(tls) => {
                                let _ = streams.send(Ok::<_, std::io::Error>(tls)).await;
                            }
                            Err(e) => refused.lock().unwrap().push(e.to_string()),
                        }
                    });
                }
            })
        };
        let service = TimeOnly {
            signer: TimeSigner::from_key_pem(&key_pem).unwrap(),
            answered: answered.clone(),
        };
        let serve = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(EnrollmentServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(incoming))
                .await;
        });
        ExpiredCentral {
            port,
            refused,
            answered,
            tasks: vec![accept, serve],
        }
    }

    /// Why clients broke off handshakes so far (rustls' words, e.g. a received alert).
    pub fn refusals(&self) -> Vec<String> {
        self.refused.lock().unwrap().clone()
    }

    /// How many `Time` calls it answered.
    pub fn time_answers(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for ExpiredCentral {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

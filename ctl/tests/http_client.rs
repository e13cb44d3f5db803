//! The client against a tiny local HTTP(S) server with canned answers: CA trust, the bearer
//! token, error bodies and deadlines. Real central is exercised by the workspace's host
//! integration tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use cairn_api::{ClaimKind, CreateClaim, DeviceStatus};
use cairnctl::client::{BearerToken, CentralCa, Client, Connection, CtlError};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

const TOKEN: &str = "cat_test_token";

const DEVICES: &str = r#"{"devices":[{"id":"dev_1","status":"active","serial":"SN1","tpm_ek_sha256":"","hostname":"edge-1","key_storage":"software","agent_version":"0.1.0","os_version":"1","token_id":"tok_1","created_at":"2025-01-01T00:00:00Z","approved_at":null,"last_seen_at":null,"online":false,"cert_serial":null,"cert_expires_at":null,"desired_revision":0,"config":{},"desired_os":null,"site":null,"labels":{},"host":null}]}"#;

/// A test CA and a server certificate it signed.
struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "cairnctl test CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn pki(server_names: &[&str]) -> Pki {
    let ca = ca();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(
        server_names
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server: Arc::new(server),
    }
}

/// What the server does with the one connection it accepts.
enum Answer {
    /// Reply with this status line and body.
    With(&'static str, String),
    /// Read the request, then say nothing for a while.
    Silence,
}

/// Serves one connection on loopback; returns the port and a receiver of the request text.
fn serve(tls: Option<Arc<rustls::ServerConfig>>, answer: Answer) -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        match tls {
            Some(config) => {
                let connection = rustls::ServerConnection::new(config).unwrap();
                handle(rustls::StreamOwned::new(connection, tcp), answer, sender);
            }
            None => handle(tcp, answer, sender),
        }
    });
    (port, receiver)
}

fn handle(mut stream: impl Read + Write, answer: Answer, requests: mpsc::Sender<String>) {
    let mut reader = BufReader::new(&mut stream);
    let mut request = String::new();
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        // A failed TLS handshake surfaces here; the client reports it.
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap();
            }
        }
        request.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).unwrap();
    request.push_str(&String::from_utf8(body).unwrap());
    requests.send(request).unwrap();
    match answer {
        Answer::With(status, body) => {
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
            let _ = stream.flush();
        }
        Answer::Silence => thread::sleep(Duration::from_secs(3)),
    }
}

fn client(url: String, ca: Option<&str>) -> Client {
    let ca = ca.map(|pem| CentralCa::Pem(pem.as_bytes().to_vec()));
    Client::new(Connection::new(
        url,
        ca,
        BearerToken::new(TOKEN, "test").unwrap(),
    ))
    .unwrap()
}

#[test]
fn trusted_ca_and_bearer_token() {
    let pki = pki(&["127.0.0.1"]);
    let (port, requests) = serve(
        Some(pki.server.clone()),
        Answer::With("200 OK", DEVICES.to_owned()),
    );
    let reply = client(format!("https://127.0.0.1:{port}"), Some(&pki.ca_pem))
        .list_devices()
        .unwrap();
    assert_eq!(reply.body, DEVICES);
    assert_eq!(reply.value.devices[0].device.status, DeviceStatus::Active);
    let request = requests.recv().unwrap();
    assert!(
        request.starts_with("GET /api/v1/devices HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request
            .to_ascii_lowercase()
            .contains(&format!("authorization: bearer {TOKEN}\r\n")),
        "{request}"
    );
}

#[test]
fn certificate_from_another_ca_is_refused() {
    let central = pki(&["127.0.0.1"]);
    let other = pki(&["127.0.0.1"]);
    let (port, _requests) = serve(
        Some(central.server.clone()),
        Answer::With("200 OK", DEVICES.to_owned()),
    );
    let error = client(format!("https://127.0.0.1:{port}"), Some(&other.ca_pem))
        .list_devices()
        .unwrap_err();
    assert!(matches!(error, CtlError::Tls { .. }), "{error}");
    assert!(error.to_string().contains("--ca"), "{error}");
}

#[test]
fn certificate_for_another_host_is_refused() {
    let pki = pki(&["central.example"]);
    let (port, _requests) = serve(
        Some(pki.server.clone()),
        Answer::With("200 OK", DEVICES.to_owned()),
    );
    let error = client(format!("https://127.0.0.1:{port}"), Some(&pki.ca_pem))
        .list_devices()
        .unwrap_err();
    assert!(matches!(error, CtlError::Tls { .. }), "{error}");
}

#[test]
fn error_body_becomes_message_and_status() {
    let (port, _requests) = serve(
        None,
        Answer::With(
            "404 Not Found",
            r#"{"error":{"code":"not_found","message":"no device dev_9"}}"#.to_owned(),
        ),
    );
    let error = client(format!("http://127.0.0.1:{port}"), None)
        .get_device("dev_9")
        .unwrap_err();
    assert_eq!(error.to_string(), "no device dev_9 (HTTP 404)");
}

#[test]
fn post_sends_json_and_reads_201() {
    let body = r#"{"claim":{"id":"clm_1","kind":"serial","value":"SN1","created_at":"2025-01-01T00:00:00Z","device_id":null}}"#;
    let (port, requests) = serve(None, Answer::With("201 Created", body.to_owned()));
    let reply = client(format!("http://127.0.0.1:{port}"), None)
        .create_claim(&CreateClaim::serial("SN1"))
        .unwrap();
    assert_eq!(reply.status, 201);
    assert_eq!(reply.value.claim.kind, ClaimKind::Serial);
    let request = requests.recv().unwrap();
    assert!(
        request.starts_with("POST /api/v1/claims HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.ends_with("\r\n\r\n{\"serial\":\"SN1\"}"),
        "{request}"
    );
}

#[test]
fn answer_that_is_not_the_api_is_reported() {
    let (port, _requests) = serve(None, Answer::With("200 OK", "<html>hi</html>".to_owned()));
    let error = client(format!("http://127.0.0.1:{port}"), None)
        .list_claims()
        .unwrap_err();
    assert!(
        matches!(error, CtlError::UnreadableBody { status: 200, .. }),
        "{error}"
    );
}

#[test]
fn silent_central_times_out() {
    let (port, _requests) = serve(None, Answer::Silence);
    let mut connection = Connection::new(
        format!("http://127.0.0.1:{port}"),
        None,
        BearerToken::new(TOKEN, "test").unwrap(),
    );
    connection.timeout = Duration::from_millis(300);
    let error = Client::new(connection).unwrap().list_devices().unwrap_err();
    assert!(matches!(error, CtlError::Timeout { .. }), "{error}");
}

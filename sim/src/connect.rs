//! gRPC channels to central from a chosen loopback source address.
//!
//! One source address has ~28k ephemeral ports towards one listener, so a fleet spreads its
//! connections over 127.0.0.2, 127.0.0.3, ... (all of 127/8 is local on Linux), binding each
//! socket before connecting.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Connections per source address (below the ~28k ephemeral ports of the default range).
pub const CONNECTIONS_PER_SOURCE: usize = 20_000;

/// Deadline of TCP connect plus TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TLS settings were refused (bad PEM).
    #[error("TLS settings for central at {addr} were refused: {source}")]
    Tls {
        /// Central's gRPC address.
        addr: SocketAddr,
        /// tonic's reason.
        source: tonic::transport::Error,
    },
    /// TCP connect or TLS handshake failed.
    #[error("could not connect to central at {addr} from {source_ip}: {source}; is central running and is RLIMIT_NOFILE high enough?")]
    Connect {
        /// Central's gRPC address.
        addr: SocketAddr,
        /// The local address bound.
        source_ip: IpAddr,
        /// tonic's reason.
        source: tonic::transport::Error,
    },
}

/// The loopback source address for the `index`-th connection of a fleet.
pub fn source_ip(index: usize) -> IpAddr {
    let n = (index / CONNECTIONS_PER_SOURCE) as u32 + 2;
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + n))
}

/// A TLS (optionally mutual TLS) channel to `addr` from `source_ip`.
pub async fn channel(
    addr: SocketAddr,
    source_ip: IpAddr,
    ca_pem: &str,
    identity: Option<Identity>,
) -> Result<Channel, ConnectError> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .expect("a socket address is a valid URI")
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .tls_config(tls)
        .map_err(|source| ConnectError::Tls { addr, source })?;
    let connector = tower::service_fn(move |_uri: tonic::transport::Uri| async move {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        if source_ip.is_ipv4() == addr.is_ipv4() {
            socket.bind(SocketAddr::new(source_ip, 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(TokioIo::new(stream))
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|source| ConnectError::Connect {
            addr,
            source_ip,
            source,
        })
}

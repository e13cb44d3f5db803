//! A containerd connection (containerd-client 0.9 over a unix socket) bound to one namespace.
//! Every request carries the `containerd-namespace` header (and `containerd-lease` when made
//! under a lease) and a timeout.

mod content;
mod leases;
mod snapshots;

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::version_client::VersionClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

pub use content::ContentWriter;
pub use leases::LEASE_EXPIRE_LABEL;

/// The snapshotter Cairn uses.
pub const SNAPSHOTTER: &str = "overlayfs";
/// Timeout of an ordinary call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of a call that moves or unpacks a whole layer.
pub const LONG_CALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Timeout of connecting to the socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors talking to containerd.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// The socket could not be reached.
    #[error("cannot connect to containerd at {socket}: {source}; check that containerd is running and the socket path is right")]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// Transport error.
        source: tonic::transport::Error,
    },
    /// A call failed.
    #[error("containerd {op} failed: {} ({:?}); see containerd's log for details", status.message(), status.code())]
    Call {
        /// Which call, e.g. `images.create`.
        op: &'static str,
        /// The gRPC status.
        status: Status,
    },
    /// A content stream broke or answered out of protocol.
    #[error("containerd content write of {reference} failed: {reason}; the next attempt resumes or restarts it")]
    Write {
        /// The ingest ref.
        reference: String,
        /// What went wrong.
        reason: String,
    },
}

impl ContainerdError {
    /// The gRPC code of a failed call (`None` for connection and stream errors).
    pub fn code(&self) -> Option<Code> {
        match self {
            ContainerdError::Call { status, .. } => Some(status.code()),
            _ => None,
        }
    }

    /// True when containerd answered "not found".
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(Code::NotFound)
    }

    /// True when containerd answered "already exists".
    pub fn is_already_exists(&self) -> bool {
        self.code() == Some(Code::AlreadyExists)
    }
}

/// Map a tonic status into [`ContainerdError::Call`] for operation `op`.
pub(crate) fn call(op: &'static str) -> impl FnOnce(Status) -> ContainerdError {
    move |status| ContainerdError::Call { op, status }
}

/// A connection to containerd in one namespace. Cheap to clone; the channel reconnects by itself
/// after containerd restarts.
#[derive(Clone, Debug)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    socket: PathBuf,
}

impl Containerd {
    /// Connect to the containerd socket at `socket`, working in `namespace` (Cairn uses `cairn`).
    ///
    /// # Errors
    /// [`ContainerdError::Connect`] when the socket cannot be reached within 10 s.
    #[tracing::instrument(skip_all, fields(socket = %socket.as_ref().display(), namespace))]
    pub async fn connect(
        socket: impl AsRef<Path>,
        namespace: &str,
    ) -> Result<Containerd, ContainerdError> {
        let socket = socket.as_ref().to_path_buf();
        let path = socket.clone();
        let endpoint = Endpoint::from_static("http://[::]:50051").connect_timeout(CONNECT_TIMEOUT);
        let connector = tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        let channel = endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|source| ContainerdError::Connect {
                socket: socket.clone(),
                source,
            })?;
        Ok(Containerd {
            channel,
            namespace: namespace.to_string(),
            socket,
        })
    }

    /// The namespace all calls are made in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The socket this connection uses.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's version string, e.g. `1.6.20~ds1`.
    ///
    /// # Errors
    /// When the call fails.
    #[tracing::instrument(skip(self))]
    pub async fn version(&self) -> Result<String, ContainerdError> {
        let resp = VersionClient::new(self.channel.clone())
            .version(self.request(()))
            .await
            .map_err(call("version"))?;
        Ok(resp.into_inner().version)
    }

    /// A request in this namespace with the default timeout.
    pub(crate) fn request<T>(&self, msg: T) -> Request<T> {
        self.request_with(msg, None, CALL_TIMEOUT)
    }

    /// A request in this namespace, optionally under a lease, with a timeout.
    pub(crate) fn request_with<T>(
        &self,
        msg: T,
        lease: Option<&str>,
        timeout: Duration,
    ) -> Request<T> {
        let mut req = Request::new(msg);
        req.set_timeout(timeout);
        let md = req.metadata_mut();
        if let Ok(ns) = MetadataValue::try_from(self.namespace.as_str()) {
            md.insert("containerd-namespace", ns);
        }
        if let Some(lease) = lease.and_then(|l| MetadataValue::try_from(l).ok()) {
            md.insert("containerd-lease", lease);
        }
        req
    }

    pub(crate) fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    pub(crate) fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    pub(crate) fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    pub(crate) fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    pub(crate) fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
    pub(crate) fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub(crate) fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
}

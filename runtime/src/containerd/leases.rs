//! Leases: keep content and snapshots alive while an import or pull is in progress.

use std::collections::HashMap;
use std::time::Duration;

use containerd_client::services::v1::{
    AddResourceRequest, CreateRequest, DeleteRequest, Lease, ListRequest, Resource,
};

use super::{call, Containerd, ContainerdError};

/// Label that makes containerd's GC drop a lease after this RFC 3339 time.
pub const LEASE_EXPIRE_LABEL: &str = "containerd.io/gc.expire";

impl Containerd {
    /// Create lease `id` with `labels`, expiring after `ttl` (kept as is when it already exists,
    /// so an interrupted pull resumes under the same lease).
    ///
    /// # Errors
    /// When the call fails for another reason than "already exists".
    #[tracing::instrument(skip(self))]
    pub async fn create_lease(
        &self,
        id: &str,
        ttl: Duration,
        mut labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        let expire = time::OffsetDateTime::now_utc() + ttl;
        let expire = expire
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        labels.insert(LEASE_EXPIRE_LABEL.to_string(), expire);
        let req = self.request(CreateRequest {
            id: id.to_string(),
            labels,
        });
        match self.leases().create(req).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(status) => Err(call("leases.create")(status)),
        }
    }

    /// Delete lease `id` (what it alone kept alive becomes garbage). Missing leases are fine.
    ///
    /// # Errors
    /// When the call fails for another reason than "not found".
    #[tracing::instrument(skip(self))]
    pub async fn delete_lease(&self, id: &str) -> Result<(), ContainerdError> {
        let req = self.request(DeleteRequest {
            id: id.to_string(),
            sync: false,
        });
        match self.leases().delete(req).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(call("leases.delete")(status)),
        }
    }

    /// Add an existing resource (`kind` = `content` or `snapshots/overlayfs`) to lease `id`.
    ///
    /// # Errors
    /// When the call fails.
    #[tracing::instrument(skip(self))]
    pub async fn add_lease_resource(
        &self,
        id: &str,
        kind: &str,
        resource: &str,
    ) -> Result<(), ContainerdError> {
        let req = self.request(AddResourceRequest {
            id: id.to_string(),
            resource: Some(Resource {
                id: resource.to_string(),
                r#type: kind.to_string(),
            }),
        });
        self.leases()
            .add_resource(req)
            .await
            .map_err(call("leases.add_resource"))?;
        Ok(())
    }

    /// All leases in the namespace.
    ///
    /// # Errors
    /// When the call fails.
    #[tracing::instrument(skip(self))]
    pub async fn list_leases(&self) -> Result<Vec<Lease>, ContainerdError> {
        let req = self.request(ListRequest {
            filters: Vec::new(),
        });
        let resp = self.leases().list(req).await.map_err(call("leases.list"))?;
        Ok(resp.into_inner().leases)
    }
}

//! Snapshots (overlayfs), layer application (diff service) and image records.

use std::collections::HashMap;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, Info, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, ViewSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, DeleteImageRequest, GetImageRequest, Image,
    ListImagesRequest, UpdateImageRequest,
};
use containerd_client::types::{Descriptor, Mount};
use futures::StreamExt;

use super::{call, Containerd, ContainerdError, CALL_TIMEOUT, LONG_CALL_TIMEOUT, SNAPSHOTTER};

impl Containerd {
    /// Info of snapshot `key`, `None` when it does not exist.
    ///
    /// # Errors
    /// When the call fails for another reason than "not found".
    #[tracing::instrument(skip(self))]
    pub async fn stat_snapshot(&self, key: &str) -> Result<Option<Info>, ContainerdError> {
        let req = self.request(StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
        });
        match self.snapshots().stat(req).await {
            Ok(resp) => Ok(resp.into_inner().info),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(call("snapshots.stat")(status)),
        }
    }

    /// Prepare an active snapshot `key` on top of `parent` (empty for none); returns its mounts.
    ///
    /// # Errors
    /// When the call fails (`AlreadyExists` when `key` is taken).
    #[tracing::instrument(skip(self, labels))]
    pub async fn prepare_snapshot(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        lease: Option<&str>,
    ) -> Result<Vec<Mount>, ContainerdError> {
        let req = self.request_with(
            PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
                parent: parent.into(),
                labels,
            },
            lease,
            CALL_TIMEOUT,
        );
        let resp = self
            .snapshots()
            .prepare(req)
            .await
            .map_err(call("snapshots.prepare"))?;
        Ok(resp.into_inner().mounts)
    }

    /// Make a read-only view `key` of committed snapshot `parent`, under `lease`; returns its
    /// mounts. Remove it with [`Containerd::remove_snapshot`].
    ///
    /// # Errors
    /// When the call fails (`AlreadyExists` when `key` is taken, `NotFound` without `parent`).
    #[tracing::instrument(skip(self))]
    pub async fn view_snapshot(
        &self,
        key: &str,
        parent: &str,
        lease: Option<&str>,
    ) -> Result<Vec<Mount>, ContainerdError> {
        let req = self.request_with(
            ViewSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
                parent: parent.into(),
                labels: HashMap::new(),
            },
            lease,
            CALL_TIMEOUT,
        );
        let resp = self
            .snapshots()
            .view(req)
            .await
            .map_err(call("snapshots.view"))?;
        Ok(resp.into_inner().mounts)
    }

    /// Mounts of an existing active snapshot.
    ///
    /// # Errors
    /// When the snapshot is missing or the call fails.
    #[tracing::instrument(skip(self))]
    pub async fn snapshot_mounts(&self, key: &str) -> Result<Vec<Mount>, ContainerdError> {
        let req = self.request(MountsRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
        });
        let resp = self
            .snapshots()
            .mounts(req)
            .await
            .map_err(call("snapshots.mounts"))?;
        Ok(resp.into_inner().mounts)
    }

    /// Commit active snapshot `key` as the committed snapshot `name`.
    ///
    /// # Errors
    /// When the call fails (`AlreadyExists` when `name` exists).
    #[tracing::instrument(skip(self))]
    pub async fn commit_snapshot(
        &self,
        name: &str,
        key: &str,
        lease: Option<&str>,
    ) -> Result<(), ContainerdError> {
        let req = self.request_with(
            CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: name.into(),
                key: key.into(),
                labels: HashMap::new(),
            },
            lease,
            CALL_TIMEOUT,
        );
        self.snapshots()
            .commit(req)
            .await
            .map_err(call("snapshots.commit"))?;
        Ok(())
    }

    /// Remove snapshot `key`; a missing one is fine.
    ///
    /// # Errors
    /// When the call fails for another reason than "not found".
    #[tracing::instrument(skip(self))]
    pub async fn remove_snapshot(&self, key: &str) -> Result<(), ContainerdError> {
        let req = self.request(RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
        });
        match self.snapshots().remove(req).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(call("snapshots.remove")(status)),
        }
    }

    /// All snapshots of the overlayfs snapshotter in the namespace.
    ///
    /// # Errors
    /// When the call fails.
    #[tracing::instrument(skip(self))]
    pub async fn list_snapshots(&self) -> Result<Vec<Info>, ContainerdError> {
        let req = self.request(ListSnapshotsRequest {
            snapshotter: SNAPSHOTTER.into(),
            filters: Vec::new(),
        });
        let mut stream = self
            .snapshots()
            .list(req)
            .await
            .map_err(call("snapshots.list"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(page) = stream.next().await {
            out.extend(page.map_err(call("snapshots.list"))?.info);
        }
        Ok(out)
    }

    /// Apply layer `layer` (from the content store; compressed or not) onto `mounts`; returns the
    /// descriptor of the uncompressed diff (its digest is the layer's diff id).
    ///
    /// # Errors
    /// When the layer cannot be read or applied.
    #[tracing::instrument(skip(self, mounts))]
    pub async fn apply_layer(
        &self,
        layer: Descriptor,
        mounts: Vec<Mount>,
        lease: Option<&str>,
    ) -> Result<Descriptor, ContainerdError> {
        let req = self.request_with(
            ApplyRequest {
                diff: Some(layer),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            },
            lease,
            LONG_CALL_TIMEOUT,
        );
        let resp = self.diff().apply(req).await.map_err(call("diff.apply"))?;
        resp.into_inner()
            .applied
            .ok_or_else(|| ContainerdError::Call {
                op: "diff.apply",
                status: tonic::Status::internal("no applied descriptor in the answer"),
            })
    }

    /// Image record `name`, `None` when missing.
    ///
    /// # Errors
    /// When the call fails for another reason than "not found".
    #[tracing::instrument(skip(self))]
    pub async fn get_image(&self, name: &str) -> Result<Option<Image>, ContainerdError> {
        let req = self.request(GetImageRequest { name: name.into() });
        match self.images().get(req).await {
            Ok(resp) => Ok(resp.into_inner().image),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(call("images.get")(status)),
        }
    }

    /// Create image record `image`, or update it in place when the name exists (an image record
    /// is never deleted and re-created, so containers keep their reference).
    ///
    /// # Errors
    /// When the call fails.
    #[tracing::instrument(skip(self, image), fields(image = %image.name))]
    pub async fn put_image(
        &self,
        image: Image,
        lease: Option<&str>,
    ) -> Result<(), ContainerdError> {
        if self.get_image(&image.name).await?.is_some() {
            let req = self.request_with(
                UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                },
                lease,
                CALL_TIMEOUT,
            );
            self.images()
                .update(req)
                .await
                .map_err(call("images.update"))?;
            return Ok(());
        }
        let req = self.request_with(
            CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            },
            lease,
            CALL_TIMEOUT,
        );
        match self.images().create(req).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                let req = self.request_with(
                    UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                        source_date_epoch: None,
                    },
                    lease,
                    CALL_TIMEOUT,
                );
                self.images()
                    .update(req)
                    .await
                    .map_err(call("images.update"))?;
                Ok(())
            }
            Err(status) => Err(call("images.create")(status)),
        }
    }

    /// Delete image record `name` and collect the garbage synchronously. Missing is fine.
    ///
    /// # Errors
    /// When the call fails for another reason than "not found".
    #[tracing::instrument(skip(self))]
    pub async fn delete_image(&self, name: &str) -> Result<(), ContainerdError> {
        let req = self.request_with(
            DeleteImageRequest {
                name: name.into(),
                sync: true,
                target: None,
            },
            None,
            LONG_CALL_TIMEOUT,
        );
        match self.images().delete(req).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(call("images.delete")(status)),
        }
    }

    /// Image records matching containerd `filters` (e.g. `labels."cairn.managed"==true`).
    ///
    /// # Errors
    /// When the call fails.
    #[tracing::instrument(skip(self))]
    pub async fn list_images(&self, filters: &[&str]) -> Result<Vec<Image>, ContainerdError> {
        let req = self.request(ListImagesRequest {
            filters: filters.iter().map(|f| f.to_string()).collect(),
        });
        let resp = self.images().list(req).await.map_err(call("images.list"))?;
        Ok(resp.into_inner().images)
    }
}

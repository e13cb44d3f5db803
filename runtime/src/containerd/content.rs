//! The content store: blob info, reads, label updates and resumable writes (ingest refs).

use std::collections::HashMap;

use containerd_client::services::v1::{
    AbortRequest, Info, InfoRequest, ListContentRequest, ReadContentRequest, UpdateRequest,
    WriteAction, WriteContentRequest, WriteContentResponse,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{call, Containerd, ContainerdError, LONG_CALL_TIMEOUT};

impl Containerd {
    /// Info of a committed blob, `None` when the content store does not have it.
    ///
    /// # Errors
    /// When the call fails for another reason than "not found".
    #[tracing::instrument(skip(self))]
    pub async fn content_info(&self, digest: &str) -> Result<Option<Info>, ContainerdError> {
        let req = self.request(InfoRequest {
            digest: digest.to_string(),
        });
        match self.content().info(req).await {
            Ok(resp) => Ok(resp.into_inner().info),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(call("content.info")(status)),
        }
    }

    /// All committed blobs in the namespace.
    ///
    /// # Errors
    /// When the call fails.
    #[tracing::instrument(skip(self))]
    pub async fn list_content(&self) -> Result<Vec<Info>, ContainerdError> {
        let req = self.request(ListContentRequest {
            filters: Vec::new(),
        });
        let mut stream = self
            .content()
            .list(req)
            .await
            .map_err(call("content.list"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(page) = stream.next().await {
            out.extend(page.map_err(call("content.list"))?.info);
        }
        Ok(out)
    }

    /// Read a whole (small) committed blob such as a manifest or config.
    ///
    /// # Errors
    /// When the blob is missing or the read fails.
    #[tracing::instrument(skip(self))]
    pub async fn read_content(&self, digest: &str) -> Result<Vec<u8>, ContainerdError> {
        let req = self.request(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        });
        let mut stream = self
            .content()
            .read(req)
            .await
            .map_err(call("content.read"))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk.map_err(call("content.read"))?.data);
        }
        Ok(data)
    }

    /// Set labels on a committed blob (other labels are kept).
    ///
    /// # Errors
    /// When the blob is missing or the update fails.
    #[tracing::instrument(skip(self))]
    pub async fn set_content_labels(
        &self,
        digest: &str,
        labels: &HashMap<String, String>,
        lease: Option<&str>,
    ) -> Result<(), ContainerdError> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let req = self.request_with(
            UpdateRequest {
                info: Some(Info {
                    digest: digest.to_string(),
                    labels: labels.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            },
            lease,
            super::CALL_TIMEOUT,
        );
        self.content()
            .update(req)
            .await
            .map_err(call("content.update"))?;
        Ok(())
    }

    /// Drop a partial write so the next one starts from zero.
    ///
    /// # Errors
    /// When the call fails for another reason than "not found".
    #[tracing::instrument(skip(self))]
    pub async fn abort_write(&self, reference: &str) -> Result<(), ContainerdError> {
        let req = self.request(AbortRequest {
            r#ref: reference.to_string(),
        });
        match self.content().abort(req).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(call("content.abort")(status)),
        }
    }

    /// Open (or resume) the ingest `reference` under `lease` for a blob of `total` bytes with
    /// digest `expected`. The returned writer's [`ContentWriter::offset`] says how many bytes
    /// an earlier, interrupted write already stored.
    ///
    /// # Errors
    /// When the stream cannot be opened (an `AlreadyExists` error means the blob is committed).
    #[tracing::instrument(skip(self))]
    pub async fn open_writer(
        &self,
        reference: &str,
        expected: &str,
        total: u64,
        lease: &str,
    ) -> Result<ContentWriter, ContainerdError> {
        let (tx, rx) = mpsc::channel(1);
        let req = self.request_with(ReceiverStream::new(rx), Some(lease), LONG_CALL_TIMEOUT);
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: reference.to_string(),
            total: total as i64,
            expected: expected.to_string(),
            ..Default::default()
        };
        tx.send(stat)
            .await
            .map_err(|_| write_error(reference, "the request stream closed"))?;
        let responses = self
            .content()
            .write(req)
            .await
            .map_err(call("content.write"))?
            .into_inner();
        let mut writer = ContentWriter {
            reference: reference.to_string(),
            expected: expected.to_string(),
            total,
            offset: 0,
            tx,
            responses,
        };
        let status = writer.round_trip_response().await?;
        writer.offset = status.offset as u64;
        Ok(writer)
    }
}

fn write_error(reference: &str, reason: impl Into<String>) -> ContainerdError {
    ContainerdError::Write {
        reference: reference.to_string(),
        reason: reason.into(),
    }
}

/// An open content write: send chunks in order, then commit with the expected digest (containerd
/// verifies digest and size on commit).
pub struct ContentWriter {
    reference: String,
    expected: String,
    total: u64,
    offset: u64,
    tx: mpsc::Sender<WriteContentRequest>,
    responses: tonic::codec::Streaming<WriteContentResponse>,
}

impl ContentWriter {
    /// Bytes stored so far (after opening: what an earlier interrupted write left).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    async fn round_trip_response(&mut self) -> Result<WriteContentResponse, ContainerdError> {
        match self.responses.next().await {
            Some(Ok(resp)) => Ok(resp),
            Some(Err(status)) => Err(call("content.write")(status)),
            None => Err(write_error(&self.reference, "containerd closed the stream")),
        }
    }

    async fn send(
        &mut self,
        req: WriteContentRequest,
    ) -> Result<WriteContentResponse, ContainerdError> {
        if self.tx.send(req).await.is_err() {
            // The server ended the stream; its status says why.
            return match self.round_trip_response().await {
                Err(e) => Err(e),
                Ok(_) => Err(write_error(&self.reference, "containerd closed the stream")),
            };
        }
        self.round_trip_response().await
    }

    /// Restart the write from byte 0 (drops what an earlier attempt stored).
    ///
    /// # Errors
    /// When containerd refuses.
    pub async fn truncate(&mut self) -> Result<(), ContainerdError> {
        let req = WriteContentRequest {
            action: WriteAction::Write as i32,
            offset: 0,
            ..Default::default()
        };
        let resp = self.send(req).await?;
        self.offset = resp.offset as u64;
        Ok(())
    }

    /// Append `data` at the current offset.
    ///
    /// # Errors
    /// When the write fails or would exceed the expected size.
    pub async fn write(&mut self, data: Vec<u8>) -> Result<(), ContainerdError> {
        let len = data.len() as u64;
        if self.offset + len > self.total {
            return Err(write_error(
                &self.reference,
                format!(
                    "the source sent more than the expected {} bytes",
                    self.total
                ),
            ));
        }
        let req = WriteContentRequest {
            action: WriteAction::Write as i32,
            offset: self.offset as i64,
            data,
            ..Default::default()
        };
        let resp = self.send(req).await?;
        if resp.offset as u64 != self.offset + len {
            return Err(write_error(
                &self.reference,
                format!(
                    "containerd is at offset {} after writing up to {}",
                    resp.offset,
                    self.offset + len
                ),
            ));
        }
        self.offset += len;
        Ok(())
    }

    /// Commit the blob with `labels`; containerd checks size and digest.
    ///
    /// # Errors
    /// When size or digest do not match (the data was corrupt) or the commit fails.
    pub async fn commit(mut self, labels: HashMap<String, String>) -> Result<(), ContainerdError> {
        let req = WriteContentRequest {
            action: WriteAction::Commit as i32,
            offset: self.offset as i64,
            total: self.total as i64,
            expected: self.expected.clone(),
            labels,
            ..Default::default()
        };
        match self.send(req).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

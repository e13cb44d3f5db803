//! Images for the reconciler: resolve a service's image (cached by record digest), pull missing
//! ones in the background with retry, and collect images and partial pulls nobody wants.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cairn_compose::ImageRef;
use tracing::info;

use super::{ReconcileError, ReconcilerConfig};
use crate::container;
use crate::containerd::Containerd;
use crate::image::{self, Credentials, ImageError, ImageInfo, PullOptions, MANAGED_LABEL};

/// A background pull; aborted on drop.
struct PullJob {
    handle: Option<tokio::task::JoinHandle<Result<ImageInfo, ImageError>>>,
    error: Option<String>,
    retry_at: Instant,
}

impl Drop for PullJob {
    fn drop(&mut self) {
        if let Some(h) = &self.handle {
            h.abort();
        }
    }
}

/// Where a service's image stands.
pub(super) enum ImageState {
    /// Present and unpacked.
    Ready(ImageInfo),
    /// Being pulled (after this error, when it is a retry).
    Pulling(Option<String>),
    /// Unavailable until the next retry.
    Failed(String),
}

/// Pulls in flight and resolved images.
pub(super) struct Images {
    ctr: Containerd,
    credentials: HashMap<String, Credentials>,
    plain_http: HashSet<String>,
    retry: Duration,
    pulls: HashMap<String, PullJob>,
    cache: HashMap<String, ImageInfo>,
}

impl Images {
    pub(super) fn new(ctr: Containerd, cfg: &ReconcilerConfig) -> Images {
        Images {
            ctr,
            credentials: cfg.credentials.clone(),
            plain_http: cfg.plain_http.clone(),
            retry: cfg.retry,
            pulls: HashMap::new(),
            cache: HashMap::new(),
        }
    }

    fn pull_options(&self, image: &ImageRef) -> PullOptions {
        PullOptions {
            credentials: self.credentials.get(&image.registry).cloned(),
            plain_http: self.plain_http.contains(&image.registry).then_some(true),
            ..Default::default()
        }
    }

    /// Image record `name` if present (one containerd call when cached), else the state of its
    /// background pull from `reference`, started when needed.
    pub(super) async fn resolve(&mut self, name: &str, reference: &str) -> ImageState {
        if let Some(cached) = self.cache.get(name) {
            match self.ctr.get_image(name).await {
                Ok(Some(img))
                    if img
                        .target
                        .as_ref()
                        .is_some_and(|t| t.digest == cached.digest) =>
                {
                    return ImageState::Ready(cached.clone());
                }
                Ok(_) => {
                    self.cache.remove(name);
                }
                Err(e) => return ImageState::Failed(e.to_string()),
            }
        }
        match image::image_info(&self.ctr, name).await {
            Ok(info) => {
                self.pulls.remove(name);
                self.cache.insert(name.to_string(), info.clone());
                return ImageState::Ready(info);
            }
            Err(ImageError::NotFound { .. }) => {}
            Err(e) => return ImageState::Failed(e.to_string()),
        }
        let now = Instant::now();
        let job = self.pulls.entry(name.to_string()).or_insert(PullJob {
            handle: None,
            error: None,
            retry_at: now,
        });
        if let Some(handle) = job.handle.take() {
            if !handle.is_finished() {
                job.handle = Some(handle);
                return ImageState::Pulling(job.error.clone());
            }
            match handle.await {
                Ok(Ok(info)) => {
                    self.pulls.remove(name);
                    self.cache.insert(name.to_string(), info.clone());
                    return ImageState::Ready(info);
                }
                Ok(Err(e)) => job.error = Some(e.to_string()),
                Err(e) => job.error = Some(format!("pull task failed: {e}")),
            }
            job.retry_at = now + self.retry;
        }
        if now < job.retry_at {
            return ImageState::Failed(job.error.clone().unwrap_or_default());
        }
        let Ok(image_ref) = ImageRef::parse(reference) else {
            return ImageState::Failed(format!("image reference {reference:?} is invalid"));
        };
        let opts = self.pull_options(&image_ref);
        let ctr = self.ctr.clone();
        let reference = reference.to_string();
        info!(image = %reference, "pulling image");
        let job = self.pulls.get_mut(name).expect("inserted above");
        job.handle = Some(tokio::spawn(async move {
            image::pull_image(&ctr, &reference, &opts, &image::no_progress).await
        }));
        ImageState::Pulling(job.error.clone())
    }

    /// Forget pulls of unwanted images, drop their partial data, and delete Cairn-managed image
    /// records no desired service (`wanted`) and no container uses.
    pub(super) async fn collect(&mut self, wanted: &HashSet<String>) -> Result<(), ReconcileError> {
        self.pulls.retain(|name, _| wanted.contains(name));
        self.cache.retain(|name, _| wanted.contains(name));
        // Partial pulls of wanted images stay (a retry, even by a restarted agent, resumes them).
        for dropped in image::discard_partial_pulls(&self.ctr, wanted).await? {
            info!(image = %dropped, "dropped an unfinished pull");
        }
        let in_use: HashSet<String> = container::list_containers(&self.ctr)
            .await?
            .into_iter()
            .map(|c| c.image)
            .collect();
        let filter = format!("labels.\"{MANAGED_LABEL}\"==true");
        let images = self
            .ctr
            .list_images(&[filter.as_str()])
            .await
            .map_err(ImageError::from)?;
        for img in images {
            if !wanted.contains(&img.name) && !in_use.contains(&img.name) {
                info!(image = %img.name, "removing unused image");
                image::remove_image(&self.ctr, &img.name).await?;
            }
        }
        Ok(())
    }
}

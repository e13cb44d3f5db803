//! Images for the reconciler's executor: look up a service's image (cached by record digest),
//! run the pulls the planner asks for in the background and remember how they ended, and
//! collect images and partial pulls nobody wants. When to pull and what a pull's state means for
//! a service is the planner's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use cairn_compose::{ImageRef, RegistryLogin};
use tracing::info;

use super::plan::{ImageLookup, PullState};
use super::{ReconcileError, ReconcilerConfig};
use crate::container;
use crate::containerd::Containerd;
use crate::image::{self, Credentials, ImageError, ImageInfo, PullOptions, MANAGED_LABEL};

/// Why a background pull failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PullError {
    /// The pull itself failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The pull's task panicked or was cancelled.
    #[error("pull task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A background pull; aborted on drop.
struct Running(tokio::task::JoinHandle<Result<ImageInfo, ImageError>>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A pull the reconciler started, and how it stands.
enum PullJob {
    /// Still running, after `last_error` when it is a retry.
    Running {
        task: Running,
        last_error: Option<Arc<PullError>>,
    },
    /// Ended with `error` at `at`.
    Failed { error: Arc<PullError>, at: Instant },
}

/// Pulls in flight and resolved images.
pub(super) struct Images {
    ctr: Containerd,
    credentials: HashMap<String, Credentials>,
    plain_http: HashSet<String>,
    pulls: HashMap<String, PullJob>,
    cache: HashMap<String, ImageInfo>,
}

impl Images {
    pub(super) fn new(ctr: Containerd, cfg: &ReconcilerConfig) -> Images {
        Images {
            ctr,
            credentials: cfg.credentials.clone(),
            plain_http: cfg.plain_http.clone(),
            pulls: HashMap::new(),
            cache: HashMap::new(),
        }
    }

    /// How to pull `image`: with the app's `login` for its registry when it has one (always
    /// over HTTPS: a password never travels in clear), else with the configured credentials.
    fn pull_options(&self, image: &ImageRef, login: Option<&RegistryLogin>) -> PullOptions {
        if let Some(login) = login {
            return PullOptions {
                credentials: login
                    .username
                    .clone()
                    .zip(login.password.clone())
                    .map(|(username, password)| Credentials::Basic { username, password }),
                plain_http: Some(false),
                extra_roots_pem: login.ca_pem.clone(),
                ..Default::default()
            };
        }
        PullOptions {
            credentials: self.credentials.get(&image.registry).cloned(),
            plain_http: self.plain_http.contains(&image.registry).then_some(true),
            ..Default::default()
        }
    }

    /// Take in the pulls that ended: a pulled image is cached (and so present), a failure is
    /// remembered with the time it was noticed, `now`.
    pub(super) async fn take_finished_pulls(&mut self, now: Instant) {
        let finished: Vec<String> = self
            .pulls
            .iter()
            .filter(|(_, job)| matches!(job, PullJob::Running { task, .. } if task.0.is_finished()))
            .map(|(name, _)| name.clone())
            .collect();
        for name in finished {
            let Some(PullJob::Running { mut task, .. }) = self.pulls.remove(&name) else {
                continue;
            };
            let result = match (&mut task.0).await {
                Ok(Ok(info)) => Ok(info),
                Ok(Err(e)) => Err(PullError::Image(e)),
                Err(e) => Err(PullError::Task(e)),
            };
            match result {
                Ok(info) => {
                    self.cache.insert(name, info);
                }
                Err(error) => {
                    let error = Arc::new(error);
                    self.pulls.insert(name, PullJob::Failed { error, at: now });
                }
            }
        }
    }

    /// Image record `name` (one containerd call when cached); `None` when it is absent. A
    /// present image ends the memory of its pulls.
    pub(super) async fn look_up(&mut self, name: &str) -> Option<ImageLookup> {
        if let Some(cached) = self.cache.get(name) {
            match self.ctr.get_image(name).await {
                Ok(Some(img))
                    if img
                        .target
                        .as_ref()
                        .is_some_and(|t| t.digest == cached.digest) =>
                {
                    return Some(ImageLookup::Present(cached.clone()));
                }
                Ok(_) => {
                    self.cache.remove(name);
                }
                Err(e) => return Some(ImageLookup::Failed(e.into())),
            }
        }
        match image::image_info(&self.ctr, name).await {
            Ok(info) => {
                self.pulls.remove(name);
                self.cache.insert(name.to_string(), info.clone());
                Some(ImageLookup::Present(info))
            }
            Err(ImageError::NotFound { .. }) => None,
            Err(e) => Some(ImageLookup::Failed(e)),
        }
    }

    /// How the pulls stand, for the planner.
    pub(super) fn pulls(&self) -> HashMap<String, PullState> {
        self.pulls
            .iter()
            .map(|(name, job)| {
                let state = match job {
                    PullJob::Running { last_error, .. } => PullState::Running {
                        last_error: last_error.clone(),
                    },
                    PullJob::Failed { error, at } => PullState::Failed {
                        error: error.clone(),
                        at: *at,
                    },
                };
                (name.clone(), state)
            })
            .collect()
    }

    /// Start pulling `reference` (image record `name`) in the background, with the app's
    /// `login` for its registry if it has one. Two apps wanting one image share one pull (the
    /// first to ask sets how it is reached); the image is stored once.
    ///
    /// # Errors
    /// When `reference` does not parse (nothing is started).
    pub(super) fn start_pull(
        &mut self,
        name: &str,
        reference: &str,
        login: Option<&RegistryLogin>,
    ) -> Result<(), ImageError> {
        let image_ref = ImageRef::parse(reference).map_err(|reason| ImageError::Reference {
            reference: reference.to_string(),
            reason,
        })?;
        let opts = self.pull_options(&image_ref, login);
        let ctr = self.ctr.clone();
        let owned = reference.to_string();
        info!(image = %reference, "pulling image");
        let task = Running(tokio::spawn(async move {
            image::pull_image(&ctr, &owned, &opts, &image::no_progress).await
        }));
        let last_error = match self.pulls.remove(name) {
            Some(PullJob::Failed { error, .. }) => Some(error),
            Some(PullJob::Running { last_error, .. }) => last_error,
            None => None,
        };
        self.pulls
            .insert(name.to_string(), PullJob::Running { task, last_error });
        Ok(())
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

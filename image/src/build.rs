//! `cairn-image build`: runs the steps in order inside `OUT/.partial`, reports progress per
//! step ("[4/9] squashfs root + dm-verity ... done in 24.1s"), and moves the results into `OUT`
//! only when every step succeeded; a failed build removes `.partial` and leaves `OUT` as it was.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_io::{FileError, PathContext};

use crate::bundle::{self, BundleError, BundleSpec};
use crate::disk::{self, DiskError};
use crate::esp::{self, EspContents, EspError};
use crate::keys::UpdateKeys;
use crate::lock::{Lock, LockError};
use crate::overlay::{self, FleetInputs, OverlayError};
use crate::publish::{self, PublishError};
use crate::recipe::Recipe;
use crate::rootfs::{self, RootfsError};
use crate::sbom::{self, SbomError, SbomSubject};
use crate::uki::{self, UkiError, UkiParts};
use crate::verity::{self, VerityError};

/// Everything a build needs besides the recipe.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Output directory.
    pub out_dir: PathBuf,
    /// cairn-agent binary.
    pub agent_bin: PathBuf,
    /// Central's endpoint, overriding the recipe's `fleet.central_url` (e.g. the QEMU guestfwd
    /// address `https://10.0.2.100:7443` for a central on a random host port).
    pub central_url: Option<String>,
    /// Central's CA certificate.
    pub central_ca: Option<PathBuf>,
    /// Enrollment token file.
    pub token_file: Option<PathBuf>,
    /// Secure Boot key.
    pub sb_key: PathBuf,
    /// Secure Boot certificate.
    pub sb_cert: PathBuf,
    /// Passphrase of an encrypted Secure Boot key.
    pub sb_key_pass: Option<String>,
    /// Update signing key.
    pub update_key: PathBuf,
    /// Update certificate (also the image's RAUC keyring).
    pub update_cert: PathBuf,
    /// Cache for the bootstrapped root filesystem tarball.
    pub cache_dir: Option<PathBuf>,
    /// Keep `.partial` after a failure.
    pub keep_partial: bool,
    /// Accept installed versions that differ from the lock because the live mirror moved on
    /// (printed as a warning; the SBOM records what was installed). Test builds only.
    pub allow_lock_drift: bool,
}

/// The build steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// mmdebstrap (or the cache), extract, check the lock.
    RootFilesystem,
    /// Agent, config, CA, token, RAUC keyring; library check; boot files out of /boot.
    FleetLayer,
    /// squashfs + dm-verity.
    RootImage,
    /// One signed UKI per slot, signed systemd-boot.
    KernelImages,
    /// The FAT ESP.
    Esp,
    /// The GPT disk image.
    Disk,
    /// The signed RAUC bundle.
    Bundle,
    /// .zst, .bmap.
    Compress,
    /// SBOM, SHA256SUMS, move into place.
    Publish,
}

impl Step {
    const ALL: [Step; 9] = [
        Step::RootFilesystem,
        Step::FleetLayer,
        Step::RootImage,
        Step::KernelImages,
        Step::Esp,
        Step::Disk,
        Step::Bundle,
        Step::Compress,
        Step::Publish,
    ];

    /// Human name of the step.
    pub fn name(self) -> &'static str {
        match self {
            Step::RootFilesystem => "root filesystem (mmdebstrap)",
            Step::FleetLayer => "fleet layer (agent, config, keys)",
            Step::RootImage => "squashfs root + dm-verity",
            Step::KernelImages => "UKIs + Secure Boot signatures",
            Step::Esp => "ESP (systemd-boot, boot counting)",
            Step::Disk => "GPT disk image",
            Step::Bundle => "signed RAUC bundle",
            Step::Compress => "zstd + bmap",
            Step::Publish => "SBOM + SHA256SUMS",
        }
    }

    fn index(self) -> usize {
        Step::ALL.iter().position(|s| *s == self).expect("listed") + 1
    }
}

/// What failed inside a step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Root filesystem.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// Lock.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Fleet layer files.
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    /// Root image.
    #[error(transparent)]
    Verity(#[from] VerityError),
    /// UKI.
    #[error(transparent)]
    Uki(#[from] UkiError),
    /// ESP.
    #[error(transparent)]
    Esp(#[from] EspError),
    /// Disk.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// Bundle.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// Release files.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// SBOM.
    #[error(transparent)]
    Sbom(#[from] SbomError),
    /// Local file handling.
    #[error(transparent)]
    File(#[from] FileError),
}

/// A build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The lock is missing or unreadable (before any step ran).
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A step failed; nothing was written to the output directory.
    #[error("build step [{index}/9] {name} failed: {error}")]
    Step {
        /// 1-based step number.
        index: usize,
        /// Step name.
        name: &'static str,
        /// The failure (in the message, not a separate source, so it is printed once; boxed
        /// because a tool failure carries its command line and stderr).
        error: Box<StepError>,
    },
    /// The output directory could not be prepared.
    #[error("cannot prepare the output directory {path}: {source}")]
    Output {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Progress of a build, for display.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A step started.
    Started(Step),
    /// A step finished.
    Finished(Step, Duration),
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Started(s) => write!(f, "[{}/9] {} ...", s.index(), s.name()),
            Progress::Finished(s, d) => {
                write!(
                    f,
                    "[{}/9] {} ... done in {:.1}s",
                    s.index(),
                    s.name(),
                    d.as_secs_f64()
                )
            }
        }
    }
}

/// What a successful build made.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The output directory.
    pub out_dir: PathBuf,
    /// The disk image.
    pub image: PathBuf,
    /// The RAUC bundle.
    pub bundle: PathBuf,
    /// Root hash of the root filesystem.
    pub root_hash: String,
    /// Bytes of the root image (squashfs + hash tree).
    pub root_image_bytes: u64,
    /// Bytes of the disk image (apparent size).
    pub image_bytes: u64,
    /// Bytes of the .img.zst.
    pub image_zst_bytes: u64,
    /// Bytes of the bundle.
    pub bundle_bytes: u64,
    /// Whether the root filesystem came from the cache.
    pub rootfs_cached: bool,
    /// Time per step.
    pub steps: Vec<(Step, Duration)>,
    /// Total time.
    pub total: Duration,
}

impl BuildReport {
    /// A few lines for people.
    pub fn summary(&self) -> String {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        format!(
            "built {} in {:.1}s{}\n  image {:.1} MiB (zst {:.1} MiB), root {:.1} MiB, bundle {:.1} MiB\n  root hash {}",
            self.image.display(),
            self.total.as_secs_f64(),
            if self.rootfs_cached { " (root filesystem from cache)" } else { "" },
            mib(self.image_bytes),
            mib(self.image_zst_bytes),
            mib(self.root_image_bytes),
            mib(self.bundle_bytes),
            self.root_hash
        )
    }
}

/// Run a whole build. `progress` gets a line-worthy event at the start and end of each step.
pub fn build(
    recipe: &Recipe,
    options: &BuildOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<BuildReport, BuildError> {
    let lock = Lock::load(&recipe.lock_path())?;
    if options.central_ca.is_none() || options.token_file.is_none() {
        tracing::warn!(
            "no central CA or enrollment token given: the image boots but cannot enroll"
        );
    }
    fs::create_dir_all(&options.out_dir).map_err(|source| BuildError::Output {
        path: options.out_dir.clone(),
        source,
    })?;
    // Absolute paths from here on: hooks and tools run in other directories.
    let out_abs = fs::canonicalize(&options.out_dir).map_err(|source| BuildError::Output {
        path: options.out_dir.clone(),
        source,
    })?;
    let options = &BuildOptions {
        out_dir: out_abs,
        ..options.clone()
    };
    let out = &options.out_dir;
    let partial = out.join(".partial");
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(|source| BuildError::Output {
            path: partial.clone(),
            source,
        })?;
    }
    fs::create_dir_all(partial.join("out")).map_err(|source| BuildError::Output {
        path: partial.clone(),
        source,
    })?;
    let mut run = Run {
        recipe,
        options,
        lock: &lock,
        partial: &partial,
        progress,
        steps: Vec::new(),
    };
    let started = Instant::now();
    let result = run.all();
    match result {
        Ok(mut report) => {
            let _ = fs::remove_dir_all(&partial);
            report.total = started.elapsed();
            report.steps = run.steps;
            Ok(report)
        }
        Err(err) => {
            if !options.keep_partial {
                let _ = fs::remove_dir_all(&partial);
            }
            Err(err)
        }
    }
}

struct Run<'a> {
    recipe: &'a Recipe,
    options: &'a BuildOptions,
    lock: &'a Lock,
    partial: &'a Path,
    progress: &'a mut dyn FnMut(Progress),
    steps: Vec<(Step, Duration)>,
}

impl Run<'_> {
    fn step<T>(
        &mut self,
        step: Step,
        f: impl FnOnce(&mut Self) -> Result<T, StepError>,
    ) -> Result<T, BuildError> {
        (self.progress)(Progress::Started(step));
        let started = Instant::now();
        let value = f(self).map_err(|error| BuildError::Step {
            index: step.index(),
            name: step.name(),
            error: Box::new(error),
        })?;
        let elapsed = started.elapsed();
        self.steps.push((step, elapsed));
        (self.progress)(Progress::Finished(step, elapsed));
        Ok(value)
    }

    fn all(&mut self) -> Result<BuildReport, BuildError> {
        let recipe = self.recipe;
        let epoch = recipe.debian.source_date_epoch;
        let work = self.partial.join("work");
        let final_dir = self.partial.join("out");
        let root = work.join("rootfs");
        let name = format!("cairn-{}", recipe.target.name);
        let static_files = overlay::static_os_files(recipe);

        let cached = self.step(Step::RootFilesystem, |run| {
            let (tar, cached) = rootfs::bootstrap(
                recipe,
                run.lock,
                &static_files,
                run.options.cache_dir.as_deref(),
                &work,
            )?;
            rootfs::extract(&tar, &root)?;
            if !cached {
                let _ = fs::remove_file(work.join("rootfs.tar"));
            }
            match rootfs::check_lock(&root, run.lock, &recipe.lock_path()) {
                Err(RootfsError::Lock(e)) if run.options.allow_lock_drift => {
                    eprintln!("\nwarning: building anyway (allow_lock_drift): {e}");
                }
                other => other?,
            }
            Ok(cached)
        })?;

        let boot = self.step(Step::FleetLayer, |run| {
            let inputs = FleetInputs {
                agent_bin: run.options.agent_bin.clone(),
                central_ca: run.options.central_ca.clone(),
                token_file: run.options.token_file.clone(),
                update_cert: run.options.update_cert.clone(),
            };
            let mut recipe = recipe.clone();
            if let Some(url) = &run.options.central_url {
                recipe.fleet.central_url = url.clone();
            }
            let fleet = overlay::fleet_files(&recipe, &inputs)?;
            overlay::write_files(&root, &fleet)?;
            // An empty machine-id: systemd makes a transient one per boot on the read-only root.
            fs::write(root.join("etc/machine-id"), b"")
                .at("write", &root.join("etc/machine-id"))?;
            rootfs::check_libraries(&root, "/usr/bin/cairn-agent")?;
            let boot = rootfs::take_boot_files(&root, &work.join("boot"))?;
            for (from, to) in [
                (uki::STUB_IN_ROOT, work.join("linuxx64.efi.stub")),
                (
                    uki::SYSTEMD_BOOT_IN_ROOT,
                    work.join("boot/systemd-bootx64.efi"),
                ),
            ] {
                fs::copy(root.join(from), &to).at(
                    "copy (is systemd-boot-efi in the recipe?)",
                    &root.join(from),
                )?;
            }
            let installed = rootfs::installed_packages(&root)?;
            let added: Vec<_> = static_files.iter().chain(fleet.iter()).cloned().collect();
            let subject = SbomSubject {
                target: &recipe.target.name,
                version: &recipe.target.version,
                suite: &recipe.debian.suite,
                source_date_epoch: epoch,
            };
            let doc = sbom::sbom(&subject, &installed, run.lock, &added);
            sbom::write(&doc, &final_dir.join(format!("{name}.sbom.json")))?;
            Ok(boot)
        })?;

        let root_image = self.step(Step::RootImage, |_| {
            let img = work.join("root.img");
            verity::make_squashfs(
                &root,
                &img,
                epoch,
                recipe.root.zstd_level,
                &recipe.root.exclude,
            )?;
            let image = verity::append_hash_tree(
                &img,
                &recipe.partitions.verity_salt,
                &recipe.partitions.root_a_uuid,
            )?;
            let capacity = recipe.partitions.root_mib << 20;
            if image.size > capacity {
                return Err(DiskError::TooLarge {
                    name: "root-a",
                    size: image.size,
                    capacity,
                }
                .into());
            }
            let _ = fs::remove_dir_all(&root);
            Ok(image)
        })?;

        let (bootloader, ukis) = self.step(Step::KernelImages, |run| {
            let key = uki::prepare_signing_key(
                &run.options.sb_key,
                &run.options.sb_cert,
                run.options.sb_key_pass.as_deref(),
                &work,
            )?;
            let stub = work.join("linuxx64.efi.stub");
            let boot_dir = work.join("boot");
            let mut ukis = Vec::new();
            for slot in ['a', 'b'] {
                let cmdline = uki::cmdline(
                    slot,
                    &root_image.root_hash,
                    root_image.hash_offset,
                    &recipe.kernel.cmdline_extra,
                );
                let parts = UkiParts {
                    stub: &stub,
                    kernel: &boot.kernel,
                    initrd: &boot.initrd,
                    os_release: &overlay::os_release(&static_files),
                    cmdline: &cmdline,
                };
                let unsigned = work.join(format!("cairn-{slot}.unsigned.efi"));
                uki::build_unsigned(&parts, &unsigned, &work.join(format!("uki-{slot}")))?;
                let signed = work.join(format!("cairn-{slot}.efi"));
                uki::sign(&unsigned, &signed, &key, epoch)?;
                ukis.push((slot, signed));
            }
            let bootloader = work.join("BOOTX64.EFI");
            uki::sign(
                &boot_dir.join("systemd-bootx64.efi"),
                &bootloader,
                &key,
                epoch,
            )?;
            let _ = fs::remove_file(&key.key);
            Ok((bootloader, ukis))
        })?;

        let bundle_ukis = ukis.clone();
        let esp_img = self.step(Step::Esp, |run| {
            let contents = EspContents {
                bootloader,
                ukis,
                tries: recipe.boot.tries,
                timeout_s: recipe.boot.timeout_s,
                default_slot: 'a',
                provisioning: overlay::provisioning_files(run.options.token_file.as_deref())?,
            };
            let img = work.join("esp.img");
            let p = &recipe.partitions;
            esp::make_esp(
                &contents,
                &img,
                &work.join("esp"),
                p.esp_mib,
                &p.esp_volume_id,
                epoch,
            )?;
            Ok(img)
        })?;

        let image = final_dir.join(format!("{name}.img"));
        self.step(Step::Disk, |_| {
            let layout = disk::layout(&recipe.partitions);
            let mut contents: Vec<(&'static str, &Path)> =
                vec![("esp", &esp_img), ("root-a", &root_image.path)];
            if recipe.partitions.fill_root_b {
                contents.push(("root-b", &root_image.path));
            }
            disk::make_disk(
                &image,
                &layout,
                &recipe.partitions.disk_guid,
                &contents,
                &work,
            )?;
            Ok(())
        })?;

        let bundle_path = final_dir.join(format!("{name}-{}.raucb", recipe.target.version));
        self.step(Step::Bundle, |run| {
            let keys = UpdateKeys {
                key: run.options.update_key.clone(),
                cert: run.options.update_cert.clone(),
            };
            let build_id = epoch.to_string();
            let spec = BundleSpec {
                compatible: &recipe.update.compatible,
                version: &recipe.target.version,
                build: &build_id,
                root_image: &root_image.path,
                ukis: &bundle_ukis,
                epoch,
            };
            bundle::make_bundle(&spec, &keys, &bundle_path, &work.join("bundle"))?;
            Ok(())
        })?;

        self.step(Step::Compress, |_| {
            publish::compress(&image, &final_dir.join(format!("{name}.img.zst")))?;
            publish::bmap(&image, &final_dir.join(format!("{name}.img.bmap")))?;
            Ok(())
        })?;

        let out = self.options.out_dir.clone();
        self.step(Step::Publish, |_| {
            let mut names: Vec<String> = fs::read_dir(&final_dir)
                .at("list", &final_dir)?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect();
            names.sort();
            publish::sha256sums(&final_dir, &names)?;
            names.push("SHA256SUMS".into());
            for file in &names {
                let to = out.join(file);
                fs::rename(final_dir.join(file), &to).at("move into place", &to)?;
            }
            Ok(())
        })?;

        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let image = out.join(format!("{name}.img"));
        let bundle = out.join(format!("{name}-{}.raucb", recipe.target.version));
        Ok(BuildReport {
            out_dir: out.clone(),
            image_bytes: size(&image),
            image_zst_bytes: size(&out.join(format!("{name}.img.zst"))),
            bundle_bytes: size(&bundle),
            root_image_bytes: root_image.size,
            root_hash: root_image.root_hash.clone(),
            image,
            bundle,
            rootfs_cached: cached,
            steps: Vec::new(),
            total: Duration::ZERO,
        })
    }
}

//! The image under test: a prebuilt one (`CAIRN_E2E_IMAGE=path/to/cairn-qemu-x86_64.img`, e.g.
//! built once by CI with the `cairn-image` CLI) or one built here with the cairn-image library
//! into `target/cairn-e2e/image` (the bootstrapped root filesystem is cached under
//! `target/cairn-image/cache`, so rebuilding costs about a minute).

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_image::{BuildOptions, Recipe};

/// The image could not be found or built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Building the agent failed.
    #[error("cannot build cairn-agent for the image: {0}")]
    Agent(String),
    /// Reading the recipe failed.
    #[error(transparent)]
    Recipe(#[from] cairn_image::recipe::RecipeError),
    /// Making test keys failed.
    #[error(transparent)]
    Keys(#[from] cairn_image::keys::KeysError),
    /// The build failed.
    #[error(transparent)]
    Build(#[from] cairn_image::BuildError),
    /// CAIRN_E2E_IMAGE points nowhere.
    #[error("CAIRN_E2E_IMAGE={0} does not exist")]
    Missing(PathBuf),
}

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The recipe the e2e tests boot.
pub fn recipe_path() -> PathBuf {
    workspace_root().join("recipes/qemu-x86_64.toml")
}

/// A cairn-agent binary: `CAIRN_AGENT_BIN`, else the debug build, brought up to date with
/// `cargo build -p cairn-agent` (a no-op when fresh). Never a leftover release build: a stale
/// binary in the image tests old code.
pub fn agent_binary() -> Result<PathBuf, ImageError> {
    if let Some(path) = std::env::var_os("CAIRN_AGENT_BIN") {
        return Ok(PathBuf::from(path));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "cairn-agent", "--bin", "cairn-agent"])
        .current_dir(workspace_root())
        .status()
        .map_err(|e| ImageError::Agent(e.to_string()))?;
    if !status.success() {
        return Err(ImageError::Agent(format!(
            "cargo build -p cairn-agent: {status}"
        )));
    }
    Ok(target_dir().join("debug/cairn-agent"))
}

/// Fleet inputs for a test image.
#[derive(Debug, Clone, Default)]
pub struct FleetFiles {
    /// Central's URL as the guest sees it (default: the recipe's `https://10.0.2.2:7443`; use
    /// [`crate::vm::GUEST_CENTRAL_URL`] with [`crate::VmOptions::central_port`] for a central on
    /// another host port).
    pub central_url: Option<String>,
    /// Central's CA certificate.
    pub central_ca: Option<PathBuf>,
    /// Enrollment token file.
    pub token_file: Option<PathBuf>,
}

impl FleetFiles {
    /// Inputs for a guest of a test central on the host (reached as [`crate::vm::GUEST_CENTRAL_URL`]):
    /// its CA and an enrollment token are written into `dir`.
    pub fn for_test_central(dir: &Path, ca_pem: &str, token: &str) -> FleetFiles {
        let ca = dir.join("central-ca.pem");
        std::fs::write(&ca, ca_pem).expect("write the central CA");
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{token}\n")).expect("write the enrollment token");
        FleetFiles {
            central_url: Some(crate::vm::GUEST_CENTRAL_URL.to_string()),
            central_ca: Some(ca),
            token_file: Some(token_file),
        }
    }
}

/// Build an image of the e2e recipe into `out` (test update keys in `target/cairn-e2e/keys`).
pub fn build_image(out: &Path, fleet: &FleetFiles) -> Result<PathBuf, ImageError> {
    Ok(build_image_with(out, fleet, |_| {})?.image)
}

/// The test update key pair (shared by every test build, so one image takes another's bundles).
pub fn update_keys() -> Result<cairn_image::keys::UpdateKeys, ImageError> {
    let keys_dir = target_dir().join("cairn-e2e/keys");
    let keys = cairn_image::keys::UpdateKeys::in_dir(&keys_dir);
    if !keys.key.exists() || !keys.cert.exists() {
        let _ = std::fs::remove_dir_all(&keys_dir);
        cairn_image::keys::generate(&keys_dir, "Cairn e2e test update key")?;
    }
    Ok(keys)
}

/// Build the e2e recipe changed by `edit` (another version, one more package, another central)
/// into `out`; the lock stays the recipe's, so an added package shows as drift.
pub fn build_image_with(
    out: &Path,
    fleet: &FleetFiles,
    edit: impl FnOnce(&mut Recipe),
) -> Result<cairn_image::BuildReport, ImageError> {
    let mut recipe = Recipe::load(&recipe_path())?;
    edit(&mut recipe);
    let keys = update_keys()?;
    let options = BuildOptions {
        out_dir: out.to_path_buf(),
        agent_bin: agent_binary()?,
        central_url: fleet.central_url.clone(),
        central_ca: fleet.central_ca.clone(),
        token_file: fleet.token_file.clone(),
        sb_key: cairn_image::uki::SNAKEOIL_KEY.into(),
        sb_cert: cairn_image::uki::SNAKEOIL_CERT.into(),
        sb_key_pass: None,
        update_key: keys.key,
        update_cert: keys.cert,
        cache_dir: Some(target_dir().join("cairn-image/cache")),
        keep_partial: false,
        // The live mirror moves on between lock refreshes; test builds report the drift.
        allow_lock_drift: true,
    };
    let report = cairn_image::build(&recipe, &options, &mut |event| eprintln!("{event}"))?;
    eprintln!("{}", report.summary());
    Ok(report)
}

/// The image to boot: `CAIRN_E2E_IMAGE` if set, else a fresh build into target/cairn-e2e/image.
pub fn image_under_test() -> Result<PathBuf, ImageError> {
    if let Some(path) = std::env::var_os("CAIRN_E2E_IMAGE") {
        // cargo runs tests in the package dir: a relative path means the workspace root.
        let path = workspace_root().join(PathBuf::from(path));
        return if path.is_file() {
            Ok(path)
        } else {
            Err(ImageError::Missing(path))
        };
    }
    build_image(
        &target_dir().join("cairn-e2e/image"),
        &FleetFiles::default(),
    )
}

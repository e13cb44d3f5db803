//! `cairn-image`: thin CLI over the `cairn_image` library.

use std::path::PathBuf;

use anyhow::Context;
use cairn_image::build::Progress;
use cairn_image::{build, keys, lock, rootfs, BuildOptions, Recipe};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Build Cairn disk images and update bundles from recipes.
#[derive(Debug, Parser)]
#[command(name = "cairn-image", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Build the disk image, its .zst/.bmap, SHA256SUMS, SBOM and the signed RAUC bundle.
    Build {
        /// The recipe (recipes/<target>.toml); its lock is the .lock file beside it.
        recipe: PathBuf,
        /// Output directory (results appear only when the whole build succeeded).
        #[arg(long)]
        out: PathBuf,
        /// The cairn-agent binary to install at /usr/bin/cairn-agent.
        #[arg(long, env = "CAIRN_AGENT_BIN")]
        agent_bin: PathBuf,
        /// Central's endpoint for the agent; overrides the recipe's fleet.central_url.
        #[arg(long, env = "CAIRN_CENTRAL_URL")]
        central_url: Option<String>,
        /// Central's CA certificate (PEM) installed as /etc/cairn/central-ca.pem.
        #[arg(long, env = "CAIRN_CENTRAL_CA")]
        ca: Option<PathBuf>,
        /// File with the fleet enrollment token, installed as /etc/cairn/enrollment-token (0600).
        #[arg(long, env = "CAIRN_ENROLLMENT_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// Secure Boot signing key (PEM). Default: OVMF's snakeoil key (test firmware only).
        #[arg(long, env = "CAIRN_SB_KEY", default_value = cairn_image::uki::SNAKEOIL_KEY)]
        sb_key: PathBuf,
        /// Secure Boot certificate (PEM) matching --sb-key.
        #[arg(long, env = "CAIRN_SB_CERT", default_value = cairn_image::uki::SNAKEOIL_CERT)]
        sb_cert: PathBuf,
        /// Passphrase of an encrypted --sb-key ("snakeoil" for the default key).
        #[arg(long, env = "CAIRN_SB_KEY_PASS", hide_env_values = true)]
        sb_key_pass: Option<String>,
        /// Fleet update signing key (from `cairn-image keys`).
        #[arg(long, env = "CAIRN_UPDATE_KEY")]
        update_key: PathBuf,
        /// Fleet update certificate (from `cairn-image keys`), also the image's RAUC keyring.
        #[arg(long, env = "CAIRN_UPDATE_CERT")]
        update_cert: PathBuf,
        /// Cache for the bootstrapped root filesystem. Default: target/cairn-image/cache when
        /// run from the workspace, none elsewhere.
        #[arg(long, env = "CAIRN_IMAGE_CACHE")]
        cache_dir: Option<PathBuf>,
        /// Bootstrap the root filesystem even when a cached one exists.
        #[arg(long)]
        no_cache: bool,
        /// Keep OUT/.partial after a failed build (for debugging).
        #[arg(long)]
        keep_partial: bool,
        /// Build even when the mirror no longer has the locked versions (the drift is printed
        /// and the SBOM lists what was installed). For test builds only: a release build must
        /// match its lock.
        #[arg(long, env = "CAIRN_IMAGE_ALLOW_LOCK_DRIFT")]
        allow_lock_drift: bool,
    },
    /// Resolve the recipe's packages on the mirror and rewrite its lock file.
    Lock {
        /// The recipe.
        recipe: PathBuf,
        /// Scratch directory (default: a temp dir).
        #[arg(long)]
        work: Option<PathBuf>,
    },
    /// Generate a test fleet update key and certificate (openssl, key mode 0600).
    Keys {
        /// Directory for update.key.pem and update.cert.pem.
        #[arg(long)]
        out: PathBuf,
        /// Certificate common name.
        #[arg(long, default_value = "Cairn test fleet update key")]
        name: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Build {
            recipe,
            out,
            agent_bin,
            central_url,
            ca,
            token_file,
            sb_key,
            sb_cert,
            sb_key_pass,
            update_key,
            update_cert,
            cache_dir,
            no_cache,
            keep_partial,
            allow_lock_drift,
        } => {
            let recipe = Recipe::load(&recipe)?;
            let cache_dir = if no_cache {
                None
            } else {
                cache_dir.or_else(|| {
                    std::path::Path::new("target")
                        .is_dir()
                        .then(|| PathBuf::from("target/cairn-image/cache"))
                })
            };
            let options = BuildOptions {
                out_dir: out,
                agent_bin,
                central_url,
                central_ca: ca,
                token_file,
                sb_key,
                sb_cert,
                sb_key_pass,
                update_key,
                update_cert,
                cache_dir,
                keep_partial,
                allow_lock_drift,
            };
            let report = build(&recipe, &options, &mut |event| match event {
                Progress::Started(_) => {
                    eprint!("{event}");
                    let _ = std::io::Write::flush(&mut std::io::stderr());
                }
                Progress::Finished(_, elapsed) => {
                    eprintln!(" done in {:.1}s", elapsed.as_secs_f64())
                }
            })?;
            println!("{}", report.summary());
        }
        Command::Lock { recipe, work } => {
            let recipe = Recipe::load(&recipe)?;
            let tmp = tempfile_dir()?;
            let work = work.unwrap_or_else(|| tmp.clone());
            eprintln!(
                "resolving {} packages on the mirror (mmdebstrap) ...",
                recipe.target.name
            );
            let resolved = rootfs::resolve_lock(&recipe, &work)?;
            let header = format!(
                "cairn-image lock for recipe {} ({} {}): every package in the root filesystem.\n\
                 Regenerate with `cairn-image lock {}`; name=version sha256:<.deb digest>.",
                recipe.target.name,
                recipe.debian.suite,
                recipe.target.arch,
                recipe.path.display()
            );
            let path = recipe.lock_path();
            std::fs::write(&path, resolved.render(&header))
                .with_context(|| format!("writing {}", path.display()))?;
            let _ = std::fs::remove_dir_all(&tmp);
            let unpinned = resolved
                .packages
                .values()
                .filter(|p| p.sha256.is_none())
                .count();
            println!(
                "wrote {} ({} packages, {} without a digest)",
                path.display(),
                resolved.packages.len(),
                unpinned
            );
            let _ = lock::Lock::load(&path)?;
        }
        Command::Keys { out, name } => {
            let generated = keys::generate(&out, &name)?;
            println!(
                "update key:  {}\nupdate cert: {}",
                generated.key.display(),
                generated.cert.display()
            );
        }
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cairn-image-lock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

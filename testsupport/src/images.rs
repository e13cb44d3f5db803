//! OCI test images for host integration tests: busybox images built from the host's static
//! busybox (Debian's busybox-static), pushed to a registry over the v2 HTTP API or written as OCI
//! archives. Moved here from cairn-runtime's tests so every crate builds the same images.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// The static busybox from Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";

/// True when [`BUSYBOX`] exists; otherwise a loud skip (or a panic under `CI=true`).
///
/// # Panics
/// Under `CI=true` when busybox-static is missing.
pub fn busybox_present() -> bool {
    if Path::new(BUSYBOX).exists() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{BUSYBOX} is required in CI (package busybox-static)");
    }
    eprintln!("\n======== SKIP: {BUSYBOX} missing (apt-get install busybox-static) ========\n");
    false
}

/// A built image: layer blobs with media types and diff ids, config and manifest bytes.
#[derive(Clone)]
pub struct TestImage {
    /// Layer blobs with their media type and diff id (digest of the uncompressed tar).
    pub layers: Vec<(Vec<u8>, &'static str, String)>,
    /// The image config (JSON).
    pub config: Vec<u8>,
    /// The OCI manifest (JSON).
    pub manifest: Vec<u8>,
}

impl TestImage {
    /// `sha256:<hex>` of the manifest.
    pub fn manifest_digest(&self) -> String {
        digest(&self.manifest)
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn tar_header(path: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// The base layer (uncompressed tar): busybox, a symlink per applet, a few directories.
fn busybox_layer() -> &'static Vec<u8> {
    static LAYER: OnceLock<Vec<u8>> = OnceLock::new();
    LAYER.get_or_init(|| {
        let mut b = tar::Builder::new(Vec::new());
        for dir in [
            "bin", "etc", "proc", "sys", "dev", "root", "run", "var", "www", "data", "tmp",
        ] {
            let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
            let mut h = tar_header(dir, tar::EntryType::Directory, 0, mode);
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        }
        let bin = std::fs::read(BUSYBOX).unwrap();
        let mut h = tar_header(
            "bin/busybox",
            tar::EntryType::Regular,
            bin.len() as u64,
            0o755,
        );
        h.set_cksum();
        b.append(&h, bin.as_slice()).unwrap();
        let list = std::process::Command::new(BUSYBOX)
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8_lossy(&list.stdout)
            .lines()
            .filter(|a| *a != "busybox" && !a.contains('/'))
        {
            let mut h = tar_header(&format!("bin/{applet}"), tar::EntryType::Symlink, 0, 0o777);
            h.set_link_name("busybox").unwrap();
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        }
        for (path, text) in [
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            ("etc/group", "root:x:0:\n"),
            ("www/index.html", "hello from cairn\n"),
        ] {
            let mut h = tar_header(path, tar::EntryType::Regular, text.len() as u64, 0o644);
            h.set_cksum();
            b.append(&h, text.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    })
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A busybox image: a gzip base layer plus, when `files` is not empty, an uncompressed layer with
/// those files (use different files to get a different image).
pub fn busybox_image(files: &[(&str, &str)]) -> TestImage {
    let files: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|(path, text)| (*path, text.as_bytes(), 0o644))
        .collect();
    busybox_image_with(&files)
}

/// Source of the confinement probe (see `testsupport/probe/probe.rs`).
const PROBE_SOURCE: &str = include_str!("../probe/probe.rs");

/// A busybox image with the confinement probe as `/bin/probe`, compiled once per test process
/// with plain `rustc` as a static executable.
pub fn probe_image() -> TestImage {
    static PROBE: OnceLock<Vec<u8>> = OnceLock::new();
    let probe = PROBE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("probe.rs");
        std::fs::write(&source, PROBE_SOURCE).unwrap();
        let out = dir.path().join("probe");
        let status = std::process::Command::new("rustc")
            .args([
                "--edition",
                "2021",
                "-O",
                "-C",
                "target-feature=+crt-static",
                "-o",
            ])
            .arg(&out)
            .arg(&source)
            .status()
            .expect("run rustc to build the confinement probe");
        assert!(
            status.success(),
            "rustc could not build the confinement probe"
        );
        std::fs::read(out).unwrap()
    });
    busybox_image_with(&[("bin/probe", probe, 0o755)])
}

/// A busybox image plus, when `files` is not empty, an uncompressed layer with those files
/// (path, content, mode).
pub fn busybox_image_with(files: &[(&str, &[u8], u32)]) -> TestImage {
    static BASE: OnceLock<(Vec<u8>, String)> = OnceLock::new();
    let (base_gz, base_diff) = BASE.get_or_init(|| {
        let raw = busybox_layer();
        (gzip(raw), digest(raw))
    });
    let mut layers = vec![(
        base_gz.clone(),
        "application/vnd.oci.image.layer.v1.tar+gzip",
        base_diff.clone(),
    )];
    if !files.is_empty() {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content, mode) in files {
            let mut h = tar_header(path, tar::EntryType::Regular, content.len() as u64, *mode);
            h.set_cksum();
            b.append(&h, *content).unwrap();
        }
        let raw = b.into_inner().unwrap();
        let diff = digest(&raw);
        layers.push((raw, "application/vnd.oci.image.layer.v1.tar", diff));
    }
    let diff_ids: Vec<&String> = layers.iter().map(|l| &l.2).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "FROM_IMAGE=yes"],
            "Cmd": ["sh"],
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": layers.iter().map(|(blob, media, _)| serde_json::json!({
            "mediaType": media, "digest": digest(blob), "size": blob.len()
        })).collect::<Vec<_>>()
    }))
    .unwrap();
    TestImage {
        layers,
        config,
        manifest,
    }
}

/// Push `image` as `repo:tag` to the registry at `base_url` over the v2 HTTP API.
pub async fn push(
    base_url: &str,
    repo: &str,
    tag: &str,
    image: &TestImage,
    auth: Option<(&str, &str)>,
) {
    push_trusting(base_url, None, repo, tag, image, auth).await;
}

/// [`push`] to a registry whose HTTPS certificate comes from the CA `ca_pem` (PEM).
pub async fn push_trusting(
    base_url: &str,
    ca_pem: Option<&str>,
    repo: &str,
    tag: &str,
    image: &TestImage,
    auth: Option<(&str, &str)>,
) {
    let mut builder = reqwest::Client::builder();
    if let Some(pem) = ca_pem {
        let ca = reqwest::Certificate::from_pem(pem.as_bytes())
            .unwrap_or_else(|e| panic!("the registry's CA does not parse: {e}"));
        builder = builder.add_root_certificate(ca);
    }
    let http = builder
        .build()
        .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"));
    let with_auth = |rb: reqwest::RequestBuilder| match auth {
        Some((u, p)) => rb.basic_auth(u, Some(p)),
        None => rb,
    };
    let mut blobs: Vec<&Vec<u8>> = image.layers.iter().map(|l| &l.0).collect();
    blobs.push(&image.config);
    for blob in blobs {
        let d = digest(blob);
        let head = with_auth(http.head(format!("{base_url}/v2/{repo}/blobs/{d}")))
            .send()
            .await
            .unwrap();
        if head.status().is_success() {
            continue;
        }
        let start = with_auth(http.post(format!("{base_url}/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            start.status().as_u16(),
            202,
            "start upload: {:?}",
            start.text().await
        );
        let location = start.headers()["location"].to_str().unwrap().to_string();
        let location = if location.starts_with('/') {
            format!("{base_url}{location}")
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = with_auth(http.put(format!("{location}{sep}digest={d}")))
            .header("content-type", "application/octet-stream")
            .body(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            put.status().as_u16(),
            201,
            "upload {d}: {:?}",
            put.text().await
        );
    }
    let put = with_auth(http.put(format!("{base_url}/v2/{repo}/manifests/{tag}")))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(image.manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        put.status().as_u16(),
        201,
        "put manifest: {:?}",
        put.text().await
    );
}

/// Write `image` as an OCI archive (tar of an OCI layout) whose index names it `ref_name`.
pub fn write_oci_archive(path: &Path, image: &TestImage, ref_name: &str) -> PathBuf {
    write_oci_archive_with(path, image, ref_name, &[])
}

/// Like [`write_oci_archive`], but store `bytes` under the blob path of `digest` instead of the
/// real content (to test digest verification).
pub fn write_oci_archive_with(
    path: &Path,
    image: &TestImage,
    ref_name: &str,
    overrides: &[(String, Vec<u8>)],
) -> PathBuf {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar_header(name, tar::EntryType::Regular, data.len() as u64, 0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": image.manifest_digest(),
            "size": image.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": ref_name}
        }]
    }))
    .unwrap();
    add("index.json", &index);
    let mut blobs: Vec<&Vec<u8>> = image.layers.iter().map(|l| &l.0).collect();
    blobs.push(&image.config);
    blobs.push(&image.manifest);
    for blob in blobs {
        let d = digest(blob);
        let data = overrides
            .iter()
            .find(|(o, _)| *o == d)
            .map_or(blob.as_slice(), |(_, bytes)| bytes.as_slice());
        add(
            &format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
            data,
        );
    }
    b.finish().unwrap();
    path.to_path_buf()
}

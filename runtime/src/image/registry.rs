//! A minimal OCI distribution (registry v2) client: manifests and blobs over HTTP(S), basic or
//! bearer-token auth (including the token-server challenge flow), Range requests to resume.

use std::time::Duration;

use cairn_compose::{check_digest, ImageRef};
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE, RANGE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use tokio::sync::Mutex;
use tracing::{debug, Instrument};

use super::oci::{self, Descriptor};
use super::store::{store_image, ImageInfo};
use super::{BlobSource, BlobStream, ImageError, ProgressFn};
use crate::containerd::Containerd;

/// Largest manifest or index accepted.
const MAX_MANIFEST: usize = 8 << 20;

/// Credentials for a registry.
#[derive(Clone)]
pub enum Credentials {
    /// HTTP basic auth (also used to get a token when the registry uses a token server).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
    /// A bearer token sent as is.
    Bearer {
        /// The token.
        token: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::Bearer { .. } => write!(f, "Bearer(<redacted>)"),
        }
    }
}

/// How to reach a registry.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Credentials, if the registry needs them.
    pub credentials: Option<Credentials>,
    /// Plain HTTP instead of HTTPS; `None` = plain HTTP only for `localhost`/`127.0.0.1`.
    pub plain_http: Option<bool>,
    /// Certificate authorities (PEM) trusted for this registry's TLS besides the system's
    /// roots (`/etc/ssl/certs`) and the built-in web roots.
    pub extra_roots_pem: Option<String>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response.
    pub read_timeout: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            credentials: None,
            plain_http: None,
            extra_roots_pem: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// Pull `reference` from its registry into containerd (content, snapshots, image record named by
/// the normalized reference, e.g. `127.0.0.1:5000/cairn/web:v1`). Blobs already present are
/// skipped, partial ones resumed with Range requests; every digest is verified.
///
/// # Errors
/// [`ImageError`] naming the failed step: reference, HTTP, auth, digest, document or containerd.
#[tracing::instrument(skip(ctr, opts, progress), fields(namespace = ctr.namespace()))]
pub async fn pull_image(
    ctr: &Containerd,
    reference: &str,
    opts: &PullOptions,
    progress: ProgressFn<'_>,
) -> Result<ImageInfo, ImageError> {
    let image = ImageRef::parse(reference).map_err(|reason| ImageError::Reference {
        reference: reference.to_string(),
        reason,
    })?;
    let client = RegistryClient::new(&image, opts)?;
    let (top, bytes) = client.fetch_manifest(image.manifest_reference()).await?;
    store_image(ctr, &client, &image.to_string(), top, bytes, progress).await
}

/// A registry client for one repository.
pub(crate) struct RegistryClient {
    http: reqwest::Client,
    base: String,
    registry: String,
    repository: String,
    credentials: Option<Credentials>,
    token: Mutex<Option<String>>,
}

impl RegistryClient {
    pub(crate) fn new(image: &ImageRef, opts: &PullOptions) -> Result<RegistryClient, ImageError> {
        let plain = opts.plain_http.unwrap_or_else(|| image.is_local());
        let scheme = if plain { "http" } else { "https" };
        let base = format!("{scheme}://{}", image.api_host());
        let mut builder = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .user_agent(concat!("cairn-runtime/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &opts.extra_roots_pem {
            let bad = |reason: String| ImageError::TrustedCas {
                registry: image.registry.clone(),
                reason,
            };
            let cas = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| bad(e.to_string()))?;
            if cas.is_empty() {
                return Err(bad("no PEM certificate in it".into()));
            }
            for ca in cas {
                builder = builder.add_root_certificate(ca);
            }
        }
        let http = builder.build().map_err(|source| ImageError::Http {
            url: base.clone(),
            source,
        })?;
        Ok(RegistryClient {
            http,
            base,
            registry: image.registry.clone(),
            repository: image.repository.clone(),
            credentials: opts.credentials.clone(),
            token: Mutex::new(None),
        })
    }

    /// GET `url` with auth; on a 401 answer the challenge (get a token) and retry once.
    async fn get(&self, url: &str, headers: HeaderMap) -> Result<Response, ImageError> {
        for attempt in 0..2 {
            let mut req = self.http.get(url).headers(headers.clone());
            let token = self.token.lock().await.clone();
            req = match (&token, &self.credentials) {
                (Some(token), _) => req.bearer_auth(token),
                (None, Some(Credentials::Basic { username, password })) => {
                    req.basic_auth(username, Some(password))
                }
                (None, Some(Credentials::Bearer { token })) => req.bearer_auth(token),
                (None, None) => req,
            };
            let resp = req.send().await.map_err(|source| ImageError::Http {
                url: url.to_string(),
                source,
            })?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if attempt == 1 || token.is_some() {
                return Err(self.auth_error(format!(
                    "still unauthorized after authenticating (challenge {challenge:?})"
                )));
            }
            self.answer_challenge(&challenge).await?;
        }
        unreachable!("the loop returns on its second pass")
    }

    fn auth_error(&self, reason: String) -> ImageError {
        ImageError::Auth {
            registry: self.registry.clone(),
            reason,
        }
    }

    /// Handle a `WWW-Authenticate` challenge: fetch a token for `Bearer`; for `Basic` there is
    /// nothing more to try.
    #[tracing::instrument(skip(self))]
    async fn answer_challenge(&self, challenge: &str) -> Result<(), ImageError> {
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" => {
                let realm = params
                    .iter()
                    .find(|(k, _)| k == "realm")
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| self.auth_error("the Bearer challenge has no realm".into()))?;
                let mut query: Vec<(String, String)> = params
                    .iter()
                    .filter(|(k, _)| k == "service")
                    .cloned()
                    .collect();
                let scope = params
                    .iter()
                    .find(|(k, _)| k == "scope")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                query.push(("scope".into(), scope));
                let mut req = self.http.get(&realm).query(&query);
                if let Some(Credentials::Basic { username, password }) = &self.credentials {
                    req = req.basic_auth(username, Some(password));
                }
                let resp = req.send().await.map_err(|source| ImageError::Http {
                    url: realm.clone(),
                    source,
                })?;
                if !resp.status().is_success() {
                    return Err(
                        self.auth_error(format!("token server {realm} answered {}", resp.status()))
                    );
                }
                let body: serde_json::Value =
                    resp.json().await.map_err(|source| ImageError::Http {
                        url: realm.clone(),
                        source,
                    })?;
                let token = body
                    .get("token")
                    .or_else(|| body.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| {
                        self.auth_error(format!("token server {realm} sent no token"))
                    })?;
                *self.token.lock().await = Some(token.to_string());
                Ok(())
            }
            "basic" if self.credentials.is_none() => Err(self.auth_error(
                "the registry requires a username and password; none are configured".into(),
            )),
            "basic" => Err(self.auth_error("username or password refused".into())),
            _ => Err(self.auth_error(format!("unsupported challenge {challenge:?}"))),
        }
    }

    /// Fetch the manifest or index `reference` (tag or digest); returns its descriptor and bytes,
    /// with the digest computed and checked against a pinned digest and `Docker-Content-Digest`.
    #[tracing::instrument(skip(self), fields(registry = %self.registry, repository = %self.repository))]
    pub(crate) async fn fetch_manifest(
        &self,
        reference: &str,
    ) -> Result<(Descriptor, Vec<u8>), ImageError> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.repository);
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(concat!(
            "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, ",
            "application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"
        )));
        let resp = self.get(&url, headers).await?;
        let resp = check_status(&url, resp).await?;
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = read_limited(&url, resp, MAX_MANIFEST).await?;
        let digest = oci::sha256_digest(&bytes);
        let expected = if check_digest(reference).is_ok() {
            Some(reference.to_string())
        } else {
            header_digest.filter(|d| d.starts_with("sha256:"))
        };
        if let Some(expected) = expected {
            if expected != digest {
                return Err(ImageError::DigestMismatch {
                    what: format!("manifest {url}"),
                    expected,
                    actual: digest,
                });
            }
        }
        let media_type = if media_type.is_empty() || media_type == "application/json" {
            match oci::parse_document("", &bytes) {
                Ok(oci::Document::Index(_)) => oci::MEDIA_OCI_INDEX.to_string(),
                _ => oci::MEDIA_OCI_MANIFEST.to_string(),
            }
        } else {
            media_type
        };
        debug!(%digest, %media_type, "manifest fetched");
        Ok((
            Descriptor {
                media_type,
                digest,
                size: bytes.len() as u64,
                platform: None,
                annotations: Default::default(),
            },
            bytes,
        ))
    }
}

impl BlobSource for RegistryClient {
    async fn open_blob(
        &self,
        desc: &Descriptor,
        offset: u64,
    ) -> Result<(u64, BlobStream), ImageError> {
        let span = tracing::info_span!("registry_blob", digest = %desc.digest, offset);
        async {
            let url = format!("{}/v2/{}/blobs/{}", self.base, self.repository, desc.digest);
            let mut headers = HeaderMap::new();
            if offset > 0 {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes={offset}-")) {
                    headers.insert(RANGE, v);
                }
            }
            let mut resp = self.get(&url, headers).await?;
            if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
                resp = self.get(&url, HeaderMap::new()).await?;
            }
            let resp = check_status(&url, resp).await?;
            let start = if resp.status() == StatusCode::PARTIAL_CONTENT {
                let range = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if range.starts_with(&format!("bytes {offset}-")) {
                    offset
                } else {
                    return Err(ImageError::Registry {
                        url,
                        status: 206,
                        body: format!("unexpected Content-Range {range:?}"),
                    });
                }
            } else {
                0
            };
            let stream = resp.bytes_stream().map(move |r| {
                r.map(|b| b.to_vec()).map_err(|source| ImageError::Http {
                    url: url.clone(),
                    source,
                })
            });
            Ok((start, stream.boxed()))
        }
        .instrument(span)
        .await
    }
}

async fn check_status(url: &str, resp: Response) -> Result<Response, ImageError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let mut body: String = body.chars().take(300).collect();
    if status == 404 {
        body = format!("not found (check the repository and tag): {body}");
    }
    Err(ImageError::Registry {
        url: url.to_string(),
        status,
        body,
    })
}

async fn read_limited(url: &str, resp: Response, max: usize) -> Result<Vec<u8>, ImageError> {
    let mut stream = resp.bytes_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.map_err(|source| ImageError::Http {
            url: url.to_string(),
            source,
        })?);
        if out.len() > max {
            return Err(ImageError::Registry {
                url: url.to_string(),
                status: 200,
                body: format!("document larger than {max} bytes"),
            });
        }
    }
    Ok(out)
}

/// Split `Scheme k1="v1",k2=v2` into the scheme and its parameters (quoted values may contain
/// commas).
fn parse_challenge(header: &str) -> (String, Vec<(String, String)>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.push((key.trim().to_string(), value.trim().to_string()));
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(
            params[0],
            ("realm".into(), "https://auth.docker.io/token".into())
        );
        assert_eq!(params[1], ("service".into(), "registry.docker.io".into()));
        assert_eq!(
            params[2],
            ("scope".into(), "repository:a/b:pull,push".into())
        );
        let (scheme, params) = parse_challenge("Basic realm=cairn-test");
        assert_eq!(scheme, "Basic");
        assert_eq!(params, vec![("realm".into(), "cairn-test".into())]);
    }

    #[test]
    fn credentials_are_redacted() {
        let c = Credentials::Basic {
            username: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}

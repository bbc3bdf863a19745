//! Pulling images from registries over the OCI distribution API (v2).
//!
//! [`pull`] resolves a reference's manifest (OCI or Docker schema 2; an index or manifest list
//! picks linux and this machine's architecture), downloads the config and the layers (three
//! at once) into a staging OCI layout, checking each blob's digest and size while it streams,
//! and imports that layout into the node's image store, which checks every digest again and
//! leaves nothing behind when anything fails. An interrupted pull leaves only its staging
//! directory, which the store clears.
//!
//! Auth: anonymous, basic, and the bearer-token flow (`WWW-Authenticate: Bearer realm=…,
//! service=…, scope=…`), with the user's credentials when given. Transport: TLS (rustls) with
//! the system's roots and, as docker's `certs.d`, a registry's own CA from
//! `<certs dir>/HOST:PORT/ca.crt` (`/etc/shoal/certs.d`); plain HTTP only for registries listed
//! as insecure (`shoald --insecure-registry`) and for localhost.
//!
//! The client is hyper over tokio; every request has a connect, answer and idle timeout.

pub mod reference;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use reference::Reference;
use sha2::{Digest as _, Sha256};
use shoal_runtime::digest::Digest;
use shoal_runtime::image::{go_arch, ImageRecord, ImageStore};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Connecting to a registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A registry's answer (its headers).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Silence within a body being read.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Layers fetched at once (docker's default).
pub const PARALLEL: usize = 3;

/// Manifest types asked for, in order of preference.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// A pull failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference is not an image name.
    #[error("invalid reference format {0:?}: {1}")]
    BadReference(String, String),
    /// The registry could not be reached.
    #[error("{registry}: {message}")]
    Transport {
        /// Registry.
        registry: String,
        /// What failed.
        message: String,
    },
    /// The registry said no (`unauthorized`, `manifest unknown`, …).
    #[error("{registry}: {message}")]
    Registry {
        /// Registry.
        registry: String,
        /// HTTP status.
        status: u16,
        /// The registry's words.
        message: String,
    },
    /// What arrived is not what was asked for.
    #[error("{0}")]
    Content(String),
    /// The image store refused it.
    #[error("{0}")]
    Store(#[from] shoal_runtime::image::ImageError),
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Where registries' own CAs are looked for by default (`HOST:PORT/ca.crt`), as docker's
/// `/etc/docker/certs.d`.
pub const CERTS_DIR: &str = "/etc/shoal/certs.d";

/// What a pull or push is doing, for progress displays.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    /// A blob (config or layer) is being fetched or sent.
    Start {
        /// Its digest.
        digest: String,
        /// Its size in bytes.
        size: u64,
    },
    /// Bytes of that blob moved so far (sent now and then, not for every packet).
    Advance {
        /// Its digest.
        digest: String,
        /// Bytes moved so far.
        bytes: u64,
    },
    /// That blob is done.
    Done {
        /// Its digest.
        digest: String,
    },
    /// Anything else worth a line.
    Note(String),
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Start { digest, size } => write!(f, "{}: {size} bytes", short(digest)),
            Progress::Advance { digest, bytes } => {
                write!(f, "{}: {bytes} bytes so far", short(digest))
            }
            Progress::Done { digest } => write!(f, "{}: done", short(digest)),
            Progress::Note(n) => f.write_str(n),
        }
    }
}

/// The first 12 hex digits of a digest, as docker shows layers.
pub fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries (`host:port`) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// User name and password (or token) for the registry.
    pub credentials: Option<(String, String)>,
    /// Where registries' CAs are (`None`: [`CERTS_DIR`]).
    pub certs_dir: Option<std::path::PathBuf>,
    /// Mirrors of Docker Hub (`http://host:port`, `https://host:port`, or `host:port` for
    /// HTTPS), tried in order before Docker Hub itself, as docker's `registry-mirrors`.
    pub mirrors: Vec<String>,
    /// Registries never contacted (`shoald --block-registry`; `docker.io` for Docker Hub):
    /// a pull from one fails at once, its mirrors aside.
    pub blocked: Vec<String>,
}

/// The TLS settings for `registry`: the system's roots, and its own CA from `certs_dir`.
fn tls_config(
    registry: &str,
    certs_dir: &Path,
) -> Result<tokio_rustls::TlsConnector, RegistryError> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let ca = certs_dir.join(registry).join("ca.crt");
    if let Ok(pem) = std::fs::read(&ca) {
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(io(format!("reading {}", ca.display())))?;
            roots.add(cert).map_err(|e| RegistryError::Transport {
                registry: registry.to_owned(),
                message: format!("{}: {e}", ca.display()),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Transport {
            registry: registry.to_owned(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One request's worth of a registry session: where, and the auth it has earned.
struct Session {
    registry: String,
    /// `http` or `https`.
    scheme: &'static str,
    tls: Option<tokio_rustls::TlsConnector>,
    host: String,
    repository: String,
    credentials: Option<(String, String)>,
    auth: Mutex<Option<String>>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RegistryError {
    let what = what.into();
    move |source| RegistryError::Io { what, source }
}

impl Session {
    fn transport(&self, message: impl std::fmt::Display) -> RegistryError {
        RegistryError::Transport {
            registry: self.registry.clone(),
            message: message.to_string(),
        }
    }

    /// One GET of `url` (`http://host[:port]/path`), with the session's auth header.
    async fn get_once(
        &self,
        url: &str,
        accept: Option<&str>,
        auth: Option<&str>,
    ) -> Result<Response<Incoming>, RegistryError> {
        let headers: Vec<(&str, String)> = accept
            .map(|a| ("accept", a.to_owned()))
            .into_iter()
            .collect();
        self.request_once(Method::GET, url, &headers, auth, Bytes::new())
            .await
    }

    /// HTTP/1.1 over `io` (TCP or TLS); the connection is driven on a task of its own.
    async fn handshake<T>(
        &self,
        io: T,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, RegistryError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.transport(e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// One request to `url` (`http(s)://host[:port]/path`).
    async fn request_once(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        auth: Option<&str>,
        body: Bytes,
    ) -> Result<Response<Incoming>, RegistryError> {
        let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            _ => return Err(self.transport(format!("{url}: not an http(s) URL"))),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let host_only = authority
            .rsplit_once(':')
            .filter(|(_, p)| p.parse::<u16>().is_ok())
            .map_or(authority, |(h, _)| h);
        let addr = if authority.contains(':') {
            authority.to_owned()
        } else if tls {
            format!("{authority}:443")
        } else {
            format!("{authority}:80")
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| {
                self.transport(format!(
                    "no connection to {addr} within {CONNECT_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| self.transport(format!("connecting to {addr}: {e}")))?;
        let mut sender = if tls {
            let connector = self.tls.clone().ok_or_else(|| {
                self.transport(format!("{url}: TLS is not set up for this registry"))
            })?;
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host_only.to_owned())
                .map_err(|e| self.transport(format!("{host_only}: {e}")))?;
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, stream))
                .await
                .map_err(|_| {
                    self.transport(format!(
                        "no TLS handshake with {addr} within {CONNECT_TIMEOUT:?}"
                    ))
                })?
                .map_err(|e| self.transport(format!("TLS with {addr}: {e}")))?;
            self.handshake(stream).await?
        } else {
            self.handshake(stream).await?
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", authority)
            .header("content-length", body.len());
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let req = req.body(Full::new(body)).map_err(|e| self.transport(e))?;
        tokio::time::timeout(ANSWER_TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| self.transport(format!("no answer within {ANSWER_TIMEOUT:?}")))?
            .map_err(|e| self.transport(e))
    }

    /// GET `path` on the registry, answering an auth challenge once; follows redirects; any
    /// status but success is an error in the registry's words.
    async fn get(
        &self,
        path: &str,
        accept: Option<&str>,
    ) -> Result<Response<Incoming>, RegistryError> {
        let headers: Vec<(&str, String)> = accept
            .map(|a| ("accept", a.to_owned()))
            .into_iter()
            .collect();
        let resp = self
            .send(Method::GET, path, &headers, Bytes::new(), true)
            .await?;
        if !resp.status().is_success() {
            return Err(self.refusal(resp).await);
        }
        Ok(resp)
    }

    /// The full URL of `path_or_url` (a path, or a `Location` the registry gave).
    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            format!("{}://{}{path_or_url}", self.scheme, self.host)
        }
    }

    /// Sends a request, answering an auth challenge once (and, when `follow`, following
    /// redirects); returns the final answer whatever its status.
    async fn send(
        &self,
        method: Method,
        path_or_url: &str,
        headers: &[(&str, String)],
        body: Bytes,
        follow: bool,
    ) -> Result<Response<Incoming>, RegistryError> {
        let mut url = self.url(path_or_url);
        let mut challenged = false;
        for _ in 0..5 {
            let auth = self.auth.lock().expect("auth lock").clone();
            let resp = self
                .request_once(method.clone(), &url, headers, auth.as_deref(), body.clone())
                .await?;
            let status = resp.status();
            if follow && status.is_redirection() {
                if let Some(loc) = resp.headers().get("location").and_then(|v| v.to_str().ok()) {
                    url = self.url(loc);
                    continue;
                }
            }
            if status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let challenge = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let header = self.answer_challenge(&challenge).await?;
                *self.auth.lock().expect("auth lock") = Some(header);
                continue;
            }
            return Ok(resp);
        }
        Err(self.transport(format!("{path_or_url}: too many redirects")))
    }

    /// The registry's error, in its own words (`{"errors":[{"code","message"}]}`).
    async fn refusal(&self, resp: Response<Incoming>) -> RegistryError {
        let status = resp.status();
        let body = read_small(resp).await.unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                // As docker shows them: `unauthorized: authentication required`.
                let e = v.get("errors")?.get(0)?.clone();
                let msg = e.get("message")?.as_str()?.to_owned();
                let code = e
                    .get("code")
                    .and_then(|c| c.as_str())
                    .map(|c| c.replace('_', " ").to_ascii_lowercase())
                    .unwrap_or_default();
                Some(if code.is_empty() || code == msg {
                    msg
                } else {
                    format!("{code}: {msg}")
                })
            })
            .unwrap_or_else(|| {
                status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_ascii_lowercase()
            });
        RegistryError::Registry {
            registry: self.registry.clone(),
            status: status.as_u16(),
            message,
        }
    }

    /// The Authorization header that answers `challenge` (basic, or a bearer token fetched
    /// from the realm with the user's credentials, if any).
    async fn answer_challenge(&self, challenge: &str) -> Result<String, RegistryError> {
        let basic = self.credentials.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        if challenge.to_ascii_lowercase().starts_with("basic") {
            return basic.ok_or_else(|| RegistryError::Registry {
                registry: self.registry.clone(),
                status: 401,
                message: "unauthorized: the registry needs a user name and password".into(),
            });
        }
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            return Err(RegistryError::Registry {
                registry: self.registry.clone(),
                status: 401,
                message: format!("unauthorized (challenge {challenge:?})"),
            });
        };
        let field = |name: &str| {
            params.split(',').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_owned())
            })
        };
        let realm =
            field("realm").ok_or_else(|| self.transport("bearer challenge without realm"))?;
        let mut query = Vec::new();
        if let Some(s) = field("service") {
            query.push(format!("service={s}"));
        }
        let scope = field("scope").or_else(|| {
            (!self.repository.is_empty()).then(|| format!("repository:{}:pull", self.repository))
        });
        if let Some(scope) = scope {
            query.push(format!("scope={scope}"));
        }
        let url = format!("{realm}?{}", query.join("&"));
        let resp = self.get_once(&url, None, basic.as_deref()).await?;
        if !resp.status().is_success() {
            return Err(self.refusal(resp).await);
        }
        let body = read_small(resp).await.map_err(|e| self.transport(e))?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| self.transport(format!("token answer: {e}")))?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| self.transport("the token answer has no token"))?;
        Ok(format!("Bearer {token}"))
    }
}

/// Reads a small body (manifests, errors, tokens: at most 4 MiB).
async fn read_small(resp: Response<Incoming>) -> Result<Vec<u8>, String> {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = tokio::time::timeout(IDLE_TIMEOUT, body.frame())
        .await
        .map_err(|_| "the body stalled".to_owned())?
    {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(d) = frame.data_ref() {
            out.extend_from_slice(d);
            if out.len() > 4 << 20 {
                return Err("more than 4 MiB".into());
            }
        }
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct Desc {
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Plat>,
}

#[derive(serde::Deserialize)]
struct Plat {
    architecture: String,
    os: String,
}

#[derive(serde::Deserialize)]
struct ManifestDoc {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    manifests: Vec<Desc>,
    #[serde(default)]
    config: Option<Desc>,
    #[serde(default)]
    layers: Vec<Desc>,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Fetches the manifest `r` names and checks its digest when one was asked for.
async fn manifest(s: &Session, r: &str) -> Result<(Vec<u8>, String), RegistryError> {
    let resp = s
        .get(&format!("/v2/{}/manifests/{r}", s.repository), Some(ACCEPT))
        .await?;
    let media = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = read_small(resp).await.map_err(|e| s.transport(e))?;
    if r.starts_with("sha256:") && sha256(&bytes) != r {
        return Err(RegistryError::Content(format!(
            "{}: manifest {r} arrived with digest {}",
            s.registry,
            sha256(&bytes)
        )));
    }
    Ok((bytes, media))
}

/// Streams blob `d` into `dir/blobs/sha256/<hex>`, checking size and digest as it goes.
/// How many bytes of a blob pass between two [`Progress::Advance`] reports.
const ADVANCE_EVERY: u64 = 512 << 10;

/// One lock per blob being fetched on this host: pulls that need the same layer at once
/// fetch it once.
fn blob_lock(digest: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: std::sync::OnceLock<
        Mutex<std::collections::HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>,
    > = std::sync::OnceLock::new();
    let mut locks = LOCKS.get_or_init(Default::default).lock().expect("locks");
    locks.retain(|_, w| w.strong_count() > 0);
    if let Some(l) = locks.get(digest).and_then(std::sync::Weak::upgrade) {
        return l;
    }
    let l = Arc::new(tokio::sync::Mutex::new(()));
    locks.insert(digest.to_owned(), Arc::downgrade(&l));
    l
}

/// Puts blob `d` in the staging layout `dir`: linked from the store when the host has it
/// (another image's layer), or from a blob another pull just fetched (`tmp/blobs`, verified),
/// else fetched from the registry, its digest and size checked as it streams.
async fn blob(
    s: &Session,
    d: &Desc,
    dir: &Path,
    store: &ImageStore,
    progress: &(impl Fn(Progress) + Send + Sync),
) -> Result<(), RegistryError> {
    let hex = d
        .digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| RegistryError::Content(format!("unsupported blob digest {:?}", d.digest)))?;
    let target = dir.join("blobs/sha256").join(hex);
    let lock = blob_lock(&d.digest);
    let _fetching = lock.lock().await;
    let shared = store.root().join("tmp/blobs").join(hex);
    let held = Digest::parse(&d.digest)
        .map(|dg| store.blob_file(&dg))
        .filter(|p| p.exists());
    for have in held.iter().chain(std::iter::once(&shared)) {
        if have.exists() && std::fs::hard_link(have, &target).is_ok() {
            progress(Progress::Note(format!(
                "{}: already exists",
                short(&d.digest)
            )));
            return Ok(());
        }
    }
    progress(Progress::Start {
        digest: d.digest.clone(),
        size: d.size,
    });
    if let Err(e) = fetch_blob(s, d, &shared, progress).await {
        let _ = std::fs::remove_file(shared.with_extension("partial"));
        return Err(e);
    }
    progress(Progress::Done {
        digest: d.digest.clone(),
    });
    std::fs::hard_link(&shared, &target).map_err(io(format!("linking {}", target.display())))
}

/// The fetched copies of an image's blobs that pulls share, removed when dropped (each
/// staging layout has its own link; the store its own copy once imported).
struct SharedBlobs<'a> {
    store: &'a ImageStore,
    digests: Vec<String>,
}

impl Drop for SharedBlobs<'_> {
    fn drop(&mut self) {
        let dir = self.store.root().join("tmp/blobs");
        for d in &self.digests {
            if let Some(hex) = d.strip_prefix("sha256:") {
                let _ = std::fs::remove_file(dir.join(hex));
            }
        }
        // Gone once no pull uses it any more.
        let _ = std::fs::remove_dir(&dir);
    }
}

/// Fetches blob `d` into `target`, checking its digest and size as it streams; nothing is at
/// `target` unless it is whole and right.
async fn fetch_blob(
    s: &Session,
    d: &Desc,
    target: &Path,
    progress: &(impl Fn(Progress) + Send + Sync),
) -> Result<(), RegistryError> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    let partial = target.with_extension("partial");
    let resp = s
        .get(&format!("/v2/{}/blobs/{}", s.repository, d.digest), None)
        .await?;
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(io(format!("creating {}", partial.display())))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut reported = 0u64;
    let mut body = resp.into_body();
    while let Some(frame) = tokio::time::timeout(IDLE_TIMEOUT, body.frame())
        .await
        .map_err(|_| s.transport(format!("blob {}: no data for {IDLE_TIMEOUT:?}", d.digest)))?
    {
        let frame = frame.map_err(|e| s.transport(format!("blob {}: {e}", d.digest)))?;
        if let Some(data) = frame.data_ref() {
            size += data.len() as u64;
            if size > d.size {
                return Err(RegistryError::Content(format!(
                    "{}: blob {} is larger than the {} bytes its manifest says",
                    s.registry, d.digest, d.size
                )));
            }
            hasher.update(data);
            file.write_all(data)
                .await
                .map_err(io(format!("writing {}", partial.display())))?;
            if size - reported >= ADVANCE_EVERY {
                reported = size;
                progress(Progress::Advance {
                    digest: d.digest.clone(),
                    bytes: size,
                });
            }
        }
    }
    file.flush().await.map_err(io("flushing a blob"))?;
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != d.digest || size != d.size {
        return Err(RegistryError::Content(format!(
            "{}: blob {} arrived as {actual} ({size} bytes, {} expected): refused",
            s.registry, d.digest, d.size
        )));
    }
    tokio::fs::rename(&partial, target)
        .await
        .map_err(io(format!("renaming {}", partial.display())))
}

/// Size of each chunk of a blob upload (the distribution API's PATCH).
const CHUNK: usize = 4 << 20;

/// Whether the registry has blob `digest` in the session's repository.
async fn has_blob(s: &Session, digest: &str) -> Result<bool, RegistryError> {
    let resp = s
        .send(
            Method::HEAD,
            &format!("/v2/{}/blobs/{digest}", s.repository),
            &[],
            Bytes::new(),
            true,
        )
        .await?;
    match resp.status() {
        st if st.is_success() => Ok(true),
        StatusCode::NOT_FOUND => Ok(false),
        _ => Err(s.refusal(resp).await),
    }
}

/// The `Location` of an answer, or an error in the registry's words.
async fn location(
    s: &Session,
    resp: Response<Incoming>,
    what: &str,
) -> Result<String, RegistryError> {
    if !resp.status().is_success() {
        return Err(s.refusal(resp).await);
    }
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| s.transport(format!("{what}: the registry gave no Location")))
}

/// Uploads blob `digest` from `file`: mounted from `from` (another repository of the same
/// registry) when the registry has it there, else in chunks (POST, PATCH…, PUT).
async fn upload_blob(
    s: &Session,
    digest: &str,
    file: &Path,
    from: Option<&str>,
    progress: &(impl Fn(Progress) + Send + Sync),
) -> Result<(), RegistryError> {
    let start_path = match from {
        Some(repo) => format!(
            "/v2/{}/blobs/uploads/?mount={digest}&from={repo}",
            s.repository
        ),
        None => format!("/v2/{}/blobs/uploads/", s.repository),
    };
    let resp = s
        .send(Method::POST, &start_path, &[], Bytes::new(), false)
        .await?;
    if resp.status() == StatusCode::CREATED {
        // Mounted across repositories: nothing to send.
        return Ok(());
    }
    let mut loc = location(s, resp, "starting an upload").await?;
    let bytes = tokio::fs::read(file)
        .await
        .map_err(io(format!("reading {}", file.display())))?;
    let mut offset = 0usize;
    while offset < bytes.len() {
        let end = (offset + CHUNK).min(bytes.len());
        let chunk = Bytes::copy_from_slice(&bytes[offset..end]);
        let headers = [
            ("content-type", "application/octet-stream".to_owned()),
            ("content-range", format!("{offset}-{}", end - 1)),
        ];
        let resp = s.send(Method::PATCH, &loc, &headers, chunk, false).await?;
        loc = location(s, resp, "uploading a chunk").await?;
        offset = end;
        progress(Progress::Advance {
            digest: digest.to_owned(),
            bytes: offset as u64,
        });
    }
    let sep = if loc.contains('?') { '&' } else { '?' };
    let resp = s
        .send(
            Method::PUT,
            &format!("{loc}{sep}digest={digest}"),
            &[("content-type", "application/octet-stream".to_owned())],
            Bytes::new(),
            false,
        )
        .await?;
    if !resp.status().is_success() {
        return Err(s.refusal(resp).await);
    }
    Ok(())
}

/// Pushes the image `source` (a name, id or digest in `store`) to `target`
/// (`host:5000/ns/app:tag`): every blob its registry lacks, then its manifest, byte for byte,
/// so its digest stays the same. Returns that digest.
pub async fn push(
    store: Arc<ImageStore>,
    source: &str,
    target: &str,
    options: &PullOptions,
    progress: impl Fn(Progress) + Send + Sync,
) -> Result<String, RegistryError> {
    let r = Reference::parse(target)?;
    let Some(tag) = r.tag.clone() else {
        return Err(RegistryError::BadReference(
            target.to_owned(),
            "push needs a tag".into(),
        ));
    };
    let image = store.get(source)?;
    let manifest_path = store.blob_file(&image.record.manifest);
    let bytes = std::fs::read(&manifest_path)
        .map_err(io(format!("reading {}", manifest_path.display())))?;
    let doc: ManifestDoc = serde_json::from_slice(&bytes)
        .map_err(|e| RegistryError::Content(format!("{source}: its manifest: {e}")))?;
    let media = if doc.media_type.is_empty() {
        "application/vnd.oci.image.manifest.v1+json".to_owned()
    } else {
        doc.media_type.clone()
    };
    let config = doc
        .config
        .as_ref()
        .ok_or_else(|| RegistryError::Content(format!("{source}: its manifest names no config")))?;
    // A blob already in another repository of the same registry is mounted, not sent again:
    // the image's other names there say where.
    let from: Option<String> = image.record.tags.iter().find_map(|t| {
        let other = Reference::parse(t).ok()?;
        (other.registry == r.registry && other.repository != r.repository)
            .then_some(other.repository)
    });
    let s = session(&r.registry, &r.repository, options)?;
    for d in std::iter::once(config).chain(doc.layers.iter()) {
        if has_blob(&s, &d.digest).await? {
            progress(Progress::Note(format!(
                "{}: already exists",
                short(&d.digest)
            )));
            continue;
        }
        let parsed = Digest::parse(&d.digest)
            .ok_or_else(|| RegistryError::Content(format!("unsupported digest {:?}", d.digest)))?;
        let file = store.blob_file(&parsed);
        progress(Progress::Start {
            digest: d.digest.clone(),
            size: d.size,
        });
        upload_blob(&s, &d.digest, &file, from.as_deref(), &progress).await?;
        progress(Progress::Done {
            digest: d.digest.clone(),
        });
    }
    let resp = s
        .send(
            Method::PUT,
            &format!("/v2/{}/manifests/{tag}", r.repository),
            &[("content-type", media)],
            Bytes::from(bytes.clone()),
            false,
        )
        .await?;
    if !resp.status().is_success() {
        return Err(s.refusal(resp).await);
    }
    let digest = sha256(&bytes);
    progress(Progress::Note(format!(
        "{tag}: digest: {digest} size: {}",
        bytes.len()
    )));
    Ok(digest)
}

/// The session for `registry` (`host:port`, `docker.io`) and `repository`.
fn session(
    registry: &str,
    repository: &str,
    options: &PullOptions,
) -> Result<Session, RegistryError> {
    if options.blocked.iter().any(|b| b == registry) {
        return Err(RegistryError::Transport {
            registry: registry.to_owned(),
            message: "this node does not contact it (shoald --block-registry)".into(),
        });
    }
    let host = if registry == reference::DOCKER_HUB {
        reference::DOCKER_HUB_API.to_owned()
    } else {
        registry.to_owned()
    };
    let plain = options.insecure.iter().any(|i| i == registry)
        || host.starts_with("localhost")
        || host.starts_with("127.");
    let tls = if plain {
        None
    } else {
        let dir = options
            .certs_dir
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from(CERTS_DIR));
        Some(tls_config(registry, &dir)?)
    };
    Ok(Session {
        registry: registry.to_owned(),
        scheme: if plain { "http" } else { "https" },
        tls,
        host,
        repository: repository.to_owned(),
        credentials: options.credentials.clone(),
        auth: Mutex::new(None),
    })
}

/// Checks `options.credentials` against `registry` (`docker login`): the registry's API root
/// must answer once the challenge is met.
pub async fn login(registry: &str, options: &PullOptions) -> Result<(), RegistryError> {
    let s = session(registry, "", options)?;
    let resp = s.get("/v2/", None).await?;
    let _ = read_small(resp).await;
    Ok(())
}

/// The digest `reference`'s tag points at now (of its index when it has one, as docker pins),
/// as `name:tag@sha256:…`; a reference already pinned is returned as it is.
pub async fn resolve(reference: &str, options: &PullOptions) -> Result<String, RegistryError> {
    let r = Reference::parse(reference)?;
    if r.digest.is_some() {
        return Ok(reference.to_owned());
    }
    let s = session(&r.registry, &r.repository, options)?;
    let (bytes, _) = manifest(&s, r.manifest_ref()).await?;
    let name = reference.trim();
    let name = if name
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'))
    {
        name.to_owned()
    } else {
        format!("{name}:latest")
    };
    Ok(format!("{name}@{}", sha256(&bytes)))
}

/// Pulls `reference` into `store`; returns what it imported. `progress` hears a line per
/// step (`pulling layer sha256:… (1.2 MB)`, `layer … done`).
pub async fn pull(
    store: Arc<ImageStore>,
    reference: &str,
    options: &PullOptions,
    progress: impl Fn(Progress) + Send + Sync,
) -> Result<ImageRecord, RegistryError> {
    let r = Reference::parse(reference)?;
    if r.registry != reference::DOCKER_HUB || options.mirrors.is_empty() {
        let s = session(&r.registry, &r.repository, options)?;
        return pull_from(&store, &r, &s, &progress).await;
    }
    // Docker Hub's images come from its mirrors first; Docker Hub answers when none has it.
    let mut first_error = None;
    for url in &options.mirrors {
        let m = mirror_session(url, &r.repository, options)?;
        match pull_from(&store, &r, &m, &progress).await {
            Ok(record) => return Ok(record),
            Err(e) => {
                tracing::warn!(mirror = %url, %reference, error = %e, "pull from mirror failed");
                progress(Progress::Note(format!("mirror {url}: {e}")));
                first_error.get_or_insert(e);
            }
        }
    }
    let hub = match session(&r.registry, &r.repository, options) {
        Ok(s) => pull_from(&store, &r, &s, &progress).await,
        Err(e) => Err(e),
    };
    match hub {
        // Docker Hub out of reach (or blocked) says less than what the mirror said.
        Err(RegistryError::Transport { .. }) if first_error.is_some() => {
            Err(first_error.expect("checked"))
        }
        other => other,
    }
}

/// A session with a Docker Hub mirror (`http://host:port`, `https://host:port`, `host:port`).
fn mirror_session(
    url: &str,
    repository: &str,
    options: &PullOptions,
) -> Result<Session, RegistryError> {
    let (plain, host) = match url.split_once("://") {
        Some(("http", h)) => (true, h),
        Some(("https", h)) => (false, h),
        Some(_) => {
            return Err(RegistryError::BadReference(
                url.to_owned(),
                "a mirror is http://HOST:PORT or https://HOST:PORT".into(),
            ))
        }
        None => (false, url),
    };
    let host = host.trim_end_matches('/');
    let mut s = session(host, repository, options)?;
    if plain {
        s.scheme = "http";
        s.tls = None;
    }
    // Mirrors are read anonymously: the user's Docker Hub credentials stay with Docker Hub.
    s.credentials = None;
    Ok(s)
}

/// Pulls the image `r` names through the session `s` (its registry or a mirror).
async fn pull_from(
    store: &Arc<ImageStore>,
    r: &Reference,
    s: &Session,
    progress: &(impl Fn(Progress) + Send + Sync),
) -> Result<ImageRecord, RegistryError> {
    let (mut bytes, mut media) = manifest(s, r.manifest_ref()).await?;
    let mut doc: ManifestDoc = serde_json::from_slice(&bytes)
        .map_err(|e| RegistryError::Content(format!("{}: manifest: {e}", s.registry)))?;
    if !doc.manifests.is_empty() {
        let arch = go_arch();
        let pick = doc
            .manifests
            .iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
            })
            .ok_or_else(|| {
                RegistryError::Content(format!("{r}: no image for linux/{arch} in its index"))
            })?;
        let digest = pick.digest.clone();
        progress(Progress::Note(format!(
            "{r}: index, picked linux/{arch} {digest}"
        )));
        (bytes, media) = manifest(s, &digest).await?;
        doc = serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::Content(format!("{}: manifest: {e}", s.registry)))?;
    }
    if media.is_empty() {
        media = doc.media_type.clone();
    }
    let config = doc
        .config
        .take()
        .ok_or_else(|| RegistryError::Content(format!("{r}: the manifest names no config")))?;
    let staging = tempfile::Builder::new()
        .prefix("pull-")
        .tempdir_in(store.root().join("tmp"))
        .map_err(io("creating a staging directory"))?;
    let dir = staging.path();
    std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(io("creating the staging layout"))?;
    let digest = sha256(&bytes);
    std::fs::write(
        dir.join("blobs/sha256").join(&digest["sha256:".len()..]),
        &bytes,
    )
    .map_err(io("writing the manifest"))?;
    // The fetched copies pulls share go once this image is in the store (or failed).
    let _shared = SharedBlobs {
        store,
        digests: std::iter::once(config.digest.clone())
            .chain(doc.layers.iter().map(|l| l.digest.clone()))
            .collect(),
    };
    blob(s, &config, dir, store, progress).await?;
    // Three at once, as docker: each layer waits for a permit.
    let gate = tokio::sync::Semaphore::new(PARALLEL);
    let mut fetches = Vec::new();
    for l in &doc.layers {
        let gate = &gate;
        fetches.push(async move {
            let _permit = gate.acquire().await.expect("the gate stays open");
            blob(s, l, dir, store, progress).await
        });
    }
    let results = futures::future::join_all(fetches).await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media,
            "digest": digest,
            "size": bytes.len(),
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).map_err(io("writing index.json"))?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(io("writing oci-layout"))?;
    let name = r.store_name();
    let tag = if r.tag.is_some() {
        name.clone()
    } else {
        // Pulled by digest only: kept under the digest's short form as its tag.
        format!(
            "{}:{}",
            name.split('@').next().unwrap_or(&name),
            &digest["sha256:".len().."sha256:".len() + 12]
        )
    };
    let dir_owned = dir.to_owned();
    let store2 = store.clone();
    let source = r.to_string();
    let records =
        tokio::task::spawn_blocking(move || store2.import_layout(&dir_owned, &source, &tag))
            .await
            .map_err(|e| RegistryError::Content(format!("import: {e}")))??;
    drop(staging);
    let record = records
        .into_iter()
        .next()
        .ok_or_else(|| RegistryError::Content(format!("{r}: nothing imported")))?;
    progress(Progress::Note(format!("{name}: pulled, digest {digest}")));
    Ok(record)
}

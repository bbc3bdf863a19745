//! The node's own API: what lives on this node only, not in the cluster's state, as with
//! Docker's image and volume commands. Merged into the daemon's API router.
//!
//! - `GET /v1/images`, `POST /v1/images/import?tag=&change=` (body: the archive),
//!   `GET /v1/images/inspect?ref=`, `POST /v1/images/tag?ref=&tag=`, `DELETE /v1/images?ref=`,
//!   `POST /v1/images/push?ref=&target=` (to a registry), `POST /v1/images/prune?all=`, `POST /v1/images/pull?ref=` (from the
//!   image's registry; `X-Registry-Auth` carries the
//!   user's credentials), `POST /v1/registry/login` (`{registry, username, password}`: checks
//!   them, stores nothing);
//! - `GET /v1/volumes`, `GET|DELETE /v1/volumes/{name}`;
//! - `GET /v1/containers` (this node's containers), `GET /v1/containers/{id}`,
//!   `GET /v1/containers/{id}/logs?tail=N`, `POST /v1/containers/{id}/exec` (body an
//!   `ExecSpec`; answers JSON lines `{"stdout": …}`, `{"stderr": …}`, then `{"exit": CODE}`).
//!   `{id}` is a container id, a unique prefix, or its `service.slot` name.

use crate::container::{ContainerExecutor, ContainerMeta};
use crate::executor::{ExecError, Executor, Observed};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shoal_api::units::Timestamp;
use shoal_api::wire::{
    ContainerInfo, ErrorBody, ExecInput, ExecSpec, ImageInfo, ImageResult, VolumeInfo,
};
use shoal_runtime::image::{Image, ImageError, ImageRecord, ImportOptions};
use shoal_runtime::volume::{Volume, VolumeError};
use std::collections::HashMap;

/// An error of the node API.
#[derive(Debug)]
struct LocalError(StatusCode, String);

impl IntoResponse for LocalError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { message: self.1 })).into_response()
    }
}

impl From<ImageError> for LocalError {
    fn from(e: ImageError) -> Self {
        let code = match &e {
            ImageError::NotFound(_) => StatusCode::NOT_FOUND,
            ImageError::InUse { .. } => StatusCode::CONFLICT,
            ImageError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        LocalError(code, e.to_string())
    }
}

impl From<VolumeError> for LocalError {
    fn from(e: VolumeError) -> Self {
        let code = match &e {
            VolumeError::NotFound(_) => StatusCode::NOT_FOUND,
            VolumeError::InUse { .. } => StatusCode::CONFLICT,
            VolumeError::BadName(_) => StatusCode::BAD_REQUEST,
            VolumeError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        LocalError(code, e.to_string())
    }
}

type Result<T> = std::result::Result<T, LocalError>;

fn internal(e: impl std::fmt::Display) -> LocalError {
    LocalError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// The node API's routes, over the node's container executor.
pub fn router(exec: ContainerExecutor) -> Router {
    Router::new()
        .route("/v1/images", get(image_list).delete(image_remove))
        .route(
            "/v1/images/import",
            post(image_import).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/images/inspect", get(image_inspect))
        .route("/v1/images/tag", post(image_tag))
        .route("/v1/images/pull", post(image_pull))
        .route("/v1/registry/login", post(registry_login))
        .route("/v1/images/push", post(image_push))
        .route("/v1/images/prune", post(image_prune))
        .route("/v1/volumes", get(volume_list))
        .route("/v1/containers", get(container_list))
        .route("/v1/containers/{id}", get(container_inspect))
        .route("/v1/containers/{id}/logs", get(container_logs))
        .route("/v1/containers/{id}/exec", post(container_exec))
        .route(
            "/v1/volumes/{name}",
            get(volume_inspect).delete(volume_remove),
        )
        .with_state(exec)
}

/// The same routes on a node without container storage (`--executor sim`): each answers 501
/// with `reason`, instead of a bare 404.
pub fn unavailable_router(reason: &'static str) -> Router {
    let refuse = move || async move { LocalError(StatusCode::NOT_IMPLEMENTED, reason.to_owned()) };
    Router::new()
        .route("/v1/images", get(refuse).delete(refuse))
        .route("/v1/images/import", post(refuse))
        .route("/v1/images/inspect", get(refuse))
        .route("/v1/images/tag", post(refuse))
        .route("/v1/images/pull", post(refuse))
        .route("/v1/registry/login", post(refuse))
        .route("/v1/images/push", post(refuse))
        .route("/v1/images/prune", post(refuse))
        .route("/v1/volumes", get(refuse))
        .route("/v1/volumes/{name}", get(refuse).delete(refuse))
        .route("/v1/containers", get(refuse))
        .route("/v1/containers/{id}", get(refuse))
        .route("/v1/containers/{id}/logs", get(refuse))
        .route("/v1/containers/{id}/exec", post(refuse))
}

fn info(exec: &ContainerExecutor, r: &ImageRecord, image: Option<&Image>) -> ImageInfo {
    let run = image.map(|i| i.run_config()).unwrap_or_default();
    ImageInfo {
        id: r.id.to_string(),
        manifest: r.manifest.to_string(),
        tags: r.tags.clone(),
        size: r.size,
        imported: Timestamp(r.imported),
        layers: r.layers.iter().map(|l| l.to_string()).collect(),
        entrypoint: run.entrypoint,
        cmd: run.cmd,
        env: run.env,
        working_dir: run.working_dir,
        user: run.user,
        containers: exec.using_image(&r.id),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

async fn image_list(State(exec): State<ContainerExecutor>) -> Result<Json<Vec<ImageInfo>>> {
    blocking(move || {
        let list = exec.images().list()?;
        Ok(Json(list.iter().map(|r| info(&exec, r, None)).collect()))
    })
    .await
}

async fn image_inspect(
    State(exec): State<ContainerExecutor>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<ImageInfo>> {
    let reference = q.get("ref").cloned().unwrap_or_default();
    blocking(move || {
        let img = exec.images().get(&reference)?;
        Ok(Json(info(&exec, &img.record, Some(&img))))
    })
    .await
}

async fn image_tag(
    State(exec): State<ContainerExecutor>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<ImageResult>> {
    let reference = q.get("ref").cloned().unwrap_or_default();
    let tag = q.get("tag").cloned().unwrap_or_default();
    blocking(move || {
        exec.images().tag(&reference, &tag)?;
        Ok(Json(ImageResult {
            images: vec![],
            done: vec![format!("Tagged: {tag}")],
        }))
    })
    .await
}

async fn image_remove(
    State(exec): State<ContainerExecutor>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<ImageResult>> {
    let reference = q.get("ref").cloned().unwrap_or_default();
    blocking(move || {
        let e2 = exec.clone();
        let done = exec
            .images()
            .remove(&reference, &move |id| e2.using_image(id))?;
        Ok(Json(ImageResult {
            images: vec![],
            done,
        }))
    })
    .await
}

async fn image_prune(
    State(exec): State<ContainerExecutor>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<ImageResult>> {
    let all = q.get("all").is_some_and(|v| v == "true" || v == "1");
    blocking(move || {
        let e2 = exec.clone();
        let done = exec.images().prune(all, &move |id| e2.using_image(id))?;
        Ok(Json(ImageResult {
            images: vec![],
            done,
        }))
    })
    .await
}

/// `POST /v1/registry/login`.
#[derive(Debug, serde::Deserialize)]
struct LoginRequest {
    registry: String,
    username: String,
    password: String,
}

async fn registry_login(
    State(exec): State<ContainerExecutor>,
    Json(req): Json<LoginRequest>,
) -> Result<StatusCode> {
    exec.login(&req.registry, (req.username, req.password))
        .await
        .map_err(|e| {
            let code = match &e {
                shoal_registry::RegistryError::Registry { status: 401, .. } => {
                    StatusCode::UNAUTHORIZED
                }
                _ => StatusCode::BAD_GATEWAY,
            };
            LocalError(code, e.to_string())
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// The user's credentials for a registry, as docker sends them: base64 JSON
/// `{"username","password"}` in X-Registry-Auth. Used for one pull or push, never stored.
fn registry_auth(headers: &axum::http::HeaderMap) -> Option<(String, String)> {
    headers
        .get("x-registry-auth")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(v).ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            Some((
                v.get("username")?.as_str()?.to_owned(),
                v.get("password")?.as_str()?.to_owned(),
            ))
        })
}

fn registry_status(e: &shoal_registry::RegistryError) -> StatusCode {
    match e {
        shoal_registry::RegistryError::BadReference(..) => StatusCode::BAD_REQUEST,
        shoal_registry::RegistryError::Registry { status: 404, .. } => StatusCode::NOT_FOUND,
        shoal_registry::RegistryError::Registry { status: 401, .. } => StatusCode::UNAUTHORIZED,
        shoal_registry::RegistryError::Store(ImageError::NotFound(_)) => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_GATEWAY,
    }
}

async fn image_push(
    State(exec): State<ContainerExecutor>,
    Query(q): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> Result<Response> {
    let source = q
        .get("ref")
        .ok_or_else(|| LocalError(StatusCode::BAD_REQUEST, "ref is required".into()))?;
    let source = source.clone();
    let target = q.get("target").cloned();
    let credentials = registry_auth(&headers);
    let job = move |progress: Box<dyn Fn(shoal_registry::Progress) + Send + Sync>| async move {
        let digest = exec
            .push(&source, target.as_deref(), credentials, progress)
            .await
            .map_err(|e| LocalError(registry_status(&e), e.to_string()))?;
        Ok(ImageResult {
            images: vec![],
            done: vec![format!(
                "Pushed: {} ({digest})",
                target.as_deref().unwrap_or(&source)
            )],
        })
    };
    Ok(respond(streamed(&q), job).await)
}

/// Whether the caller asked for progress lines (`?progress=true`).
fn streamed(q: &HashMap<String, String>) -> bool {
    q.get("progress").is_some_and(|v| v == "true" || v == "1")
}

/// Runs a registry job: with `stream`, answers at once with newline-delimited JSON —
/// `{"progress": …}` per step, then `{"result": …}` or `{"error": …}` — otherwise with the
/// result (or the error's status) once done.
async fn respond<F, Fut>(stream: bool, job: F) -> Response
where
    F: FnOnce(Box<dyn Fn(shoal_registry::Progress) + Send + Sync>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<ImageResult>> + Send + 'static,
{
    if !stream {
        return match job(Box::new(|_| {})).await {
            Ok(r) => Json(r).into_response(),
            Err(e) => e.into_response(),
        };
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let lines = tx.clone();
    tokio::spawn(async move {
        let progress = move |p: shoal_registry::Progress| {
            let _ = lines.send(serde_json::json!({ "progress": p }).to_string() + "\n");
        };
        let end = match job(Box::new(progress)).await {
            Ok(r) => serde_json::json!({ "result": r }),
            Err(LocalError(_, message)) => serde_json::json!({ "error": message }),
        };
        let _ = tx.send(end.to_string() + "\n");
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::io::Error>(bytes::Bytes::from(line)), rx))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

async fn image_pull(
    State(exec): State<ContainerExecutor>,
    Query(q): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> Result<Response> {
    let credentials = registry_auth(&headers);
    let reference = q
        .get("ref")
        .ok_or_else(|| LocalError(StatusCode::BAD_REQUEST, "ref is required".into()))?
        .clone();
    let job = move |progress: Box<dyn Fn(shoal_registry::Progress) + Send + Sync>| async move {
        let record = exec
            .pull(&reference, credentials, progress)
            .await
            .map_err(|e| LocalError(registry_status(&e), e.to_string()))?;
        let image = exec.images().get(record.id.as_str()).ok();
        Ok(ImageResult {
            images: vec![info(&exec, &record, image.as_ref())],
            done: vec![format!("Pulled: {reference} ({})", record.manifest)],
        })
    };
    Ok(respond(streamed(&q), job).await)
}

async fn image_import(
    State(exec): State<ContainerExecutor>,
    Query(q): Query<Vec<(String, String)>>,
    body: axum::body::Body,
) -> Result<Json<ImageResult>> {
    let tag = q.iter().find(|(k, _)| k == "tag").map(|(_, v)| v.clone());
    let source_name = q
        .iter()
        .find(|(k, _)| k == "source")
        .map(|(_, v)| v.clone());
    let changes: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "change")
        .map(|(_, v)| v.clone())
        .collect();
    // The archive streams to a file in the store's tmp directory, never whole in memory.
    let tmp_dir = exec.images().root().join("tmp");
    let file = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(internal)?;
    let (std_file, path) = file.into_parts();
    let mut out = tokio::fs::File::from_std(std_file);
    let mut stream = body.into_data_stream();
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            LocalError(StatusCode::BAD_REQUEST, format!("reading the archive: {e}"))
        })?;
        out.write_all(&chunk).await.map_err(internal)?;
    }
    out.flush().await.map_err(internal)?;
    drop(out);
    blocking(move || {
        let file = path;
        let records = exec.images().import(
            &file,
            &ImportOptions {
                tag,
                changes,
                source_name,
            },
        )?;
        let images = records
            .iter()
            .map(|r| {
                let img = exec.images().get(r.id.as_str()).ok();
                info(&exec, r, img.as_ref())
            })
            .collect();
        let done = records
            .iter()
            .map(|r| format!("Loaded image: {} ({})", r.tags.join(", "), r.id))
            .collect();
        Ok(Json(ImageResult { images, done }))
    })
    .await
}

fn volume_info(exec: &ContainerExecutor, v: Volume) -> VolumeInfo {
    VolumeInfo {
        containers: exec.using_volume(&v.name),
        name: v.name,
        driver: v.driver,
        mountpoint: v.mountpoint.to_string_lossy().into_owned(),
        created: Timestamp(v.created),
        labels: v.labels,
    }
}

async fn volume_list(State(exec): State<ContainerExecutor>) -> Result<Json<Vec<VolumeInfo>>> {
    blocking(move || {
        let list = exec.volumes().list();
        Ok(Json(
            list.into_iter().map(|v| volume_info(&exec, v)).collect(),
        ))
    })
    .await
}

async fn volume_inspect(
    State(exec): State<ContainerExecutor>,
    Path(name): Path<String>,
) -> Result<Json<VolumeInfo>> {
    blocking(move || {
        let v = exec.volumes().get(&name)?;
        Ok(Json(volume_info(&exec, v)))
    })
    .await
}

async fn volume_remove(
    State(exec): State<ContainerExecutor>,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    blocking(move || {
        let users = exec.using_volume(&name);
        exec.volumes().remove(&name, &users)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

impl From<ExecError> for LocalError {
    fn from(e: ExecError) -> Self {
        let code = match &e {
            ExecError::NotFound(_) => StatusCode::NOT_FOUND,
            ExecError::Rejected(_) => StatusCode::BAD_REQUEST,
            ExecError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        LocalError(code, e.to_string())
    }
}

fn container_info(exec: &ContainerExecutor, meta: ContainerMeta) -> ContainerInfo {
    let (state, exit_code) = match exec.observe(&meta.task) {
        Observed::Running { .. } => ("running", None),
        Observed::Exited { code, .. } => ("exited", Some(code)),
        Observed::Absent => ("created", None),
    };
    let health = exec.health_of(&meta.id);
    ContainerInfo {
        health: health.as_ref().map(|h| h.0),
        health_output: health.map(|h| h.1),
        id: meta.id,
        task: meta.task,
        name: meta.name,
        image: meta.image,
        created: meta.created,
        state: state.to_owned(),
        exit_code,
    }
}

async fn container_list(State(exec): State<ContainerExecutor>) -> Result<Json<Vec<ContainerInfo>>> {
    blocking(move || {
        let mut all: Vec<ContainerInfo> = exec
            .containers()
            .into_iter()
            .map(|m| container_info(&exec, m))
            .collect();
        all.sort_by_key(|c| std::cmp::Reverse(c.created));
        Ok(Json(all))
    })
    .await
}

async fn container_inspect(
    State(exec): State<ContainerExecutor>,
    Path(id): Path<String>,
) -> Result<Json<ContainerInfo>> {
    blocking(move || {
        let meta = exec.find_container(&id)?;
        Ok(Json(container_info(&exec, meta)))
    })
    .await
}

async fn container_logs(
    State(exec): State<ContainerExecutor>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<shoal_runtime::logs::LogEntry>>> {
    let tail = match q.get("tail") {
        Some(t) => Some(t.parse::<usize>().map_err(|_| {
            LocalError(
                StatusCode::BAD_REQUEST,
                format!("tail {t:?} is not a number"),
            )
        })?),
        None => None,
    };
    blocking(move || {
        let meta = exec.find_container(&id)?;
        let path = exec.log_file(&meta.task);
        let mut entries = shoal_runtime::logs::read_all(&path).map_err(internal)?.0;
        if let Some(n) = tail {
            entries = entries.split_off(entries.len().saturating_sub(n));
        }
        Ok(Json(entries))
    })
    .await
}

/// A stream of a process's output being copied to the answer.
type Pump = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs a process in a container and streams its output as JSON lines, then its exit code.
/// The request body is the `ExecSpec` (a line of JSON); an interactive exec's body goes on
/// with its input (`ExecInput` lines) while the answer streams.
async fn container_exec(
    State(exec): State<ContainerExecutor>,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> Result<Response> {
    use futures::StreamExt;
    let mut input = body.into_data_stream();
    let mut pending: Vec<u8> = Vec::new();
    // The first line (or the whole body) is the spec.
    let first = loop {
        if let Some(n) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=n).collect();
            break line;
        }
        match input.next().await {
            Some(Ok(chunk)) => pending.extend_from_slice(&chunk),
            Some(Err(e)) => {
                return Err(LocalError(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request: {e}"),
                ))
            }
            None => break std::mem::take(&mut pending),
        }
    };
    let spec: ExecSpec = serde_json::from_slice(&first)
        .map_err(|e| LocalError(StatusCode::BAD_REQUEST, format!("exec: {e}")))?;
    let meta = {
        let exec = exec.clone();
        blocking(move || Ok(exec.find_container(&id)?)).await?
    };
    if !matches!(exec.observe(&meta.task), Observed::Running { .. }) {
        return Err(LocalError(
            StatusCode::CONFLICT,
            format!("container {} ({}) is not running", meta.name, meta.id),
        ));
    }
    let mut running = exec.exec(&meta.id, &spec)?;
    tracing::info!(container = %meta.id, cmd = ?spec.cmd, tty = spec.tty, interactive = spec.interactive, "exec");
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
    let line = |key: &str, value: serde_json::Value| {
        let mut l = serde_json::to_vec(&serde_json::json!({ key: value })).expect("serializes");
        l.push(b'\n');
        bytes::Bytes::from(l)
    };
    let pump = |mut r: Box<dyn tokio::io::AsyncRead + Send + Unpin>, key: &'static str| {
        let tx = tx.clone();
        async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 16 << 10];
            let mut carry: Vec<u8> = Vec::new();
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        // Whole characters only: a UTF-8 sequence cut by the read waits.
                        carry.extend_from_slice(&buf[..n]);
                        let cut = match std::str::from_utf8(&carry) {
                            Ok(_) => carry.len(),
                            Err(e) if e.error_len().is_none() => e.valid_up_to(),
                            Err(_) => carry.len(),
                        };
                        let text = String::from_utf8_lossy(&carry[..cut]).into_owned();
                        carry.drain(..cut);
                        if !text.is_empty() && tx.send(line(key, text.into())).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    };
    // Output: the terminal, or the two pipes.
    let (out, err): (Pump, Pump) = match &running.terminal {
        Some(master) => {
            let reader = std::fs::File::from(master.try_clone().map_err(internal)?);
            (
                Box::pin(pump(Box::new(tokio::fs::File::from_std(reader)), "stdout")),
                Box::pin(async {}),
            )
        }
        None => {
            let stdout = running.child.stdout.take().expect("piped");
            let stderr = running.child.stderr.take().expect("piped");
            (
                Box::pin(pump(Box::new(stdout), "stdout")),
                Box::pin(pump(Box::new(stderr), "stderr")),
            )
        }
    };
    // Input: the rest of the request, for an interactive exec.
    if spec.interactive {
        let mut sink: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>> =
            match &running.terminal {
                Some(master) => {
                    let w = std::fs::File::from(master.try_clone().map_err(internal)?);
                    Some(Box::new(tokio::fs::File::from_std(w)))
                }
                None => running
                    .child
                    .stdin
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>),
            };
        let resize_fd = match &running.terminal {
            Some(master) => Some(master.try_clone().map_err(internal)?),
            None => None,
        };
        tokio::spawn(async move {
            use base64::Engine as _;
            use tokio::io::AsyncWriteExt;
            loop {
                let line = loop {
                    if let Some(n) = pending.iter().position(|b| *b == b'\n') {
                        break Some(pending.drain(..=n).collect::<Vec<u8>>());
                    }
                    match input.next().await {
                        Some(Ok(chunk)) => pending.extend_from_slice(&chunk),
                        _ => break None,
                    }
                };
                let Some(line) = line else { break };
                match serde_json::from_slice::<ExecInput>(&line) {
                    Ok(ExecInput::Stdin(b64)) => {
                        let Ok(data) = base64::engine::general_purpose::STANDARD.decode(b64) else {
                            continue;
                        };
                        if let Some(w) = sink.as_mut() {
                            if w.write_all(&data).await.is_err() || w.flush().await.is_err() {
                                sink = None;
                            }
                        }
                    }
                    Ok(ExecInput::Resize([rows, cols])) => {
                        if let Some(fd) = &resize_fd {
                            let size = nix::pty::Winsize {
                                ws_row: rows,
                                ws_col: cols,
                                ws_xpixel: 0,
                                ws_ypixel: 0,
                            };
                            // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which lives
                            // across the call; the descriptor is the terminal's master.
                            unsafe {
                                nix::libc::ioctl(
                                    std::os::fd::AsRawFd::as_raw_fd(fd),
                                    nix::libc::TIOCSWINSZ,
                                    &size as *const nix::pty::Winsize,
                                );
                            }
                        }
                    }
                    Ok(ExecInput::Eof(_)) => {
                        // On a terminal, end of input is its EOF character.
                        if resize_fd.is_some() {
                            if let Some(w) = sink.as_mut() {
                                let _ = w.write_all(&[4]).await;
                            }
                        } else {
                            sink = None;
                        }
                    }
                    Err(_) => {}
                }
            }
        });
    }
    let hangup = tx.clone();
    let pid = running.child.id();
    tokio::spawn(async move {
        let wait = async {
            let code = match running.child.wait().await {
                Ok(status) => status.code().unwrap_or(128),
                Err(_) => 128,
            };
            // The process is gone: nothing more comes from its terminal.
            drop(running.terminal.take());
            code
        };
        // A caller that goes away takes the process with it.
        let killer = async move {
            hangup.closed().await;
            if let Some(pid) = pid {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::future::pending::<()>().await
        };
        let (_, _, code) = tokio::select! {
            r = async { futures::join!(out, err, wait) } => r,
            () = killer => unreachable!("pending"),
        };
        let _ = tx.send(line("exit", code.into())).await;
        drop(running);
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Ok(Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(axum::body::Body::from_stream(body))
        .expect("valid response"))
}

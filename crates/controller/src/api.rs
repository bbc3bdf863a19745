//! The REST API (axum): turns HTTP requests into store reads and [`Command`] proposals, and
//! errors into `{"message": ...}` bodies with the right status code, in one place
//! ([`ApiError`]). The same router serves the Unix socket and, optionally, TCP; agents use its
//! `/v1/dispatcher/*` routes.

use crate::allocator::allocate_networks;
use crate::dispatcher::{self, SessionError};
use crate::manager::{now, Cluster, Manager, ManagerError};
use crate::raft::node::ProposeError;
use crate::serve::Peer;
use crate::store::{Command, Store, StoreError, TaskOp};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use shoal_api::network::{Network, NetworkSpec};
use shoal_api::node::{Node, NodeRole};
use shoal_api::secret::{FileKind, FileObject, FileObjectSpec};
use shoal_api::service::{RegistryAuth, Service, ServiceMode, ServiceSpec, STACK_LABEL};
use shoal_api::task::Task;
use shoal_api::wire::*;
use shoal_api::{FileObjectId, NetworkId, NodeId, ServiceId, TaskId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Largest request body accepted (a big stack stays far below).
pub const BODY_LIMIT: usize = 4 << 20;

/// An API error: a status and a message a person can act on.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn not_found(kind: &str, id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{kind} {id} not found"))
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                message: self.message,
            }),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
            StoreError::NameInUse { .. }
            | StoreError::VersionMismatch { .. }
            | StoreError::AlreadyInitialized => StatusCode::CONFLICT,
            StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::Refused(s) => s.into(),
            ProposeError::Remote { status, message } => ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                message,
            ),
            other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
        }
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        match e {
            ManagerError::AlreadyInitialized => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            ManagerError::Propose(p) => p.into(),
            ManagerError::Address(_) | ManagerError::Invalid(_) => ApiError::bad(e.to_string()),
            ManagerError::Join { .. } | ManagerError::Listen { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, e.to_string())
            }
            ManagerError::Raft(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, e.to_string())
    }
}

/// A JSON body whose errors come back as JSON with the reason.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::BytesRejection(e)) => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body refused: {}", e.body_text()),
            )),
            Err(e) => Err(ApiError::bad(format!(
                "invalid request body: {}",
                e.body_text()
            ))),
        }
    }
}

type Result<T, E = ApiError> = std::result::Result<T, E>;
type Shared = Arc<Manager>;

async fn cluster(m: &Manager) -> Result<Arc<Cluster>> {
    if m.is_locked() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this manager is locked: run `shoal cluster unlock` with the cluster's unlock key",
        ));
    }
    if let Some(c) = m.cluster().await {
        if c.raft.status().borrow().removed {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this manager was removed from the cluster: it no longer serves; use another manager",
            ));
        }
        return Ok(c);
    }
    Err(match m.membership() {
        Some(mb) if !mb.manager => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this node is a worker: cluster commands go to a manager ({})",
                mb.managers.join(", ")
            ),
        ),
        _ => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is not part of a cluster: run `shoal cluster init` or `shoal cluster join` first",
        ),
    })
}

/// The cluster port's routes: Raft streams, forwarded proposals, joins and agent sessions.
/// Nothing else of the API is reachable there.
pub fn cluster_router(manager: Shared) -> Router {
    Router::new()
        .route(crate::raft::peer::STREAM_PATH, post(raft_stream))
        .route(crate::raft::peer::PROPOSE_PATH, post(raft_propose))
        .route(crate::manager::JOIN_PATH, post(join_request))
        .merge(dispatcher_routes())
        .fallback(|| async { ApiError::not_found("route", "(the cluster port serves nodes only)") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(manager)
}

fn dispatcher_routes() -> Router<Shared> {
    Router::new()
        .route("/v1/dispatcher/register", post(agent_register))
        .route("/v1/dispatcher/managers", get(agent_managers))
        .route("/v1/dispatcher/heartbeat", post(agent_heartbeat))
        .route("/v1/dispatcher/assignments", get(agent_assignments))
        .route("/v1/dispatcher/status", post(agent_status))
        .route("/v1/dispatcher/logs", get(agent_log_subscriptions))
        .route("/v1/dispatcher/logs/{id}", post(agent_log_publish))
        .route("/v1/dispatcher/certificate", get(agent_certificate))
        .route("/v1/dispatcher/renew", post(agent_renew))
}

/// The node a certificate names and the role it names: the local socket is no node.
fn certified_node(c: &Cluster, peer: &Peer) -> Result<(NodeId, crate::pki::CertRole)> {
    if *peer == Peer::Local {
        return Err(ApiError::bad(
            "certificates are renewed over the cluster port, by the node they name",
        ));
    }
    let id = certified(c, peer)?;
    Ok((node_id_of(&id), id.role))
}

/// Any manager answers: what the asking node's certificate should be.
async fn agent_certificate(
    State(m): State<Shared>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<shoal_api::wire::CertificateStatus>> {
    let c = cluster(&m).await?;
    let (id, _) = certified_node(&c, &peer)?;
    let store = c.store.read().expect("store lock");
    let node = find_node(&store, id.as_str())?;
    let obj = store
        .cluster
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no cluster yet"))?;
    Ok(Json(crate::renewal::status_for(obj, &node)))
}

/// A new certificate for the asking node's new key, in the role the store gives it.
async fn agent_renew(
    State(m): State<Shared>,
    Extension(peer): Extension<Peer>,
    Body(req): Body<shoal_api::wire::RenewRequest>,
) -> Result<Json<shoal_api::wire::RenewResponse>> {
    let c = cluster(&m).await?;
    let (id, role) = certified_node(&c, &peer)?;
    Ok(Json(
        crate::renewal::issue_for(&c, &id, role, &req.csr).await?,
    ))
}

/// Who may act as `node_id` at the dispatcher: the local socket's clients (root, for a
/// one-host cluster's agent), or a peer whose certificate names that node, which was not
/// removed. Anyone else is refused, whatever the request says.
fn authorize_node(c: &Cluster, peer: &Peer, node_id: &NodeId) -> Result<()> {
    if *peer == Peer::Local {
        return Ok(());
    }
    let id = certified(c, peer)?;
    if id.node_id != node_id.as_str() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this connection's certificate names node {}: it cannot act as node {node_id}",
                id.node_id
            ),
        ));
    }
    Ok(())
}

/// The identity a peer's certificate proves, refused when it has none or names a removed node.
/// The local socket's clients are trusted as root.
fn certified(c: &Cluster, peer: &Peer) -> Result<crate::pki::Identity> {
    let identity = match peer {
        Peer::Local => {
            return Ok(crate::pki::Identity {
                node_id: String::new(),
                role: crate::pki::CertRole::Manager,
                cluster_id: String::new(),
                digest: String::new(),
            })
        }
        Peer::Remote { identity, .. } => identity.clone(),
    };
    let Some(id) = identity else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs a node certificate from the cluster's CA (join the cluster first)",
        ));
    };
    if id.role == crate::pki::CertRole::Client {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a user certificate reaches the management API (shoald --listen), not the cluster port",
        ));
    }
    let store = c.store.read().expect("store lock");
    if store.removed_nodes.contains(&node_id_of(&id)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "node {} was removed from the cluster: its certificate is revoked",
                id.node_id
            ),
        ));
    }
    Ok(id)
}

/// The node id a certificate names (a certificate shoal issued always names a valid one).
fn node_id_of(id: &crate::pki::Identity) -> NodeId {
    id.node_id.parse().unwrap_or_else(|_| NodeId::from_bits(0))
}

/// Only managers (by certificate) reach Raft; a demoted manager is out of the voters, which Raft
/// itself then ignores.
fn authorize_manager(c: &Cluster, peer: &Peer) -> Result<()> {
    if *peer == Peer::Local {
        return Ok(());
    }
    let id = certified(c, peer)?;
    if id.role != crate::pki::CertRole::Manager {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "node {} is not a manager: Raft is for managers only",
                id.node_id
            ),
        ));
    }
    Ok(())
}

async fn raft_stream(
    State(m): State<Shared>,
    Extension(peer): Extension<Peer>,
    body: axum::body::Body,
) -> Result<StatusCode> {
    let c = m
        .cluster()
        .await
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "this node runs no raft"))?;
    authorize_manager(&c, &peer)?;
    crate::raft::peer::serve_stream(c.raft.clone(), body).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn raft_propose(
    State(m): State<Shared>,
    Extension(peer): Extension<Peer>,
    Body(p): Body<crate::raft::node::Proposal>,
) -> Result<Json<crate::raft::peer::Forwarded>> {
    let c = cluster(&m).await?;
    authorize_manager(&c, &peer)?;
    let revision = c.raft.propose_local(p).await?;
    Ok(Json(crate::raft::peer::Forwarded { revision }))
}

async fn join_request(
    State(m): State<Shared>,
    Extension(peer): Extension<Peer>,
    Body(req): Body<JoinClusterRequest>,
) -> Result<Json<JoinClusterResponse>> {
    let c = cluster(&m).await?;
    let obj = c.store.read().expect("store lock").cluster.clone();
    let Some(obj) = obj else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster is not initialized yet",
        ));
    };
    let manager = if !obj.manager_join_token.is_empty() && req.token == obj.manager_join_token {
        true
    } else if req.token == obj.worker_join_token {
        false
    } else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid join token: use the token `shoal cluster join-token worker|manager` prints",
        ));
    };
    // A node that shows its certificate (a worker being promoted) keeps its id; a new node gets
    // one. Either way the id is the manager's to give, and the certificate names it.
    let node_id = match &peer {
        Peer::Remote {
            identity: Some(_), ..
        } => node_id_of(&certified(&c, &peer)?),
        _ => NodeId::from_bits(rand::random()),
    };
    obj.ca.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this cluster has no CA (made before certificates): nodes cannot join it",
        )
    })?;
    let role = if manager {
        crate::pki::CertRole::Manager
    } else {
        crate::pki::CertRole::Worker
    };
    let certificate = crate::renewal::issue_chain(&obj, &req.csr, node_id.as_str(), role)
        .map_err(|e| ApiError::bad(format!("invalid certificate request: {e}")))?;
    let mut raft_id = 0;
    if manager {
        if req.addr.is_empty() {
            return Err(ApiError::bad(
                "a manager must give its cluster address (--advertise-addr)",
            ));
        }
        raft_id = loop {
            let id = rand::random::<u64>() >> 1;
            if id != 0 {
                break id;
            }
        };
        c.raft
            .change_membership(crate::raft::node::MembershipChange::Add {
                id: raft_id,
                addr: req.addr.clone(),
            })
            .await?;
        tracing::info!(raft_id, addr = %req.addr, "manager joined");
    }
    let managers = c.store.read().expect("store lock").managers.clone();
    Ok(Json(JoinClusterResponse {
        cluster_id: obj.id.clone(),
        manager,
        raft_id,
        managers,
        node_id: node_id.to_string(),
        certificate,
        ca_certificate: obj.trust_pem(),
    }))
}

async fn cluster_join(State(m): State<Shared>, Body(req): Body<JoinRequest>) -> Result<StatusCode> {
    let membership = m.join(&req).await?;
    tracing::info!(manager = membership.manager, "joined a cluster");
    Ok(StatusCode::NO_CONTENT)
}

async fn cluster_leave(
    State(m): State<Shared>,
    Body(req): Body<LeaveRequest>,
) -> Result<StatusCode> {
    m.leave(req.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinTokenQuery {
    role: String,
    #[serde(default)]
    rotate: bool,
}

async fn cluster_join_token(
    State(m): State<Shared>,
    Query(q): Query<JoinTokenQuery>,
) -> Result<Json<JoinToken>> {
    let c = cluster(&m).await?;
    let manager = match q.role.as_str() {
        "manager" => true,
        "worker" => false,
        other => {
            return Err(ApiError::bad(format!(
                "unknown role {other:?}: use worker or manager"
            )))
        }
    };
    let obj = c.store.read().expect("store lock").cluster.clone();
    let obj = obj.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster is not initialized yet",
        )
    })?;
    let current = if manager {
        obj.manager_join_token.clone()
    } else {
        obj.worker_join_token.clone()
    };
    let token = if q.rotate || current.is_empty() {
        let digest = obj
            .ca
            .as_ref()
            .and_then(|ca| crate::pki::ca_digest(&ca.cert_pem).ok())
            .unwrap_or_else(|| obj.id.clone());
        let token = crate::manager::new_token(&digest);
        c.raft
            .propose(Command::RotateJoinToken {
                manager,
                token: token.clone(),
            })
            .await?;
        token
    } else {
        current
    };
    Ok(Json(JoinToken {
        role: q.role,
        token,
    }))
}

/// The API's routes.
pub fn router(manager: Shared) -> Router {
    Router::new()
        .route("/v1/cluster", get(cluster_info))
        .route("/v1/cluster/init", post(cluster_init))
        .route("/v1/cluster/update", post(cluster_update))
        .route("/v1/cluster/join", post(cluster_join))
        .route("/v1/cluster/leave", post(cluster_leave))
        .route("/v1/cluster/join-token", get(cluster_join_token))
        .route("/v1/cluster/unlock-key", get(cluster_unlock_key))
        .route("/v1/cluster/unlock", post(cluster_unlock))
        .route("/v1/cluster/ca", get(cluster_ca))
        .route("/v1/cluster/ca/rotate", post(cluster_ca_rotate))
        .route("/v1/cluster/client-cert", post(cluster_client_cert))
        .route("/v1/cluster/client-certs", get(client_cert_list))
        .route("/v1/cluster/client-certs/revoke", post(client_cert_revoke))
        .route("/v1/nodes", get(node_list))
        .route("/v1/nodes/{id}", get(node_inspect).delete(node_remove))
        .route("/v1/nodes/{id}/promote", post(node_promote))
        .route("/v1/nodes/{id}/demote", post(node_demote))
        .route("/v1/nodes/{id}/update", post(node_update))
        .route("/v1/services", get(service_list).post(service_create))
        .route(
            "/v1/services/{id}",
            get(service_inspect).delete(service_remove),
        )
        .route("/v1/services/{id}/update", post(service_update))
        .route("/v1/services/{id}/scale", post(service_scale))
        .route("/v1/services/{id}/rollback", post(service_rollback))
        .route("/v1/services/{id}/tasks", get(service_tasks))
        .route("/v1/services/{id}/logs", get(service_logs))
        .route("/v1/tasks", get(task_list))
        .route("/v1/tasks/{id}", get(task_inspect))
        .route("/v1/networks", get(network_list).post(network_create))
        .route("/v1/secrets", get(secret_list).post(secret_create))
        .route(
            "/v1/secrets/{id}",
            get(secret_inspect).delete(secret_remove),
        )
        .route("/v1/configs", get(config_list).post(config_create))
        .route(
            "/v1/configs/{id}",
            get(config_inspect).delete(config_remove),
        )
        .route(
            "/v1/networks/{id}",
            get(network_inspect).delete(network_remove),
        )
        .route("/v1/stacks", get(stack_list))
        .route("/v1/stacks/{name}", axum::routing::delete(stack_remove))
        .route("/v1/stacks/{name}/deploy", post(stack_deploy))
        .route("/v1/stacks/{name}/tasks", get(stack_tasks))
        .route("/v1/events", get(events))
        .merge(dispatcher_routes())
        .fallback(|| async { ApiError::not_found("route", "(see docs/api.md)") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(manager)
}

fn info(c: &Cluster) -> ClusterInfo {
    let status = c.raft.status().borrow().clone();
    let store = c.store.read().expect("store lock");
    let obj = store.cluster.clone();
    ClusterInfo {
        id: obj.as_ref().map(|o| o.id.clone()).unwrap_or_default(),
        created_at: obj.as_ref().map(|o| o.created_at).unwrap_or_default(),
        revision: store.revision,
        raft: RaftInfo {
            id: status.id,
            term: status.term,
            leader: status.leader,
            commit: status.commit,
            applied: status.applied,
            voters: status.voters,
            managers: store.managers.clone(),
        },
        allow_privileged: obj.as_ref().is_some_and(|o| o.allow_privileged),
        autolock: obj.as_ref().is_some_and(|o| o.unlock_key.is_some()),
        cert_expiry_secs: obj
            .as_ref()
            .map(|o| o.cert_expiry().as_secs())
            .unwrap_or_default(),
        worker_join_token: obj.map(|o| o.worker_join_token).unwrap_or_default(),
        nodes: store.nodes.len(),
        services: store.services.len(),
        tasks: store.tasks.len(),
        networks: store.networks.len(),
    }
}

async fn cluster_info(State(m): State<Shared>) -> Result<Json<ClusterInfo>> {
    let c = cluster(&m).await?;
    Ok(Json(info(&c)))
}

async fn cluster_init(
    State(m): State<Shared>,
    Body(req): Body<InitRequest>,
) -> Result<Json<ClusterInfo>> {
    let c = m.init(&req).await?;
    tracing::info!("cluster initialized");
    Ok(Json(info(&c)))
}

async fn cluster_update(
    State(m): State<Shared>,
    Body(req): Body<ClusterUpdate>,
) -> Result<Json<ClusterInfo>> {
    let c = cluster(&m).await?;
    if req.allow_privileged.is_some() || req.cert_expiry_secs.is_some() {
        c.raft
            .propose(Command::UpdateCluster {
                allow_privileged: req.allow_privileged,
                cert_expiry_secs: req.cert_expiry_secs,
            })
            .await?;
    }
    if let Some(on) = req.autolock {
        let current = unlock_key(&c);
        if on && current.is_none() {
            let key = crate::manager::unlock_key_text(&rand::random());
            c.raft.propose(Command::SetUnlockKey(Some(key))).await?;
        } else if !on && current.is_some() {
            c.raft.propose(Command::SetUnlockKey(None)).await?;
        }
    }
    tracing::info!(allow_privileged = ?req.allow_privileged, autolock = ?req.autolock, "cluster updated");
    Ok(Json(info(&c)))
}

async fn cluster_ca(State(m): State<Shared>) -> Result<Json<shoal_api::wire::CaInfo>> {
    let c = cluster(&m).await?;
    let info = crate::renewal::ca_info(&c.store.read().expect("store lock"))?;
    Ok(Json(info))
}

async fn cluster_ca_rotate(
    State(m): State<Shared>,
    Body(req): Body<shoal_api::wire::CaRotate>,
) -> Result<Json<shoal_api::wire::CaInfo>> {
    let c = cluster(&m).await?;
    let info = crate::renewal::rotate(&c, req.external_ca.as_ref()).await?;
    tracing::info!(subject = %info.subject, "CA rotation started");
    Ok(Json(info))
}

/// A user certificate for the management API over TCP: the CSR's key, the name asked for,
/// role `client` (which the cluster port refuses), the cluster's certificate lifetime.
async fn cluster_client_cert(
    State(m): State<Shared>,
    Body(req): Body<ClientCertRequest>,
) -> Result<Json<RenewResponse>> {
    let c = cluster(&m).await?;
    let name = req.name.trim();
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    {
        return Err(ApiError::bad(format!(
            "--name {name:?}: use 1 to 64 letters, digits, '-', '_', '.' or '@'"
        )));
    }
    let obj = c
        .store
        .read()
        .expect("store lock")
        .cluster
        .clone()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no cluster yet"))?;
    let certificate =
        crate::renewal::issue_chain(&obj, &req.csr, name, crate::pki::CertRole::Client)
            .map_err(|e| ApiError::bad(format!("invalid certificate request: {e}")))?;
    let (Some(digest), Some((_, not_after))) = (
        crate::pki::leaf_digest(&certificate),
        crate::pki::validity(&certificate),
    ) else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the issued certificate does not parse",
        ));
    };
    // Recorded before it is handed out, so that it can be revoked.
    c.raft
        .propose(Command::RecordClientCert {
            cert: shoal_api::wire::ClientCert {
                name: name.to_owned(),
                digest: digest.clone(),
                not_after,
                revoked: false,
            },
            at: now(),
        })
        .await?;
    tracing::info!(name, %digest, "client certificate issued");
    Ok(Json(RenewResponse {
        certificate,
        ca_certificate: obj.trust_pem(),
    }))
}

async fn client_cert_list(
    State(m): State<Shared>,
) -> Result<Json<Vec<shoal_api::wire::ClientCert>>> {
    let c = cluster(&m).await?;
    let store = c.store.read().expect("store lock");
    Ok(Json(
        store
            .cluster
            .as_ref()
            .map(|o| o.client_certs.clone())
            .unwrap_or_default(),
    ))
}

async fn client_cert_revoke(
    State(m): State<Shared>,
    Body(req): Body<shoal_api::wire::ClientCertRevoke>,
) -> Result<Json<Vec<shoal_api::wire::ClientCert>>> {
    let c = cluster(&m).await?;
    c.raft
        .propose(Command::RevokeClientCerts {
            target: req.target.clone(),
        })
        .await?;
    tracing::info!(target = %req.target, "client certificates revoked");
    client_cert_list(State(m)).await
}

/// Whether this manager's store says the user certificate of digest `digest` was revoked.
async fn revoked(m: &Manager, digest: &str) -> bool {
    let Some(c) = m.cluster().await else {
        return false;
    };
    let store = c.store.read().expect("store lock");
    store.cluster.as_ref().is_some_and(|o| {
        o.client_certs
            .iter()
            .any(|k| k.revoked && k.digest == digest)
    })
}

/// Whether `peer` may use the management API over TCP: a user certificate the cluster's CA
/// issued and did not revoke, or the Unix socket.
async fn admit_user(m: &Manager, peer: &Peer) -> std::result::Result<(), ApiError> {
    let id = match peer {
        Peer::Local => return Ok(()),
        Peer::Remote { identity: None, .. } => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the management API over TCP needs a client certificate from the cluster's CA \
                 (`shoal cluster client-cert`)",
            ))
        }
        Peer::Remote {
            identity: Some(id), ..
        } => id,
    };
    if id.role != crate::pki::CertRole::Client {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "node {} presented its node certificate: the management API takes a user \
                 certificate (`shoal cluster client-cert`)",
                id.node_id
            ),
        ));
    }
    if revoked(m, &id.digest).await {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "the user certificate of {:?} was revoked (`shoal cluster client-cert --revoke`)",
                id.node_id
            ),
        ));
    }
    Ok(())
}

/// The management API over TCP (`shoald --listen`) answers only clients whose certificate the
/// cluster's CA issued to a user (`cluster client-cert`) and did not revoke: a node's
/// certificate, a worker's above all, reaches nothing here.
pub fn require_client_certificate(router: Router, manager: Shared) -> Router {
    router.layer(axum::middleware::from_fn(
        move |Extension(peer): Extension<Peer>,
              req: axum::extract::Request,
              next: axum::middleware::Next| {
            let manager = manager.clone();
            async move {
                match admit_user(&manager, &peer).await {
                    Ok(()) => next.run(req).await,
                    Err(e) => e.into_response(),
                }
            }
        },
    ))
}

fn unlock_key(c: &Cluster) -> Option<String> {
    let store = c.store.read().expect("store lock");
    store.cluster.as_ref().and_then(|o| o.unlock_key.clone())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnlockKeyQuery {
    #[serde(default)]
    rotate: bool,
}

async fn cluster_unlock_key(
    State(m): State<Shared>,
    Query(q): Query<UnlockKeyQuery>,
) -> Result<Json<UnlockKey>> {
    let c = cluster(&m).await?;
    let Some(current) = unlock_key(&c) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "autolock is off: no unlock key (turn it on with `shoal cluster update --autolock true`)",
        ));
    };
    let key = if q.rotate {
        let key = crate::manager::unlock_key_text(&rand::random());
        c.raft
            .propose(Command::SetUnlockKey(Some(key.clone())))
            .await?;
        tracing::info!("unlock key rotated");
        key
    } else {
        current
    };
    Ok(Json(UnlockKey { key }))
}

async fn cluster_unlock(
    State(m): State<Shared>,
    Body(req): Body<UnlockRequest>,
) -> Result<Json<ClusterInfo>> {
    m.unlock(&req.key).await?;
    let c = cluster(&m).await?;
    Ok(Json(info(&c)))
}

fn find_node(store: &Store, id: &str) -> Result<Node> {
    store
        .node_by_ref(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found("node", id))
}

fn find_service(store: &Store, id: &str) -> Result<Service> {
    store
        .service_by_ref(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found("service", id))
}

async fn node_list(State(m): State<Shared>) -> Result<Json<Vec<Node>>> {
    let c = cluster(&m).await?;
    let store = c.store.read().expect("store lock");
    Ok(Json(store.nodes.values().cloned().collect()))
}

async fn node_inspect(State(m): State<Shared>, Path(id): Path<String>) -> Result<Json<Node>> {
    let c = cluster(&m).await?;
    let node = find_node(&c.store.read().expect("store lock"), &id)?;
    Ok(Json(node))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForceQuery {
    #[serde(default)]
    force: bool,
}

async fn node_promote(State(m): State<Shared>, Path(id): Path<String>) -> Result<StatusCode> {
    let c = cluster(&m).await?;
    let node = find_node(&c.store.read().expect("store lock"), &id)?;
    if node.manager_status.is_some() {
        return Err(ApiError::bad(format!("node {id} is already a manager")));
    }
    if node.status.addr.is_empty() {
        return Err(ApiError::bad(format!(
            "node {id} joined without --advertise-addr: the managers could not reach it"
        )));
    }
    set_role(&c, node.id, NodeRole::Manager).await
}

async fn set_role(c: &Cluster, id: NodeId, role: NodeRole) -> Result<StatusCode> {
    c.raft.propose(Command::SetNodeRole { id, role }).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn node_demote(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<ForceQuery>,
) -> Result<StatusCode> {
    let c = cluster(&m).await?;
    let node = find_node(&c.store.read().expect("store lock"), &id)?;
    let Some(ms) = node.manager_status.clone() else {
        if node.spec.role == NodeRole::Manager {
            // Promoted but not joined yet: take the promotion back.
            return set_role(&c, node.id, NodeRole::Worker).await;
        }
        return Err(ApiError::bad(format!("node {id} is already a worker")));
    };
    let voters = c.raft.status().borrow().voters.clone();
    if voters == [ms.raft_id] {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("node {id} is the last manager: demoting it would leave the cluster without managers"),
        ));
    }
    crate::manager::check_quorum_after_removal(&c, ms.raft_id, q.force)?;
    set_role(&c, node.id, NodeRole::Worker).await?;
    c.raft
        .change_membership(crate::raft::node::MembershipChange::Remove { id: ms.raft_id })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn node_remove(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<ForceQuery>,
) -> Result<StatusCode> {
    let c = cluster(&m).await?;
    let node = find_node(&c.store.read().expect("store lock"), &id)?;
    if node.manager_status.is_some() || node.spec.role == NodeRole::Manager {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("node {id} is a manager: demote it first (`shoal node demote {id}`)"),
        ));
    }
    if node.status.state != shoal_api::node::NodeState::Down && !q.force {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("node {id} is not down and can't be removed: stop it first, or use --force"),
        ));
    }
    c.raft
        .propose(Command::RemoveNode {
            id: node.id.clone(),
            at: now(),
        })
        .await?;
    c.dispatcher.drop_session(&node.id);
    Ok(StatusCode::NO_CONTENT)
}

async fn node_update(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Body(req): Body<NodeUpdate>,
) -> Result<Json<Node>> {
    let c = cluster(&m).await?;
    let node = find_node(&c.store.read().expect("store lock"), &id)?;
    c.raft
        .propose(Command::UpdateNode {
            id: node.id.clone(),
            availability: req.availability,
            labels_add: req.labels_add,
            labels_rm: req.labels_rm,
        })
        .await?;
    let node = find_node(&c.store.read().expect("store lock"), node.id.as_str())?;
    Ok(Json(node))
}

async fn service_list(State(m): State<Shared>) -> Result<Json<Vec<ServiceSummary>>> {
    let c = cluster(&m).await?;
    let store = c.store.read().expect("store lock");
    Ok(Json(
        store
            .services
            .values()
            .map(|s| {
                let (running, desired) = store.replica_counts(s);
                ServiceSummary {
                    service: s.clone().redacted(),
                    running,
                    desired,
                }
            })
            .collect(),
    ))
}

async fn service_create(
    State(m): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    Body(mut spec): Body<ServiceSpec>,
) -> Result<(StatusCode, Json<Created>)> {
    let c = cluster(&m).await?;
    let mode = resolve_mode(&q, ResolveImage::Always)?;
    let auth = spec.task.container.registry_auth.clone();
    if let Ok(image) = pin_image(&m, &spec.task.container.image, None, mode, auth.as_ref()).await {
        spec.task.container.image = image;
    }
    let id = ServiceId::from_bits(rand::random());
    c.raft
        .propose(Command::CreateService {
            id: id.clone(),
            spec: Box::new(spec),
            at: now(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(Created { id: id.to_string() })))
}

async fn service_inspect(State(m): State<Shared>, Path(id): Path<String>) -> Result<Json<Service>> {
    let c = cluster(&m).await?;
    let s = find_service(&c.store.read().expect("store lock"), &id)?;
    Ok(Json(s.redacted()))
}

async fn service_update(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    Body(mut req): Body<ServiceUpdate>,
) -> Result<Json<Service>> {
    let c = cluster(&m).await?;
    let s = find_service(&c.store.read().expect("store lock"), &id)?;
    // An update pins an image that changed (`changed`, docker's default for updates).
    let mode = resolve_mode(&q, ResolveImage::Changed)?;
    req.spec.keep_registry_auth(&s.spec);
    let existing = s.spec.task.container.image.clone();
    let auth = req.spec.task.container.registry_auth.clone();
    if let Ok(image) = pin_image(
        &m,
        &req.spec.task.container.image,
        Some(&existing),
        mode,
        auth.as_ref(),
    )
    .await
    {
        req.spec.task.container.image = image;
    }
    c.raft
        .propose(Command::UpdateService {
            id: s.id.clone(),
            spec: Box::new(req.spec),
            expected_version: req.version,
            at: now(),
        })
        .await?;
    let s = find_service(&c.store.read().expect("store lock"), s.id.as_str())?;
    Ok(Json(s.redacted()))
}

async fn service_scale(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Body(req): Body<ScaleRequest>,
) -> Result<Json<Service>> {
    let c = cluster(&m).await?;
    let s = find_service(&c.store.read().expect("store lock"), &id)?;
    let ServiceMode::Replicated { .. } = s.spec.mode else {
        return Err(ApiError::bad(format!(
            "service {} is global: scale works on replicated services only",
            s.spec.name
        )));
    };
    let mut spec = s.spec.clone();
    spec.mode = ServiceMode::Replicated {
        replicas: req.replicas,
    };
    c.raft
        .propose(Command::UpdateService {
            id: s.id.clone(),
            spec: Box::new(spec),
            expected_version: Some(s.version),
            at: now(),
        })
        .await?;
    let s = find_service(&c.store.read().expect("store lock"), s.id.as_str())?;
    Ok(Json(s.redacted()))
}

/// `service rollback`: back to the spec before the last update, rolled out per the
/// service's `rollback_config`.
async fn service_rollback(
    State(m): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Service>> {
    let c = cluster(&m).await?;
    let s = find_service(&c.store.read().expect("store lock"), &id)?;
    if s.previous_spec.is_none() {
        return Err(ApiError::bad(format!(
            "service {} has no previous spec to roll back to",
            s.spec.name
        )));
    }
    c.raft
        .propose(Command::Tasks(vec![TaskOp::Rollback {
            service: s.id.clone(),
            message: "manually requested rollback".into(),
            at: now(),
        }]))
        .await?;
    let s = find_service(&c.store.read().expect("store lock"), s.id.as_str())?;
    Ok(Json(s.redacted()))
}

async fn service_remove(State(m): State<Shared>, Path(id): Path<String>) -> Result<StatusCode> {
    let c = cluster(&m).await?;
    let s = find_service(&c.store.read().expect("store lock"), &id)?;
    c.raft.propose(Command::RemoveService { id: s.id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Tasks as the API lists them: in order, credentials redacted.
fn sorted_tasks<'a>(tasks: impl Iterator<Item = &'a Task>) -> Vec<Task> {
    let mut out: Vec<Task> = tasks.cloned().map(Task::redacted).collect();
    out.sort_by(|a, b| {
        (
            &a.service_name,
            a.slot,
            &a.node_id,
            std::cmp::Reverse(a.created_at),
        )
            .cmp(&(
                &b.service_name,
                b.slot,
                &b.node_id,
                std::cmp::Reverse(b.created_at),
            ))
    });
    out
}

async fn service_tasks(State(m): State<Shared>, Path(id): Path<String>) -> Result<Json<Vec<Task>>> {
    let c = cluster(&m).await?;
    let store = c.store.read().expect("store lock");
    let s = find_service(&store, &id)?;
    Ok(Json(sorted_tasks(store.tasks_of(&s.id))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFilter {
    service: Option<String>,
    node: Option<String>,
}

async fn task_list(
    State(m): State<Shared>,
    Query(f): Query<TaskFilter>,
) -> Result<Json<Vec<Task>>> {
    let c = cluster(&m).await?;
    let store = c.store.read().expect("store lock");
    let service = match &f.service {
        Some(s) => Some(find_service(&store, s)?.id),
        None => None,
    };
    let node = match &f.node {
        Some(n) => Some(find_node(&store, n)?.id),
        None => None,
    };
    let tasks = store
        .tasks
        .values()
        .map(std::sync::Arc::as_ref)
        .filter(|t| service.as_ref().is_none_or(|s| &t.service_id == s))
        .filter(|t| node.as_ref().is_none_or(|n| t.node_id.as_ref() == Some(n)));
    Ok(Json(sorted_tasks(tasks)))
}

async fn task_inspect(State(m): State<Shared>, Path(id): Path<String>) -> Result<Json<Task>> {
    let c = cluster(&m).await?;
    let store = c.store.read().expect("store lock");
    let task = store
        .tasks
        .values()
        .find(|t| t.id.as_str() == id || t.id.as_str().starts_with(&id))
        .map(|t| (**t).clone());
    task.map(Json)
        .ok_or_else(|| ApiError::not_found("task", &id))
}

async fn network_list(State(m): State<Shared>) -> Result<Json<Vec<Network>>> {
    let c = cluster(&m).await?;
    let store = c.store.read().expect("store lock");
    Ok(Json(store.networks.values().cloned().collect()))
}

async fn file_list(m: &Manager, kind: FileKind) -> Result<Json<Vec<FileObject>>> {
    let c = cluster(m).await?;
    let store = c.store.read().expect("store lock");
    Ok(Json(
        store
            .files
            .values()
            .filter(|f| f.kind == kind)
            .map(|f| f.clone().redacted())
            .collect(),
    ))
}

async fn file_create(
    m: &Manager,
    kind: FileKind,
    spec: FileObjectSpec,
) -> Result<(StatusCode, Json<Created>)> {
    let c = cluster(m).await?;
    spec.check(kind).map_err(ApiError::bad)?;
    let id = FileObjectId::from_bits(rand::random());
    c.raft
        .propose(Command::CreateFile(Box::new(FileObject {
            id: id.clone(),
            kind,
            version: 0,
            created_at: now(),
            spec,
        })))
        .await?;
    Ok((StatusCode::CREATED, Json(Created { id: id.to_string() })))
}

async fn file_inspect(m: &Manager, kind: FileKind, id: &str) -> Result<Json<FileObject>> {
    let c = cluster(m).await?;
    let store = c.store.read().expect("store lock");
    let f = store
        .file_by_ref(kind, id)
        .ok_or_else(|| ApiError::not_found(kind.as_str(), id))?;
    Ok(Json(f.clone().redacted()))
}

async fn file_remove(m: &Manager, kind: FileKind, id: &str) -> Result<StatusCode> {
    let c = cluster(m).await?;
    let f = c
        .store
        .read()
        .expect("store lock")
        .file_by_ref(kind, id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(kind.as_str(), id))?;
    c.raft.propose(Command::RemoveFile { id: f.id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn secret_list(State(m): State<Shared>) -> Result<Json<Vec<FileObject>>> {
    file_list(&m, FileKind::Secret).await
}
async fn secret_create(
    State(m): State<Shared>,
    Body(spec): Body<FileObjectSpec>,
) -> Result<(StatusCode, Json<Created>)> {
    file_create(&m, FileKind::Secret, spec).await
}
async fn secret_inspect(
    State(m): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<FileObject>> {
    file_inspect(&m, FileKind::Secret, &id).await
}
async fn secret_remove(State(m): State<Shared>, Path(id): Path<String>) -> Result<StatusCode> {
    file_remove(&m, FileKind::Secret, &id).await
}
async fn config_list(State(m): State<Shared>) -> Result<Json<Vec<FileObject>>> {
    file_list(&m, FileKind::Config).await
}
async fn config_create(
    State(m): State<Shared>,
    Body(spec): Body<FileObjectSpec>,
) -> Result<(StatusCode, Json<Created>)> {
    file_create(&m, FileKind::Config, spec).await
}
async fn config_inspect(
    State(m): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<FileObject>> {
    file_inspect(&m, FileKind::Config, &id).await
}
async fn config_remove(State(m): State<Shared>, Path(id): Path<String>) -> Result<StatusCode> {
    file_remove(&m, FileKind::Config, &id).await
}

async fn network_create(
    State(m): State<Shared>,
    Body(spec): Body<NetworkSpec>,
) -> Result<(StatusCode, Json<Created>)> {
    let c = cluster(&m).await?;
    let new = allocate_networks(&c.store.read().expect("store lock"), vec![spec], || {
        NetworkId::from_bits(rand::random())
    })
    .map_err(ApiError::bad)?
    .pop()
    .expect("one network");
    let id = new.id.to_string();
    c.raft
        .propose(Command::CreateNetwork(Box::new(new)))
        .await?;
    Ok((StatusCode::CREATED, Json(Created { id })))
}

async fn network_inspect(
    State(m): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<NetworkInfo>> {
    let c = cluster(&m).await?;
    let store = c.store.read().expect("store lock");
    let network = store
        .network_by_ref(&id)
        .cloned()
        .ok_or_else(|| ApiError::not_found("network", &id))?;
    // This manager's index is built as it applies the log; one that applied nothing yet
    // builds it here.
    let in_use = match &store.ipam.0 {
        Some(ipam) => ipam.used(&network.id),
        None => crate::allocator::Ipam::build(&store).used(&network.id),
    };
    Ok(Json(NetworkInfo {
        network,
        addresses_in_use: in_use,
    }))
}

async fn network_remove(State(m): State<Shared>, Path(id): Path<String>) -> Result<StatusCode> {
    let c = cluster(&m).await?;
    let net = c
        .store
        .read()
        .expect("store lock")
        .network_by_ref(&id)
        .cloned()
        .ok_or_else(|| ApiError::not_found("network", &id))?;
    c.raft
        .propose(Command::RemoveNetwork { id: net.id })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn stack_of(labels: &BTreeMap<String, String>) -> Option<&str> {
    labels.get(STACK_LABEL).map(String::as_str)
}

async fn stack_list(State(m): State<Shared>) -> Result<Json<Vec<StackSummary>>> {
    let c = cluster(&m).await?;
    let store = c.store.read().expect("store lock");
    let mut stacks: BTreeMap<String, StackSummary> = BTreeMap::new();
    for s in store.services.values() {
        if let Some(name) = stack_of(&s.spec.labels) {
            stacks
                .entry(name.to_owned())
                .or_insert_with(|| StackSummary {
                    name: name.to_owned(),
                    services: 0,
                    networks: 0,
                })
                .services += 1;
        }
    }
    for n in store.networks.values() {
        if let Some(name) = stack_of(&n.spec.labels) {
            stacks
                .entry(name.to_owned())
                .or_insert_with(|| StackSummary {
                    name: name.to_owned(),
                    services: 0,
                    networks: 0,
                })
                .networks += 1;
        }
    }
    Ok(Json(stacks.into_values().collect()))
}

/// `--resolve-image`: pins `image` (when it names its registry) to the digest its tag points
/// at now, so every replica runs the same bytes whatever the tag does later. With `changed`,
/// an image equal to `existing` without its digest keeps `existing`'s digest. Docker Hub
/// images and images already pinned are left as written. An image that cannot be resolved is
/// used as written, and the warning says so (as docker does): each node then pulls it by tag.
async fn pin_image(
    m: &Manager,
    image: &str,
    existing: Option<&str>,
    mode: ResolveImage,
    auth: Option<&RegistryAuth>,
) -> std::result::Result<String, String> {
    if mode == ResolveImage::Never {
        return Ok(image.to_owned());
    }
    let Ok(r) = shoal_registry::reference::Reference::parse(image) else {
        return Ok(image.to_owned());
    };
    if r.registry == shoal_registry::reference::DOCKER_HUB || r.digest.is_some() {
        return Ok(image.to_owned());
    }
    if mode == ResolveImage::Changed {
        if let Some(e) = existing.filter(|e| e.split('@').next() == Some(image) && e.contains('@'))
        {
            return Ok(e.to_owned());
        }
    }
    let options = shoal_registry::PullOptions {
        insecure: m.insecure_registries().to_vec(),
        certs_dir: m.registry_certs_dir(),
        credentials: auth
            .filter(|a| a.server == r.registry)
            .map(|a| (a.username.clone(), a.password.clone().unwrap_or_default())),
        ..Default::default()
    };
    shoal_registry::resolve(image, &options).await.map_err(|e| {
        format!(
            "image {image} could not be accessed on a registry to record its digest ({e}): \
             each node will pull it by its tag, possibly getting different versions"
        )
    })
}

/// Pins the images of a stack's services (see [`pin_image`]), before the store is read, so no
/// lock is held while registries answer; returns the warnings.
async fn pin_images(m: &Manager, c: &Cluster, req: &mut StackDeploy) -> Vec<String> {
    let mut warnings = Vec::new();
    for spec in &mut req.stack.services {
        let existing = c
            .store
            .read()
            .expect("store lock")
            .services
            .values()
            .find(|s| s.spec.name == spec.name)
            .map(|s| s.spec.clone());
        if let Some(e) = &existing {
            spec.keep_registry_auth(e);
        }
        let auth = spec.task.container.registry_auth.clone();
        match pin_image(
            m,
            &spec.task.container.image,
            existing.as_ref().map(|e| e.task.container.image.as_str()),
            req.resolve_image,
            auth.as_ref(),
        )
        .await
        {
            Ok(image) => spec.task.container.image = image,
            Err(w) => warnings.push(w),
        }
    }
    warnings
}

/// `?resolve_image=always|changed|never` of `service create|update`.
fn resolve_mode(q: &HashMap<String, String>, default: ResolveImage) -> Result<ResolveImage> {
    match q.get("resolve_image").map(String::as_str) {
        None => Ok(default),
        Some("always") => Ok(ResolveImage::Always),
        Some("changed") => Ok(ResolveImage::Changed),
        Some("never") => Ok(ResolveImage::Never),
        Some(other) => Err(ApiError::bad(format!(
            "resolve_image {other:?}: use always, changed or never"
        ))),
    }
}

async fn stack_deploy(
    State(m): State<Shared>,
    Path(name): Path<String>,
    Body(mut req): Body<StackDeploy>,
) -> Result<Json<StackDeployResult>> {
    let c = cluster(&m).await?;
    if req.stack.name != name {
        return Err(ApiError::bad(format!(
            "the body deploys stack {:?} but the path names {name:?}",
            req.stack.name
        )));
    }
    let warnings = pin_images(&m, &c, &mut req).await;
    let mut result = StackDeployResult {
        warnings,
        ..Default::default()
    };
    let cmd = {
        let store = c.store.read().expect("store lock");
        for ext in &req.stack.external_networks {
            if store.network_by_ref(ext).is_none() {
                return Err(ApiError::bad(format!("network {ext:?} is declared as external, but could not be found: create it first")));
            }
        }
        for spec in &req.stack.networks {
            if spec.labels.get(STACK_LABEL) != Some(&name) {
                return Err(ApiError::bad(format!(
                    "network {} is not labelled with stack {name}",
                    spec.name
                )));
            }
        }
        let new_specs: Vec<NetworkSpec> = req
            .stack
            .networks
            .iter()
            .filter(|n| store.network_by_ref(&n.name).is_none())
            .cloned()
            .collect();
        for n in &req.stack.networks {
            if let Some(existing) = store.network_by_ref(&n.name) {
                if stack_of(&existing.spec.labels) != Some(name.as_str()) {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!(
                            "network {} exists and does not belong to stack {name}",
                            n.name
                        ),
                    ));
                }
            }
        }
        let networks =
            allocate_networks(&store, new_specs, || NetworkId::from_bits(rand::random()))
                .map_err(ApiError::bad)?;
        result.networks_created = networks.iter().map(|n| n.spec.name.clone()).collect();
        let (mut create, mut update) = (Vec::new(), Vec::new());
        for spec in &req.stack.services {
            if spec.stack() != Some(name.as_str()) {
                return Err(ApiError::bad(format!(
                    "service {} is not labelled with stack {name}",
                    spec.name
                )));
            }
            // A live service of that name, else one still being removed (brought back).
            let existing = store
                .services
                .values()
                .filter(|s| s.spec.name == spec.name)
                .min_by_key(|s| s.removing);
            match existing {
                Some(existing) if existing.spec == *spec && !existing.removing => {
                    result.unchanged.push(spec.name.clone())
                }
                Some(existing) => {
                    update.push((existing.id.clone(), spec.clone()));
                    result.updated.push(spec.name.clone());
                }
                None => {
                    create.push((ServiceId::from_bits(rand::random()), spec.clone()));
                    result.created.push(spec.name.clone());
                }
            }
        }
        let mut remove = Vec::new();
        if req.prune {
            for s in store.services.values() {
                if stack_of(&s.spec.labels) == Some(name.as_str())
                    && !s.removing
                    && !req.stack.services.iter().any(|n| n.name == s.spec.name)
                {
                    remove.push(s.id.clone());
                    result.removed.push(s.spec.name.clone());
                }
            }
        }
        // Secrets and configs are immutable, as in Swarm: one of the same name must hold the
        // same bytes (its data is never echoed).
        let mut files = Vec::new();
        for f in &req.stack.files {
            f.spec.check(f.kind).map_err(ApiError::bad)?;
            match store.file_by_ref(f.kind, &f.spec.name) {
                Some(existing) if existing.spec.data == f.spec.data => {}
                Some(_) => {
                    return Err(ApiError::bad(format!(
                        "{kind} {name} exists with other content: {kind}s cannot change; \
                         give the new content a new name (and the services that use it)",
                        kind = f.kind,
                        name = f.spec.name
                    )))
                }
                None => {
                    files.push(FileObject {
                        id: FileObjectId::from_bits(rand::random()),
                        kind: f.kind,
                        version: 0,
                        created_at: now(),
                        spec: f.spec.clone(),
                    });
                    result
                        .files_created
                        .push(format!("{} {}", f.kind, f.spec.name));
                }
            }
        }
        Command::DeployStack {
            files,
            networks,
            create,
            update,
            remove,
            at: now(),
        }
    };
    result.revision = c.raft.propose(cmd).await?;
    Ok(Json(result))
}

async fn stack_tasks(State(m): State<Shared>, Path(name): Path<String>) -> Result<Json<Vec<Task>>> {
    let c = cluster(&m).await?;
    let store = c.store.read().expect("store lock");
    let ids: Vec<ServiceId> = store
        .services
        .values()
        .filter(|s| stack_of(&s.spec.labels) == Some(name.as_str()))
        .map(|s| s.id.clone())
        .collect();
    if ids.is_empty() {
        return Err(ApiError::not_found("stack", &name));
    }
    Ok(Json(sorted_tasks(
        store
            .tasks
            .values()
            .map(std::sync::Arc::as_ref)
            .filter(|t| ids.contains(&t.service_id)),
    )))
}

async fn stack_remove(State(m): State<Shared>, Path(name): Path<String>) -> Result<StatusCode> {
    let c = cluster(&m).await?;
    c.raft.propose(Command::RemoveStack { name }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    since: u64,
}

async fn events(State(m): State<Shared>, Query(q): Query<EventsQuery>) -> Result<Response> {
    let c = cluster(&m).await?;
    let sub = c
        .hub
        .subscribe(q.since)
        .map_err(|e| ApiError::new(StatusCode::GONE, e.to_string()))?;
    let backlog = futures::stream::iter(
        sub.backlog
            .into_iter()
            .flat_map(|b| b.iter().cloned().collect::<Vec<_>>())
            .map(Ok::<_, std::convert::Infallible>),
    );
    let live = futures::stream::unfold(sub.live, |mut rx| async move {
        // A subscriber that falls behind is cut off; it resumes from its last revision.
        let batch = rx.recv().await.ok()?;
        let events: Vec<_> = batch.iter().cloned().map(Ok).collect();
        Some((futures::stream::iter(events), rx))
    });
    use futures::StreamExt;
    let lines = backlog.chain(live.flatten()).map(|e| {
        let mut e: Event = e.expect("infallible");
        e.object = e.object.redacted();
        let mut line = serde_json::to_vec(&e).expect("events serialize");
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line))
    });
    Ok(Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(axum::body::Body::from_stream(lines))
        .expect("valid response"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    follow: Option<bool>,
    tail: Option<usize>,
}

/// How long a node may stay silent before a `service logs` without `--follow` gives up on it.
const LOG_NODE_SILENCE: Duration = Duration::from_secs(10);

async fn service_logs(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response> {
    let c = cluster(&m).await?;
    let follow = q.follow.unwrap_or(false);
    let mut names: BTreeMap<TaskId, (String, u64)> = BTreeMap::new();
    let per_node = {
        let store = c.store.read().expect("store lock");
        let s = find_service(&store, &id)?;
        let mut per_node: BTreeMap<NodeId, Vec<TaskId>> = BTreeMap::new();
        for t in sorted_tasks(store.tasks_of(&s.id)) {
            names.insert(t.id.clone(), (t.service_name.clone(), t.slot));
            let Some(node) = &t.node_id else { continue };
            // Tasks that never reached their node have no output.
            if t.status.state < shoal_api::task::TaskState::Assigned {
                continue;
            }
            let down = store
                .nodes
                .get(node)
                .is_none_or(|n| n.status.state == shoal_api::node::NodeState::Down);
            if down {
                tracing::info!(node_id = %node, task_id = %t.id, "logs: node is down, skipped");
                continue;
            }
            per_node.entry(node.clone()).or_default().push(t.id.clone());
        }
        per_node
    };
    let names = Arc::new(names);
    let remaining: BTreeSet<NodeId> = per_node.keys().cloned().collect();
    let (sub, rx) = c.logs.subscribe(per_node, follow, q.tail);
    let guard = c.logs.guard(&sub);
    // The guard travels with the stream: when the client goes away, the subscription ends.
    let lines = futures::stream::unfold(
        (rx, guard, remaining),
        move |(mut rx, guard, mut remaining)| {
            let names = names.clone();
            async move {
                loop {
                    if !follow && remaining.is_empty() {
                        return None;
                    }
                    let next = if follow {
                        rx.recv().await
                    } else {
                        match tokio::time::timeout(LOG_NODE_SILENCE, rx.recv()).await {
                            Ok(n) => n,
                            Err(_) => {
                                tracing::warn!(nodes = ?remaining, "logs: nodes did not answer");
                                None
                            }
                        }
                    };
                    match next? {
                        crate::logs::LogEvent::Line(mut l) => {
                            if let Some((service, slot)) = names.get(&l.task_id) {
                                l.service = service.clone();
                                l.slot = *slot;
                            }
                            let mut bytes = serde_json::to_vec(&l).expect("log lines serialize");
                            bytes.push(b'\n');
                            return Some((
                                Ok::<_, std::convert::Infallible>(bytes::Bytes::from(bytes)),
                                (rx, guard, remaining),
                            ));
                        }
                        crate::logs::LogEvent::NodeDone(n) => {
                            remaining.remove(&n);
                        }
                    }
                }
            }
        },
    );
    Ok(Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(axum::body::Body::from_stream(lines))
        .expect("valid response"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogSubQuery {
    node_id: NodeId,
    session_id: String,
    wait_ms: Option<u64>,
}

async fn agent_log_subscriptions(
    State(m): State<Shared>,
    Extension(peer): Extension<Peer>,
    Query(q): Query<LogSubQuery>,
) -> Result<Json<Vec<LogSubscription>>> {
    let c = cluster(&m).await?;
    authorize_node(&c, &peer, &q.node_id)?;
    c.dispatcher.touch(&q.node_id, &q.session_id)?;
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(10_000).min(60_000));
    Ok(Json(c.logs.wait_pending(&q.node_id, wait).await))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogPublishQuery {
    node_id: NodeId,
}

async fn agent_log_publish(
    State(m): State<Shared>,
    Extension(peer): Extension<Peer>,
    Path(id): Path<String>,
    Query(q): Query<LogPublishQuery>,
    Body(req): Body<LogPublish>,
) -> Result<Json<LogPublishResponse>> {
    let c = cluster(&m).await?;
    authorize_node(&c, &peer, &q.node_id)?;
    c.dispatcher.touch(&q.node_id, &req.session)?;
    let active = c.logs.publish(&id, &q.node_id, req.lines, req.done).await;
    Ok(Json(LogPublishResponse { active }))
}

/// Agent sessions live on the leader: anything else is told to go there.
fn leader_only(c: &Cluster, what: &str) -> Result<()> {
    if c.raft.status().borrow().is_leader() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this manager is not the leader; {what}"),
        ))
    }
}

async fn agent_register(
    State(m): State<Shared>,
    Extension(peer): Extension<Peer>,
    Body(req): Body<RegisterRequest>,
) -> Result<Json<RegisterResponse>> {
    let c = cluster(&m).await?;
    leader_only(&c, "register with the leader")?;
    // Over TCP the certificate decides who registers, and as what.
    let certified_id = match &peer {
        Peer::Local => None,
        Peer::Remote { .. } => {
            let id = certified(&c, &peer)?;
            let node = node_id_of(&id);
            if req.node_id.as_ref().is_some_and(|claimed| *claimed != node) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "this connection's certificate names node {node}: it cannot register as another node"
                    ),
                ));
            }
            if req.manager && id.role != crate::pki::CertRole::Manager {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "node {node} holds a worker certificate: it cannot register as a manager"
                    ),
                ));
            }
            Some(node)
        }
    };
    let token = c
        .store
        .read()
        .expect("store lock")
        .cluster
        .as_ref()
        .map(|o| o.worker_join_token.clone())
        .unwrap_or_default();
    if token.is_empty() || req.join_token != token {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid join token: use the token `shoal cluster info` shows",
        ));
    }
    let id = certified_id
        .or_else(|| req.node_id.clone())
        .unwrap_or_else(|| NodeId::from_bits(rand::random()));
    let role = if req.manager {
        NodeRole::Manager
    } else {
        NodeRole::Worker
    };
    c.raft
        .propose(Command::RegisterNode {
            id: id.clone(),
            description: Box::new(req.description),
            addr: req.addr,
            role,
            raft_id: req.raft_id,
            at: now(),
        })
        .await?;
    let session_id = c.dispatcher.open_session(&id);
    tracing::info!(node_id = %id, "agent registered");
    let managers = c.manager_addrs();
    Ok(Json(RegisterResponse {
        node_id: id,
        session_id,
        heartbeat_period_ms: c.dispatcher.settings().heartbeat_period.as_millis() as u64,
        // A one-host cluster (no cluster port) cannot be partitioned from its agent.
        self_stop_after_ms: if managers.is_empty() {
            0
        } else {
            c.dispatcher.settings().self_stop_after().as_millis() as u64
        },
        managers,
    }))
}

/// Any manager answers: where the managers are, so an agent whose list went stale finds the
/// leader.
async fn agent_managers(
    State(m): State<Shared>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<ManagerList>> {
    let c = cluster(&m).await?;
    certified(&c, &peer)?;
    let leader_known = c.raft.status().borrow().leader != 0;
    Ok(Json(ManagerList {
        managers: c.manager_addrs(),
        leader_known,
    }))
}

async fn agent_heartbeat(
    State(m): State<Shared>,
    Extension(peer): Extension<Peer>,
    Body(req): Body<Heartbeat>,
) -> Result<Json<HeartbeatResponse>> {
    let c = cluster(&m).await?;
    authorize_node(&c, &peer, &req.node_id)?;
    // A manager that lost the leadership refuses heartbeats, so its agents go and find the new
    // leader: the new leader would otherwise mark them down when its election grace ends.
    leader_only(&c, "open a session with the new leader")?;
    c.dispatcher.touch(&req.node_id, &req.session_id)?;
    // A worker an operator promoted learns the manager token here, once.
    let promote = {
        let store = c.store.read().expect("store lock");
        store
            .nodes
            .get(&req.node_id)
            .filter(|n| n.spec.role == NodeRole::Manager && n.manager_status.is_none())
            .and_then(|_| store.cluster.as_ref().map(|o| o.manager_join_token.clone()))
            .filter(|t| !t.is_empty())
    };
    Ok(Json(HeartbeatResponse {
        heartbeat_period_ms: c.dispatcher.settings().heartbeat_period.as_millis() as u64,
        managers: c.manager_addrs(),
        promote,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignmentsQuery {
    node_id: NodeId,
    session_id: String,
    #[serde(default)]
    since: u64,
    #[serde(default)]
    wait_ms: Option<u64>,
}

async fn agent_assignments(
    State(m): State<Shared>,
    Extension(peer): Extension<Peer>,
    Query(q): Query<AssignmentsQuery>,
) -> Result<Json<Assignments>> {
    let c = cluster(&m).await?;
    authorize_node(&c, &peer, &q.node_id)?;
    c.dispatcher.touch(&q.node_id, &q.session_id)?;
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(10_000).min(60_000));
    Ok(Json(
        dispatcher::wait_assignments(&c.store, &c.hub, &q.node_id, q.since, wait).await,
    ))
}

async fn agent_status(
    State(m): State<Shared>,
    Extension(peer): Extension<Peer>,
    Body(req): Body<StatusReport>,
) -> Result<StatusCode> {
    let c = cluster(&m).await?;
    authorize_node(&c, &peer, &req.node_id)?;
    // A manager that lost the leadership refuses heartbeats, so its agents go and find the new
    // leader: the new leader would otherwise mark them down when its election grace ends.
    leader_only(&c, "open a session with the new leader")?;
    c.dispatcher.touch(&req.node_id, &req.session_id)?;
    if req.updates.is_empty() {
        return Ok(StatusCode::NO_CONTENT);
    }
    let ops = req
        .updates
        .into_iter()
        .map(|u| crate::store::TaskOp::Status {
            id: u.task_id,
            node: req.node_id.clone(),
            status: u.status,
        })
        .collect();
    c.raft.propose(Command::Tasks(ops)).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! Certificate renewal and root CA rotation, as Swarm's.
//!
//! Every node checks its certificate every [`CHECK_EVERY`] against what the cluster says it
//! should be ([`status_for`], decided by [`crate::pki::renewal`]) and replaces it, with a new key
//! of its own, when its role changed (promote, demote), when the signing root changed (a
//! rotation), or once half its life passed. A manager issues its own from the store's CA; a
//! worker asks a manager over the cluster port (`POST /v1/dispatcher/renew`), authorized by the
//! certificate it still holds, and the role it gets is the store's, never what it asks for.
//! The new certificate and roots take effect at once for new connections, both ways.
//!
//! A rotation (`cluster ca --rotate`) makes a new root, cross-signed by the current one: the
//! cluster then trusts both, every new certificate comes with the cross-signed root (so a node
//! that still trusts only the old root accepts it), and nodes move one by one. Once every node
//! holds a certificate from the new root, the leader ends the rotation: the old root is no
//! longer trusted and the join tokens carry the new root's digest.

use crate::manager::{new_token, Cluster, Manager, ManagerError};
use crate::pki::{CertRole, NodeCerts, Renewal};
use crate::store::{ClusterObject, Command, Store};
use shoal_api::node::{Node, NodeCertificate, NodeRole};
use shoal_api::wire::{CaInfo, CaKeyPair, CertificateStatus, RenewResponse};
use shoal_api::NodeId;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a node checks its certificate.
pub const CHECK_EVERY: Duration = Duration::from_secs(3);

/// The role a node's certificate must name: manager while it is a voter (as it registered),
/// worker once it registers as one; `None` (keep its role) for a worker promoted but not yet
/// joined to the managers, which then gets its manager certificate as it joins.
pub fn role_for(node: &Node) -> Option<CertRole> {
    if node.manager_status.is_some() {
        Some(CertRole::Manager)
    } else if node.spec.role == NodeRole::Worker {
        Some(CertRole::Worker)
    } else {
        None
    }
}

/// What `node`'s certificate should be.
pub fn status_for(obj: &ClusterObject, node: &Node) -> CertificateStatus {
    CertificateStatus {
        trust: obj.trust_pem(),
        signing_ca: obj.signing_subject(),
        manager: role_for(node).map(|r| r == CertRole::Manager),
        recorded_issuer: node
            .certificate
            .as_ref()
            .map(|c| c.issuer.clone())
            .unwrap_or_default(),
    }
}

/// The cluster object, once `cluster init` made it.
fn cluster_of(store: &Store) -> Result<&ClusterObject, ManagerError> {
    store
        .cluster
        .as_ref()
        .ok_or_else(|| ManagerError::Invalid("the cluster is not initialized yet".into()))
}

/// The root that signs certificates now.
fn signing_ca(obj: &ClusterObject) -> Result<&crate::pki::ClusterCa, ManagerError> {
    obj.ca
        .as_ref()
        .ok_or_else(|| ManagerError::Invalid("this cluster has no CA".into()))
}

/// Signs `csr` for `subject` (a node id, or a user's name) as `role` with the cluster's signing
/// root; during a rotation the cross-signed root follows the certificate.
pub fn issue_chain(
    obj: &ClusterObject,
    csr: &str,
    subject: &str,
    role: CertRole,
) -> Result<String, ManagerError> {
    let ca = signing_ca(obj)?;
    let mut chain = crate::pki::issue(ca, csr, subject, role, &obj.id, obj.cert_expiry())?;
    if let Some(cross) = &obj.ca_cross {
        if !chain.ends_with('\n') {
            chain.push('\n');
        }
        chain.push_str(cross);
    }
    Ok(chain)
}

/// Issues `node_id` a certificate for its own `csr`, in the role the store gives it (else the
/// role of the certificate it holds, `current`), and records it; ends a rotation this was the
/// last node of.
pub async fn issue_for(
    c: &Cluster,
    node_id: &NodeId,
    current: CertRole,
    csr: &str,
) -> Result<RenewResponse, ManagerError> {
    let (obj, role) = {
        let store = c.store.read().expect("store lock");
        let obj = cluster_of(&store)?.clone();
        let node = store.nodes.get(node_id).ok_or_else(|| {
            ManagerError::Invalid(format!("node {node_id} has not registered yet"))
        })?;
        (obj, role_for(node).unwrap_or(current))
    };
    let certificate = issue_chain(&obj, csr, node_id.as_str(), role)?;
    let not_after = crate::pki::validity(&certificate)
        .map(|(_, until)| until)
        .unwrap_or_default();
    c.raft
        .propose(Command::RecordCertificate {
            id: node_id.clone(),
            certificate: Box::new(NodeCertificate {
                issuer: obj.signing_subject(),
                not_after,
            }),
        })
        .await?;
    tracing::info!(node_id = %node_id, role = ?role, not_after, "certificate issued");
    finish_rotation_if_done(c).await?;
    Ok(RenewResponse {
        certificate,
        ca_certificate: obj.trust_pem(),
    })
}

/// How far a rotation has come: nodes whose recorded certificate the signing root issued, and
/// all nodes.
pub fn progress(store: &Store) -> (usize, usize) {
    let signing = store
        .cluster
        .as_ref()
        .map(ClusterObject::signing_subject)
        .unwrap_or_default();
    let done = store
        .nodes
        .values()
        .filter(|n| n.certificate.as_ref().is_some_and(|c| c.issuer == signing))
        .count();
    (done, store.nodes.len())
}

/// The cluster's CA as `cluster ca` shows it.
pub fn ca_info(store: &Store) -> Result<CaInfo, ManagerError> {
    let obj = cluster_of(store)?;
    let ca = signing_ca(obj)?;
    let (nodes_done, nodes_total) = progress(store);
    Ok(CaInfo {
        ca_certificate: ca.cert_pem.clone(),
        digest: crate::pki::ca_digest(&ca.cert_pem)?,
        subject: obj.signing_subject(),
        rotating: !obj.ca_previous.is_empty(),
        nodes_done,
        nodes_total,
        cert_expiry_secs: obj.cert_expiry().as_secs(),
    })
}

/// Ends a rotation once every node holds a certificate from the new root. The leader's to do
/// (others leave it to the leader), after each certificate it issues and in its own check
/// every [`CHECK_EVERY`].
pub async fn finish_rotation_if_done(c: &Cluster) -> Result<bool, ManagerError> {
    if !c.raft.status().borrow().is_leader() {
        return Ok(false);
    }
    let digest = {
        let store = c.store.read().expect("store lock");
        let obj = cluster_of(&store)?;
        let (done, total) = progress(&store);
        if obj.ca_previous.is_empty() || done < total {
            return Ok(false);
        }
        crate::pki::ca_digest(&signing_ca(obj)?.cert_pem)?
    };
    c.raft
        .propose(Command::FinishCaRotation {
            worker_join_token: new_token(&digest),
            manager_join_token: new_token(&digest),
        })
        .await?;
    tracing::info!(%digest, "CA rotation done: every node holds a certificate from the new root");
    Ok(true)
}

/// Starts a rotation to a new root (`external`, or one made here).
pub async fn rotate(c: &Cluster, external: Option<&CaKeyPair>) -> Result<CaInfo, ManagerError> {
    let obj = cluster_of(&c.store.read().expect("store lock"))?.clone();
    let current = signing_ca(&obj)?;
    let next = match external {
        Some(ext) => crate::pki::external_ca(ext)?,
        None => crate::pki::new_ca(&obj.id)?,
    };
    let subject = crate::pki::subject_of(&next.cert_pem);
    if std::iter::once(&current.cert_pem)
        .chain(&obj.ca_previous)
        .any(|trusted| crate::pki::subject_of(trusted) == subject)
    {
        return Err(ManagerError::Invalid(
            "the new root CA has the subject of one the cluster already trusts: give it another"
                .into(),
        ));
    }
    let cross = crate::pki::cross_sign(current, &next)?;
    c.raft
        .propose(Command::RotateCa {
            ca: Box::new(next),
            cross,
        })
        .await?;
    tracing::info!("CA rotation started");
    ca_info(&c.store.read().expect("store lock"))
}

/// Keeps this node's certificate as the cluster wants it, until `shutdown`. A worker keeps one
/// client per manager, so its checks reuse their connections.
pub async fn keep_fresh(manager: Weak<Manager>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clients = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(m) = manager.upgrade() else { return };
        if let Err(e) = check_once(&m, &mut clients).await {
            tracing::warn!(error = %e, "certificate check failed; trying again");
        }
    }
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Where a node's certificate comes from: a manager's own store, or a manager over the
/// cluster port for a worker.
enum Issuer<'a> {
    Local(&'a Cluster),
    Remote(&'a shoal_client::Client),
}

impl Issuer<'_> {
    /// What `node_id`'s certificate should be; `None` while the store does not know the node.
    async fn status(&self, node_id: &NodeId) -> Result<Option<CertificateStatus>, ManagerError> {
        match self {
            Issuer::Local(c) => {
                let store = c.store.read().expect("store lock");
                Ok(match (store.cluster.as_ref(), store.nodes.get(node_id)) {
                    (Some(obj), Some(node)) => Some(status_for(obj, node)),
                    _ => None,
                })
            }
            Issuer::Remote(client) => client
                .get("/v1/dispatcher/certificate")
                .await
                .map(Some)
                .map_err(|e| self.failed(client, e)),
        }
    }

    async fn issue(
        &self,
        node_id: &NodeId,
        current: CertRole,
        csr: String,
    ) -> Result<RenewResponse, ManagerError> {
        match self {
            Issuer::Local(c) => issue_for(c, node_id, current, &csr).await,
            Issuer::Remote(client) => client
                .post(
                    "/v1/dispatcher/renew",
                    &shoal_api::wire::RenewRequest { csr },
                )
                .await
                .map_err(|e| self.failed(client, e)),
        }
    }

    fn failed(&self, client: &shoal_client::Client, e: shoal_client::ClientError) -> ManagerError {
        ManagerError::Renew {
            remote: client.endpoint().to_string(),
            message: e.to_string(),
        }
    }
}

/// One check: ask what the certificate should be, and renew or take new roots if needed.
async fn check_once(
    m: &Arc<Manager>,
    clients: &mut HashMap<String, shoal_client::Client>,
) -> Result<(), ManagerError> {
    if m.is_locked() {
        return Ok(());
    }
    // The cluster first: a join holds it while it waits for the certificates.
    let cluster = m.cluster().await;
    let _guard = m.certs_change().lock().await;
    let (Some(certs), Some(node_id)) = (m.certs(), m.cert_node_id()) else {
        return Ok(());
    };
    if let Some(c) = cluster {
        finish_rotation_if_done(&c).await?;
        return bring_up_to_date(m, &certs, &node_id, &Issuer::Local(&c)).await;
    }
    let Some(membership) = m.membership().filter(|mb| !mb.manager) else {
        return Ok(());
    };
    clients.retain(|addr, _| membership.managers.contains(addr));
    let mut last = None;
    for addr in &membership.managers {
        let client = clients.entry(addr.clone()).or_insert_with(|| {
            shoal_client::Client::new(shoal_client::Endpoint::Tcp(addr.clone()))
                .with_tls(m.node_tls())
        });
        match bring_up_to_date(m, &certs, &node_id, &Issuer::Remote(client)).await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    last.map_or(Ok(()), Err)
}

/// Renews `certs` through `issuer`, or takes the cluster's new roots, as
/// [`crate::pki::renewal`] decides.
async fn bring_up_to_date(
    m: &Manager,
    certs: &NodeCerts,
    node_id: &NodeId,
    issuer: &Issuer<'_>,
) -> Result<(), ManagerError> {
    let Some(status) = issuer.status(node_id).await? else {
        return Ok(());
    };
    match crate::pki::renewal(certs, &status, now_secs()) {
        Renewal::Keep => Ok(()),
        Renewal::Trust => m.replace_certs(NodeCerts {
            ca_pem: status.trust,
            ..certs.clone()
        }),
        Renewal::Reissue(why) => {
            tracing::info!(reason = why, "renewing this node's certificate");
            let (key_pem, csr) = crate::pki::new_key_and_csr()?;
            let current = certs.identity().map(|i| i.role).unwrap_or(CertRole::Worker);
            let resp = issuer.issue(node_id, current, csr).await?;
            let next = NodeCerts {
                ca_pem: resp.ca_certificate,
                cert_pem: resp.certificate,
                key_pem,
            };
            if next.identity().map(|i| i.node_id) != certs.identity().map(|i| i.node_id) {
                return Err(ManagerError::Invalid(
                    "the manager issued a certificate for another node".into(),
                ));
            }
            m.replace_certs(next)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{issue, new_ca, new_key_and_csr, renewal};

    fn node(role: NodeRole, voter: bool) -> Node {
        Node {
            id: NodeId::from_bits(1),
            version: 1,
            created_at: shoal_api::units::Timestamp(0),
            spec: shoal_api::node::NodeSpec {
                role,
                ..Default::default()
            },
            description: Default::default(),
            status: Default::default(),
            manager_status: voter.then(|| shoal_api::node::ManagerStatus {
                raft_id: 1,
                addr: String::new(),
            }),
            certificate: None,
        }
    }

    #[test]
    fn a_certificate_is_renewed_for_a_new_role_a_new_root_or_at_half_life() {
        let ca = new_ca("c1").unwrap();
        let obj = ClusterObject {
            id: "c1".into(),
            ca: Some(ca.clone()),
            ..Default::default()
        };
        let (key, csr) = new_key_and_csr().unwrap();
        let worker = NodeCerts {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: issue(&ca, &csr, "n1", CertRole::Worker, "c1", obj.cert_expiry()).unwrap(),
            key_pem: key,
        };
        let now = now_secs();
        let mut n = node(NodeRole::Worker, false);
        // Not recorded yet: renewed once, so the cluster knows it.
        assert_eq!(
            renewal(&worker, &status_for(&obj, &n), now),
            Renewal::Reissue("not recorded")
        );
        n.certificate = Some(NodeCertificate {
            issuer: obj.signing_subject(),
            not_after: 0,
        });
        assert_eq!(renewal(&worker, &status_for(&obj, &n), now), Renewal::Keep);
        // Half its life later.
        let later = now + obj.cert_expiry().as_secs() as i64 / 2 + 600;
        assert_eq!(
            renewal(&worker, &status_for(&obj, &n), later),
            Renewal::Reissue("half its life passed")
        );
        // Promoted and a voter: a manager certificate. Promoted only: kept as it is.
        let mut promoted = node(NodeRole::Manager, false);
        promoted.certificate = n.certificate.clone();
        assert_eq!(
            renewal(&worker, &status_for(&obj, &promoted), now),
            Renewal::Keep
        );
        let mut voter = node(NodeRole::Manager, true);
        voter.certificate = n.certificate.clone();
        assert_eq!(
            renewal(&worker, &status_for(&obj, &voter), now),
            Renewal::Reissue("role")
        );
        // A rotation: a new signing root.
        let next = new_ca("c1").unwrap();
        let mut rotating = obj.clone();
        rotating.ca_cross = Some(crate::pki::cross_sign(&ca, &next).unwrap());
        rotating.ca_previous = vec![ca.cert_pem.clone()];
        rotating.ca = Some(next);
        assert_eq!(
            renewal(&worker, &status_for(&rotating, &n), now),
            Renewal::Reissue("root CA")
        );
        // Roots changed only (the rotation ended, the node was already moved).
        let moved = NodeCerts {
            ca_pem: rotating.trust_pem(),
            ..worker.clone()
        };
        assert_eq!(renewal(&moved, &status_for(&obj, &n), now), Renewal::Trust);
    }
}

//! The cluster's PKI, as Swarm's: a root CA made at `cluster init` (its key kept in the Raft
//! log, sealed at rest), node certificates issued from a node's own key (the node sends a CSR
//! with its join token; its private key never leaves it), identities read back from a peer's
//! certificate, and the rustls configurations of every cluster-port connection: TLS 1.3 with
//! a certificate on both sides. A node's certificate names it: subject CN is its node id, OU its
//! role, O the cluster id; a manager's also carries the DNS name [`MANAGER_NAME`], which every
//! node checks when it connects to a manager.
//!
//! A joining node has no certificate yet: it checks the manager against the CA digest its join
//! token carries (`SHLTKN-1-<sha256 of the CA>-<secret>`, as Swarm's `SWMTKN-1-...`) before it
//! sends the token.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The DNS name in every manager's certificate; nodes connect to managers under it.
pub const MANAGER_NAME: &str = "shoal-manager";

/// Node certificates live this long unless `--cert-expiry` says otherwise (Swarm's 90 days).
pub const DEFAULT_CERT_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);

/// The root CA lives 20 years (Swarm's default).
const CA_EXPIRY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

/// Errors of the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Certificate or key material could not be made or read.
    #[error("{what}: {message}")]
    Material {
        /// What was being made or read.
        what: String,
        /// Why it failed.
        message: String,
    },
    /// A file of a node's certificates could not be read or written.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The node key is sealed under the cluster's unlock key (autolock), and none was given.
    #[error("{}: sealed under the cluster's unlock key: run `shoal cluster unlock`", path.display())]
    Locked {
        /// The key file.
        path: PathBuf,
    },
    /// The unlock key given does not open the node key.
    #[error("invalid unlock key: it does not open this node's key")]
    WrongUnlockKey,
}

/// PEM tag of a node key sealed under the cluster's unlock key (autolock).
const SEALED_KEY_TAG: &str = "SHOAL SEALED KEY";

/// The node key's PEM sealed under `kek` ([`crate::seal`]), as PEM itself.
fn seal_key_pem(key_pem: &str, kek: &[u8; 32]) -> String {
    let sealed = crate::seal::SealKey::new(kek).seal(key_pem.as_bytes());
    pem::encode(&pem::Pem::new(SEALED_KEY_TAG, sealed))
}

/// The node key's PEM from what `node.key` holds: as it is, or opened with `kek`.
fn open_key_pem(text: String, kek: Option<&[u8; 32]>, path: &Path) -> Result<String, PkiError> {
    let Some(sealed) = pem::parse(&text).ok().filter(|p| p.tag() == SEALED_KEY_TAG) else {
        return Ok(text);
    };
    let kek = kek.ok_or_else(|| PkiError::Locked {
        path: path.to_owned(),
    })?;
    crate::seal::SealKey::new(kek)
        .open(sealed.contents())
        .and_then(|plain| String::from_utf8(plain).ok())
        .ok_or(PkiError::WrongUnlockKey)
}

/// True when the node key in `dir` is sealed under the cluster's unlock key.
pub fn key_is_sealed(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(KEY_FILE))
        .ok()
        .and_then(|t| pem::parse(t).ok())
        .is_some_and(|p| p.tag() == SEALED_KEY_TAG)
}

fn material(what: &str) -> impl Fn(rcgen::Error) -> PkiError + '_ {
    move |e| PkiError::Material {
        what: what.to_owned(),
        message: e.to_string(),
    }
}

/// The cluster's root CA: its certificate and key, in PEM. Kept in the cluster object (and so
/// in the Raft log, sealed at rest); only managers hold it.
pub type ClusterCa = shoal_api::wire::CaKeyPair;

/// A node's role as its certificate names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertRole {
    /// Runs Raft and serves the cluster port.
    Manager,
    /// Runs tasks only.
    Worker,
    /// A person or program using the management API over TCP (`cluster client-cert`); no node.
    Client,
}

impl CertRole {
    fn as_str(self) -> &'static str {
        match self {
            CertRole::Manager => "manager",
            CertRole::Worker => "worker",
            CertRole::Client => "client",
        }
    }
}

/// Who a peer's certificate says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its node id.
    pub node_id: String,
    /// Its role.
    pub role: CertRole,
    /// The cluster that issued it.
    pub cluster_id: String,
    /// SHA-256 of the certificate (DER), hex: what revokes a user certificate.
    pub digest: String,
}

/// Makes the root CA of cluster `cluster_id`.
pub fn new_ca(cluster_id: &str) -> Result<ClusterCa, PkiError> {
    let key = KeyPair::generate().map_err(material("the CA key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    // Each root its own subject, so a node trusting an old and a new root during a rotation
    // (and the cross-signed certificate between them) finds the right issuer by name.
    let tag: u32 = rand::random();
    dn.push(DnType::CommonName, format!("shoal-ca-{tag:08x}"));
    dn.push(DnType::OrganizationName, cluster_id);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + CA_EXPIRY;
    let cert = params
        .self_signed(&key)
        .map_err(material("the CA certificate"))?;
    Ok(ClusterCa {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Takes a root CA made elsewhere (`--ca-cert`, `--ca-key`): the certificate must be a CA's, the
/// key its own, and it must not have expired.
pub fn external_ca(given: &ClusterCa) -> Result<ClusterCa, PkiError> {
    let bad = |message: String| PkiError::Material {
        what: "--ca-cert".into(),
        message,
    };
    let der = certs_of(&given.cert_pem)
        .into_iter()
        .next()
        .ok_or_else(|| bad("no PEM certificate in it".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    if !cert.is_ca() {
        return Err(bad(
            "the certificate is not a CA's (basicConstraints CA:TRUE)".into(),
        ));
    }
    if cert.validity().not_after.timestamp() <= time::OffsetDateTime::now_utc().unix_timestamp() {
        return Err(bad("the certificate has expired".into()));
    }
    let key = KeyPair::from_pem(&given.key_pem).map_err(|e| PkiError::Material {
        what: "--ca-key".into(),
        message: e.to_string(),
    })?;
    if key.public_key_der() != cert.public_key().raw {
        return Err(PkiError::Material {
            what: "--ca-key".into(),
            message: "the key is not the certificate's".into(),
        });
    }
    let ca = ClusterCa {
        cert_pem: pem_of(der.as_ref()),
        key_pem: key.serialize_pem(),
    };
    // It must be able to sign: issue a throwaway certificate with it.
    let (_, csr) = new_key_and_csr()?;
    issue(
        &ca,
        &csr,
        "check",
        CertRole::Worker,
        "check",
        Duration::from_secs(60),
    )?;
    Ok(ca)
}

/// The certificate `next` presents to nodes that still trust only `previous` during a
/// rotation: `next`'s subject and key, signed by `previous`.
pub fn cross_sign(previous: &ClusterCa, next: &ClusterCa) -> Result<String, PkiError> {
    let prev_key = KeyPair::from_pem(&previous.key_pem).map_err(material("the old CA key"))?;
    let prev_cert = CertificateParams::from_ca_cert_pem(&previous.cert_pem)
        .map_err(material("the old CA certificate"))?
        .self_signed(&prev_key)
        .map_err(material("the old CA certificate"))?;
    let next_key = KeyPair::from_pem(&next.key_pem).map_err(material("the new CA key"))?;
    let cert = CertificateParams::from_ca_cert_pem(&next.cert_pem)
        .map_err(material("the new CA certificate"))?
        .signed_by(&next_key, &prev_cert, &prev_key)
        .map_err(material("the cross-signed CA certificate"))?;
    Ok(cert.pem())
}

/// Every certificate of a PEM text, in order (unparsable blocks skipped).
pub fn certs_of(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

fn pem_of(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The subject of the first certificate of a PEM text, as text (`CN=..., O=...`).
pub fn subject_of(pem: &str) -> Option<String> {
    let der = certs_of(pem).into_iter().next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.subject().to_string())
}

/// The issuer of the first certificate of a PEM text, as text.
pub fn issuer_of(pem: &str) -> Option<String> {
    let der = certs_of(pem).into_iter().next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.issuer().to_string())
}

/// The CA's digest as join tokens carry it: SHA-256 of its certificate's DER, in hex.
pub fn ca_digest(cert_pem: &str) -> Result<String, PkiError> {
    let der =
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| PkiError::Material {
            what: "the CA certificate".into(),
            message: e.to_string(),
        })?;
    Ok(der_digest(der.as_ref()))
}

/// True when the PEM text holds the certificate of digest `digest` (as [`ca_digest`]).
pub fn holds_ca(pem: &str, digest: &str) -> bool {
    certs_of(pem)
        .iter()
        .any(|c| der_digest(c.as_ref()).eq_ignore_ascii_case(digest))
}

/// The digest (as [`ca_digest`]) of the first certificate of a PEM text.
pub fn leaf_digest(pem: &str) -> Option<String> {
    certs_of(pem).first().map(|c| der_digest(c.as_ref()))
}

/// SHA-256 of a certificate's DER, in lowercase hex.
fn der_digest(der: &[u8]) -> String {
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new key for a node and the CSR that carries its public half, both PEM.
pub fn new_key_and_csr() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(material("the node key"))?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(material("the certificate request"))?;
    let csr = csr.pem().map_err(material("the certificate request"))?;
    Ok((key.serialize_pem(), csr))
}

/// Signs a node's CSR: the certificate names `node_id`, `role` and the cluster, whatever the
/// CSR asked for; only its public key is taken.
pub fn issue(
    ca: &ClusterCa,
    csr_pem: &str,
    node_id: &str,
    role: CertRole,
    cluster_id: &str,
    expiry: Duration,
) -> Result<String, PkiError> {
    let now = time::OffsetDateTime::now_utc();
    issue_valid(
        ca,
        csr_pem,
        node_id,
        role,
        cluster_id,
        now - time::Duration::minutes(5),
        now + expiry,
    )
}

/// [`issue`] valid from `not_before` to `not_after`.
fn issue_valid(
    ca: &ClusterCa,
    csr_pem: &str,
    node_id: &str,
    role: CertRole,
    cluster_id: &str,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> Result<String, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(material("the CA key"))?;
    let ca_cert = CertificateParams::from_ca_cert_pem(&ca.cert_pem)
        .map_err(material("the CA certificate"))?
        .self_signed(&ca_key)
        .map_err(material("the CA certificate"))?;
    let mut csr =
        CertificateSigningRequestParams::from_pem(csr_pem).map_err(material("the request"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_id);
    dn.push(DnType::OrganizationalUnitName, role.as_str());
    dn.push(DnType::OrganizationName, cluster_id);
    params.distinguished_name = dn;
    let mut names = Vec::new();
    if role != CertRole::Client {
        names.push(SanType::DnsName(
            format!("node-{node_id}")
                .try_into()
                .map_err(material("the node name"))?,
        ));
    }
    if role == CertRole::Manager {
        names.push(SanType::DnsName(
            MANAGER_NAME
                .try_into()
                .map_err(material("the manager name"))?,
        ));
    }
    params.subject_alt_names = names;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = if role == CertRole::Client {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    };
    params.not_before = not_before;
    params.not_after = not_after;
    csr.params = params;
    let cert = csr
        .signed_by(&ca_cert, &ca_key)
        .map_err(material("the node certificate"))?;
    Ok(cert.pem())
}

/// Reads who a certificate names (subject CN, OU, O); `None` for a certificate shoal did not
/// issue.
pub fn identity(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let ou = subject
        .iter_organizational_unit()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    let o = subject
        .iter_organization()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let role = match ou.as_str() {
        "manager" => CertRole::Manager,
        "worker" => CertRole::Worker,
        "client" => CertRole::Client,
        _ => return None,
    };
    Some(Identity {
        node_id: cn,
        role,
        cluster_id: o,
        digest: der_digest(der),
    })
}

/// When the first certificate of a PEM text is valid: not-before and not-after, seconds since
/// the epoch.
pub fn validity(cert_pem: &str) -> Option<(i64, i64)> {
    let der = certs_of(cert_pem).into_iter().next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &str) -> impl Fn(rustls::Error) -> PkiError + '_ {
    move |e| PkiError::Material {
        what: what.to_owned(),
        message: e.to_string(),
    }
}

/// A node's certificate material: the CA it trusts, its certificate and its key, in PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeCerts {
    /// The cluster's CA certificate.
    pub ca_pem: String,
    /// This node's certificate.
    pub cert_pem: String,
    /// This node's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for NodeCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCerts")
            .field("identity", &self.identity())
            .finish()
    }
}

const CA_FILE: &str = "ca.crt";
const CERT_FILE: &str = "node.crt";
const KEY_FILE: &str = "node.key";

impl NodeCerts {
    /// Reads a node's certificates from `dir`, the key opened with `kek` when it is sealed
    /// (autolock); `None` when it has none yet.
    pub fn load(dir: &Path, kek: Option<&[u8; 32]>) -> Result<Option<NodeCerts>, PkiError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| PkiError::File {
                path,
                message: e.to_string(),
            })
        };
        if !dir.join(CERT_FILE).exists() {
            return Ok(None);
        }
        Ok(Some(NodeCerts {
            ca_pem: read(CA_FILE)?,
            cert_pem: read(CERT_FILE)?,
            key_pem: open_key_pem(read(KEY_FILE)?, kek, &dir.join(KEY_FILE))?,
        }))
    }

    /// Writes the certificates to `dir` (the key mode 0600, sealed under `kek` when given),
    /// each file replaced atomically.
    pub fn save(&self, dir: &Path, kek: Option<&[u8; 32]>) -> Result<(), PkiError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let file_err = |path: &Path| {
            let path = path.to_owned();
            move |e: std::io::Error| PkiError::File {
                path: path.clone(),
                message: e.to_string(),
            }
        };
        std::fs::create_dir_all(dir).map_err(file_err(dir))?;
        let key = match kek {
            Some(kek) => seal_key_pem(&self.key_pem, kek),
            None => self.key_pem.clone(),
        };
        for (name, text, mode) in [
            (CA_FILE, &self.ca_pem, 0o644),
            (CERT_FILE, &self.cert_pem, 0o644),
            (KEY_FILE, &key, 0o600),
        ] {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&tmp)
                .map_err(file_err(&tmp))?;
            f.write_all(text.as_bytes()).map_err(file_err(&tmp))?;
            f.sync_all().map_err(file_err(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(file_err(&path))?;
        }
        Ok(())
    }

    /// Who this node's certificate names.
    pub fn identity(&self) -> Option<Identity> {
        let der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).ok()?;
        identity(der.as_ref())
    }

    /// What this node presents: its certificate with what was issued with it (during a CA
    /// rotation, the new root cross-signed by the old one), then the roots it trusts (a
    /// joining node finds the root its token names among them).
    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        let mut chain = certs_of(&self.cert_pem);
        if chain.is_empty() {
            return Err(PkiError::Material {
                what: "the node certificate".into(),
                message: "no PEM certificate".into(),
            });
        }
        chain.extend(certs_of(&self.ca_pem));
        Ok(chain)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, PkiError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| PkiError::Material {
            what: "the node key".into(),
            message: e.to_string(),
        })
    }

    /// The roots this node trusts: the cluster's CA, and during a rotation the old one too.
    fn roots(&self) -> Result<Arc<RootCertStore>, PkiError> {
        let mut roots = RootCertStore::empty();
        for ca in certs_of(&self.ca_pem) {
            roots.add(ca).map_err(tls_err("the CA certificate"))?;
        }
        if roots.is_empty() {
            return Err(PkiError::Material {
                what: "the CA certificate".into(),
                message: "no PEM certificate".into(),
            });
        }
        Ok(Arc::new(roots))
    }

    /// The cluster port's server side: this manager's certificate; a client certificate from
    /// the cluster's CA is checked when one is presented (a joining node has none yet: the
    /// routes decide what an anonymous peer may do).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        self.server_config_with(false)
    }

    /// The management API's server side over TCP (`shoald --listen`): this node's certificate,
    /// and a client certificate from the cluster's CA required of every client.
    pub fn api_server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        self.server_config_with(true)
    }

    fn server_config_with(
        &self,
        client_required: bool,
    ) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let mut verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, provider());
        if !client_required {
            verifier = verifier.allow_unauthenticated();
        }
        let verifier = verifier.build().map_err(|e| PkiError::Material {
            what: "the client verifier".into(),
            message: e.to_string(),
        })?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err("the server configuration"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain()?, self.key()?)
            .map_err(tls_err("the server configuration"))?;
        Ok(Arc::new(config))
    }

    /// A node's client side: the managers checked against the cluster's CA and
    /// [`MANAGER_NAME`], this node's certificate presented.
    pub fn client_tls(&self) -> Result<shoal_client::Tls, PkiError> {
        Ok(shoal_client::Tls::new(self.client_config()?, MANAGER_NAME))
    }

    /// The rustls configuration of [`NodeCerts::client_tls`]: what [`NodeCerts::chain`] says
    /// is presented, the roots of [`NodeCerts::roots`] trusted.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let mut chain = self.cert_pem.clone();
        if !chain.ends_with('\n') {
            chain.push('\n');
        }
        chain.push_str(&self.ca_pem);
        shoal_client::mutual_config_from_pem(&self.ca_pem, &chain, &self.key_pem).map_err(
            |message| PkiError::Material {
                what: "the client configuration".into(),
                message,
            },
        )
    }
}

/// The client side of a join: no certificate of its own yet, the manager checked against the
/// CA whose digest the join token carries. The manager presents the CA with its certificate;
/// a CA of another digest, or a certificate it did not sign, ends the handshake.
pub fn join_tls(ca_digest: &str, own: Option<&NodeCerts>) -> Result<shoal_client::Tls, PkiError> {
    let verifier = Arc::new(PinnedCa {
        digest: ca_digest.to_ascii_lowercase(),
        provider: provider(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("the client configuration"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match own {
        // A worker being promoted shows who it is, so it keeps its node id.
        Some(c) => builder
            .with_client_auth_cert(c.chain()?, c.key()?)
            .map_err(tls_err("the client configuration"))?,
        None => builder.with_no_client_auth(),
    };
    Ok(shoal_client::Tls::new(Arc::new(config), MANAGER_NAME))
}

/// Verifies a manager against the CA of a known digest, found among the certificates it sent.
#[derive(Debug)]
struct PinnedCa {
    digest: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (pinned, others): (Vec<_>, Vec<_>) = intermediates
            .iter()
            .partition(|c| der_digest(c.as_ref()) == self.digest);
        let ca = pinned.first().ok_or_else(|| {
            rustls::Error::General("the manager's CA is not the one the join token names".into())
        })?;
        let mut roots = RootCertStore::empty();
        roots.add((*ca).clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        // During a rotation the manager's certificate may reach the pinned root through the
        // cross-signed certificate it also sent.
        let others: Vec<CertificateDer<'_>> = others.into_iter().cloned().collect();
        inner.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a node must do about its certificate, decided from what the managers say it should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Nothing.
    Keep,
    /// Trust other roots (a CA rotation began or ended); the certificate stays.
    Trust,
    /// Get a new certificate, for the reason given.
    Reissue(&'static str),
}

/// Decides [`Renewal`] for `certs` at `now` (seconds since the epoch): a new certificate when
/// its role is not the one the cluster gives the node (promoted, demoted), when the signing
/// root is another (a CA rotation), when the cluster has not recorded it as the signing
/// root's, or once half its life has passed (Swarm renews in the second half too); else new
/// roots to trust when the cluster's changed.
pub fn renewal(
    certs: &NodeCerts,
    wanted: &shoal_api::wire::CertificateStatus,
    now: i64,
) -> Renewal {
    let role = certs.identity().map(|i| i.role);
    let want = wanted.manager.map(|m| {
        if m {
            CertRole::Manager
        } else {
            CertRole::Worker
        }
    });
    if role.is_none() || want.is_some_and(|w| Some(w) != role) {
        return Renewal::Reissue("role");
    }
    if issuer_of(&certs.cert_pem).as_deref() != Some(wanted.signing_ca.as_str()) {
        return Renewal::Reissue("root CA");
    }
    if wanted.recorded_issuer != wanted.signing_ca {
        return Renewal::Reissue("not recorded");
    }
    match validity(&certs.cert_pem) {
        Some((from, until)) if now < from + (until - from) / 2 => {}
        _ => return Renewal::Reissue("half its life passed"),
    }
    if certs_of(&certs.ca_pem) != certs_of(&wanted.trust) {
        return Renewal::Trust;
    }
    Renewal::Keep
}

/// The CA digest a join token carries (`SHLTKN-1-<digest>-<secret>`).
pub fn token_digest(token: &str) -> Option<&str> {
    let rest = token.trim().strip_prefix("SHLTKN-1-")?;
    let (digest, _) = rest.split_once('-')?;
    (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())).then_some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_node_key_opens_only_with_its_unlock_key() {
        let ca = new_ca("c1").unwrap();
        let (key, csr) = new_key_and_csr().unwrap();
        let cert = issue(
            &ca,
            &csr,
            "n1",
            CertRole::Manager,
            "c1",
            DEFAULT_CERT_EXPIRY,
        )
        .unwrap();
        let certs = NodeCerts {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: cert,
            key_pem: key.clone(),
        };
        let dir = tempfile::tempdir().unwrap();
        let kek: [u8; 32] = rand::random();
        certs.save(dir.path(), Some(&kek)).unwrap();
        let on_disk = std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
        assert!(on_disk.contains(SEALED_KEY_TAG) && !on_disk.contains("PRIVATE KEY"));
        assert!(key_is_sealed(dir.path()));
        assert!(matches!(
            NodeCerts::load(dir.path(), None),
            Err(PkiError::Locked { .. })
        ));
        assert!(matches!(
            NodeCerts::load(dir.path(), Some(&[7; 32])),
            Err(PkiError::WrongUnlockKey)
        ));
        let opened = NodeCerts::load(dir.path(), Some(&kek)).unwrap().unwrap();
        assert_eq!(opened.key_pem, key);
        // Saved plain again, it opens with or without a key.
        opened.save(dir.path(), None).unwrap();
        assert!(!key_is_sealed(dir.path()));
        assert_eq!(
            NodeCerts::load(dir.path(), None).unwrap().unwrap().key_pem,
            key
        );
        assert_eq!(
            NodeCerts::load(dir.path(), Some(&kek))
                .unwrap()
                .unwrap()
                .key_pem,
            key
        );
    }

    #[test]
    fn a_node_certificate_names_the_node_its_role_and_the_cluster() {
        let ca = new_ca("c1").unwrap();
        let (key, csr) = new_key_and_csr().unwrap();
        let cert = issue(
            &ca,
            &csr,
            "n123",
            CertRole::Manager,
            "c1",
            DEFAULT_CERT_EXPIRY,
        )
        .unwrap();
        let node = NodeCerts {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: cert,
            key_pem: key,
        };
        assert_eq!(
            node.identity(),
            Some(Identity {
                node_id: "n123".into(),
                role: CertRole::Manager,
                cluster_id: "c1".into(),
                digest: leaf_digest(&node.cert_pem).unwrap(),
            })
        );
        node.server_config().unwrap();
        node.client_tls().unwrap();
        let digest = ca_digest(&ca.cert_pem).unwrap();
        assert_eq!(digest.len(), 64);
        let token = format!("SHLTKN-1-{digest}-abc");
        assert_eq!(token_digest(&token), Some(digest.as_str()));
        assert_eq!(token_digest("SHLTKN-1-c1-abc"), None);
        assert!(format!("{ca:?}").contains("redacted"));
        assert!(!format!("{node:?}").contains("PRIVATE"));
    }

    fn node(ca: &ClusterCa, trust: &str, extra: &str, role: CertRole) -> NodeCerts {
        let (key, csr) = new_key_and_csr().unwrap();
        let mut cert = issue(ca, &csr, "n1", role, "c1", DEFAULT_CERT_EXPIRY).unwrap();
        cert.push_str(extra);
        NodeCerts {
            ca_pem: trust.to_owned(),
            cert_pem: cert,
            key_pem: key,
        }
    }

    /// A TLS handshake from `client` to a server with `server`'s certificates over loopback;
    /// true when it succeeds and the server saw the client's certificate.
    async fn handshake(server: &NodeCerts, client: &shoal_client::Tls) -> bool {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config().unwrap());
        let served = tokio::spawn(async move {
            let (io, _) = listener.accept().await.unwrap();
            let mut stream = acceptor.accept(io).await.ok()?;
            use tokio::io::AsyncWriteExt;
            let seen = stream.get_ref().1.peer_certificates().is_some();
            stream.write_all(b"ok").await.ok()?;
            stream.shutdown().await.ok()?;
            Some(seen)
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let connected = match client.wrap(tcp).await {
            Ok(mut stream) => {
                use tokio::io::AsyncReadExt;
                let mut buf = Vec::new();
                stream.read_to_end(&mut buf).await.is_ok() && buf == b"ok"
            }
            Err(_) => false,
        };
        let seen = served.await.unwrap();
        connected && seen == Some(true)
    }

    #[tokio::test]
    async fn an_expired_certificate_is_refused_both_ways() {
        let ca = new_ca("c1").unwrap();
        let good = node(&ca, &ca.cert_pem, "", CertRole::Manager);
        let (key, csr) = new_key_and_csr().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let expired = NodeCerts {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: issue_valid(
                &ca,
                &csr,
                "n2",
                CertRole::Manager,
                "c1",
                now - time::Duration::days(2),
                now - time::Duration::days(1),
            )
            .unwrap(),
            key_pem: key,
        };
        assert!(handshake(&good, &good.client_tls().unwrap()).await);
        assert!(!handshake(&good, &expired.client_tls().unwrap()).await);
        assert!(!handshake(&expired, &good.client_tls().unwrap()).await);
    }

    #[tokio::test]
    async fn during_a_rotation_nodes_on_the_old_and_the_new_root_accept_each_other() {
        let old = new_ca("c1").unwrap();
        let next = new_ca("c1").unwrap();
        assert_ne!(subject_of(&old.cert_pem), subject_of(&next.cert_pem));
        let cross = cross_sign(&old, &next).unwrap();
        let both = format!("{}{}", next.cert_pem, old.cert_pem);
        // Not moved yet; moved during the rotation; after it.
        let before = node(&old, &old.cert_pem, "", CertRole::Manager);
        let moved = node(&next, &both, &cross, CertRole::Manager);
        let after = node(&next, &next.cert_pem, &cross, CertRole::Manager);
        assert_eq!(issuer_of(&moved.cert_pem), subject_of(&next.cert_pem));
        for (server, client, ok) in [
            (&before, &moved, true),
            (&moved, &before, true),
            (&moved, &moved, true),
            (&after, &moved, true),
            (&moved, &after, true),
            // After the rotation, a certificate of the old root is refused.
            (&after, &before, false),
        ] {
            assert_eq!(
                handshake(server, &client.client_tls().unwrap()).await,
                ok,
                "server {:?} client {:?}",
                issuer_of(&server.cert_pem),
                issuer_of(&client.cert_pem)
            );
        }
        // A joining node with a token of the old root, then of the new.
        let old_digest = ca_digest(&old.cert_pem).unwrap();
        let new_digest = ca_digest(&next.cert_pem).unwrap();
        let joiner = |digest: &str| join_tls(digest, None).unwrap();
        assert!(
            !handshake(&moved, &joiner(&old_digest)).await,
            "no client certificate"
        );
        let shows = |digest: &str, server: &NodeCerts| {
            let client = node(&old, &old.cert_pem, "", CertRole::Worker);
            (join_tls(digest, Some(&client)).unwrap(), server.clone())
        };
        for (digest, server) in [
            (&old_digest, &before),
            (&old_digest, &moved),
            (&new_digest, &moved),
            (&new_digest, &after),
        ] {
            let (tls, server) = shows(digest, server);
            // `before` shows an old-root client certificate: only servers trusting it see it.
            let expected = server.ca_pem.contains(old.cert_pem.trim());
            assert_eq!(handshake(&server, &tls).await, expected, "{digest}");
        }
        assert!(holds_ca(&both, &old_digest) && holds_ca(&both, &new_digest));
    }

    #[test]
    fn an_external_ca_must_be_a_ca_with_its_own_key() {
        let ca = new_ca("c1").unwrap();
        assert_eq!(
            external_ca(&ca).unwrap().cert_pem.trim(),
            ca.cert_pem.trim()
        );
        let other = new_ca("c1").unwrap();
        let e = external_ca(&ClusterCa {
            cert_pem: ca.cert_pem.clone(),
            key_pem: other.key_pem.clone(),
        })
        .unwrap_err();
        assert!(e.to_string().contains("not the certificate's"), "{e}");
        let leaf = node(&ca, &ca.cert_pem, "", CertRole::Worker);
        let e = external_ca(&ClusterCa {
            cert_pem: leaf.cert_pem.clone(),
            key_pem: leaf.key_pem.clone(),
        })
        .unwrap_err();
        assert!(e.to_string().contains("not a CA"), "{e}");
        assert!(external_ca(&ClusterCa {
            cert_pem: "junk".into(),
            key_pem: ca.key_pem.clone(),
        })
        .is_err());
    }
}

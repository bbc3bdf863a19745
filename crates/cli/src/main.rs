//! `shoal`: the command-line client. It turns commands (and stack files) into API calls and
//! prints the answers as tables or JSON; it never does the cluster's work itself.

mod container;
mod credentials;
mod files;
mod output;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hyper::Method;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use shoal_api::network::{Network, NetworkSpec};
use shoal_api::node::{Availability, Node};
use shoal_api::service::{
    FailureAction, Service, ServiceMode, ServiceSpec, UpdateOrder, UpdateState,
};
use shoal_api::stack::{self, convert, LoadOptions, SourceFile};
use shoal_api::task::Task;
use shoal_api::wire::*;
use shoal_client::{Client, Endpoint, Lines};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "Run Compose stacks on a shoal cluster"
)]
struct Cli {
    /// Daemon to talk to: unix:///path or tcp://host:port.
    #[arg(short = 'H', long = "host", env = "SHOAL_HOST", global = true)]
    host: Option<String>,
    /// Talk TLS to a tcp:// daemon and check it against --tlscacert, presenting --tlscert
    /// (as docker's --tlsverify; `shoal cluster client-cert` makes the files).
    #[arg(long, env = "SHOAL_TLS_VERIFY", global = true)]
    tlsverify: bool,
    /// The cluster's CA certificate (default: $SHOAL_CERT_PATH/ca.pem, ~/.shoal/ca.pem).
    #[arg(long, global = true)]
    tlscacert: Option<std::path::PathBuf>,
    /// Your client certificate (default: $SHOAL_CERT_PATH/cert.pem, ~/.shoal/cert.pem).
    #[arg(long, global = true)]
    tlscert: Option<std::path::PathBuf>,
    /// Its key (default: $SHOAL_CERT_PATH/key.pem, ~/.shoal/key.pem).
    #[arg(long, global = true)]
    tlskey: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or inspect the cluster.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Deploy and manage stacks.
    #[command(subcommand)]
    Stack(StackCmd),
    /// Manage services.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Manage this node's images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Manage this node's volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// This node's containers: list, inspect, logs, exec.
    #[command(subcommand)]
    Container(container::ContainerCmd),
    /// Log in to a registry: the node checks the credentials, and they are kept in
    /// `~/.shoal/config.json` (docker's format; `$SHOAL_CONFIG` names another directory).
    Login {
        /// The registry (`host:port`).
        registry: String,
        /// User name.
        #[arg(short, long)]
        username: String,
        /// Password (prefer --password-stdin).
        #[arg(short, long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Forget the credentials of a registry.
    Logout {
        /// The registry (`host:port`).
        registry: String,
    },
    /// Manage overlay networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Manage the cluster's secrets (mounted in a tmpfs, never shown).
    #[command(subcommand)]
    Secret(files::FileCmd),
    /// Manage the cluster's configs.
    #[command(subcommand)]
    Config(files::FileCmd),
    /// Follow the cluster's changes.
    Events {
        /// Start after this revision (0: from now).
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Make this daemon the first manager of a new cluster.
    Init {
        /// Address other nodes reach this manager at, HOST[:PORT] (port 2377 by default).
        /// Without it the cluster has this one manager and opens no TCP port.
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Address the cluster port binds, HOST[:PORT] (default 0.0.0.0 and the advertised
        /// port).
        #[arg(long)]
        listen_addr: Option<String>,
        /// Pool overlay network subnets are taken from, CIDR (repeatable; default 10.0.0.0/8).
        #[arg(long)]
        default_addr_pool: Vec<String>,
        /// Prefix length of each network's subnet from the pool (default 24).
        #[arg(long)]
        default_addr_pool_mask_length: Option<u8>,
        /// Let services run privileged containers (refused by default).
        #[arg(long)]
        allow_privileged: bool,
        /// How long node certificates live (default 2160h, 90 days; at least 1h). Nodes renew
        /// theirs when half of it has passed.
        #[arg(long)]
        cert_expiry: Option<shoal_api::units::Duration>,
        /// The cluster's root CA certificate (PEM), instead of one shoal makes; with --ca-key.
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<std::path::PathBuf>,
        /// The private key of --ca-cert (PEM).
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<std::path::PathBuf>,
    },
    /// Make a client certificate for the management API over TCP (`shoald --listen`): a new key
    /// made here, signed by the cluster's CA. Writes ca.pem, cert.pem and key.pem (docker's
    /// names) for `shoal --tlsverify`.
    ClientCert {
        /// Who it is for.
        #[arg(long, default_value = "admin")]
        name: String,
        /// Directory to write to (default: $SHOAL_CERT_PATH, else ~/.shoal).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// List the user certificates issued and not yet expired, instead.
        #[arg(long, conflicts_with_all = ["revoke", "out"])]
        list: bool,
        /// Revoke every user certificate of this name, or the one whose digest starts with this
        /// (12 hex digits at least), instead: the management API refuses it from then on.
        #[arg(long, value_name = "NAME|DIGEST", conflicts_with = "out")]
        revoke: Option<String>,
    },
    /// Show the cluster's root CA, or move the cluster to a new one.
    Ca {
        /// Make a new root CA (or take --ca-cert/--ca-key) and move every node to it; the old
        /// root stays trusted until every node holds a certificate from the new one.
        #[arg(long)]
        rotate: bool,
        /// The new root CA certificate (PEM); with --ca-key and --rotate.
        #[arg(long, requires = "ca_key", requires = "rotate")]
        ca_cert: Option<std::path::PathBuf>,
        /// The private key of --ca-cert (PEM).
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<std::path::PathBuf>,
        /// Start the rotation and return at once, without waiting for every node.
        #[arg(short, long)]
        detach: bool,
        /// Print no progress.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Change the cluster's settings.
    Update {
        /// Let services run privileged containers (true|false).
        #[arg(long, action = clap::ArgAction::Set)]
        allow_privileged: Option<bool>,
        /// Keep the managers' data keys locked behind an unlock key that a restarted manager
        /// needs (true|false); turning it on prints the key.
        #[arg(long, action = clap::ArgAction::Set)]
        autolock: Option<bool>,
        /// How long node certificates live from their next renewal (at least 1h).
        #[arg(long)]
        cert_expiry: Option<shoal_api::units::Duration>,
    },
    /// Print (or rotate) the key that unlocks a restarted manager under autolock.
    UnlockKey {
        /// Replace the key: managers reseal their data keys under the new one.
        #[arg(long)]
        rotate: bool,
        /// Print the key only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Unlock a manager that restarted under autolock (the key is read from stdin).
    Unlock,
    /// Join a cluster as a worker or a manager (the token decides).
    Join {
        /// A join token (`shoal cluster join-token worker|manager` on a manager).
        #[arg(long)]
        token: String,
        /// Address other nodes reach this node at, HOST[:PORT] (needed by a manager).
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Address the cluster port binds (managers only).
        #[arg(long)]
        listen_addr: Option<String>,
        /// A manager's cluster address, HOST[:PORT].
        remote_addr: String,
    },
    /// Print (or rotate) the token a worker or a manager joins with.
    JoinToken {
        /// Replace the token: the old one stops working at once.
        #[arg(long)]
        rotate: bool,
        /// Print the token only.
        #[arg(short, long)]
        quiet: bool,
        /// worker or manager.
        role: String,
    },
    /// Leave the cluster (a manager leaves the voters first).
    Leave {
        /// Leave even when that loses the managers' quorum, or ends the last manager's cluster.
        #[arg(long)]
        force: bool,
    },
    /// Show the cluster.
    Info,
}

#[derive(Debug, Subcommand)]
enum StackCmd {
    /// Create or update a stack from Compose files.
    Deploy {
        /// Compose file (repeat to merge; later files override earlier ones).
        #[arg(short = 'c', long = "compose-file", required = true)]
        files: Vec<String>,
        /// Remove services no longer in the files.
        #[arg(long)]
        prune: bool,
        /// Wait until every service has converged, showing progress.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "5m")]
        timeout: shoal_api::units::Duration,
        /// Pin images to their registry's digest: always, changed (only images that changed in
        /// the files) or never.
        #[arg(long, default_value = "always", value_parser = ["always", "changed", "never"])]
        resolve_image: String,
        /// Send the credentials `shoal login` keeps for each image's registry to the nodes
        /// that run its tasks.
        #[arg(long)]
        with_registry_auth: bool,
        /// Stack name.
        name: String,
    },
    /// List stacks.
    Ls,
    /// List a stack's tasks.
    Ps {
        /// Stack name.
        name: String,
    },
    /// Remove stacks.
    Rm {
        /// Stack names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Print the normalized stack (after interpolation and merging), as docker stack config.
    Config {
        /// Compose file (repeat to merge).
        #[arg(short = 'c', long = "compose-file", required = true)]
        files: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCmd {
    /// Remove images that lost their tags (`-a`: every image no container uses).
    Prune {
        /// Every unused image, not only untagged ones.
        #[arg(short, long)]
        all: bool,
    },
    /// Push an image of the node the CLI talks to to a registry (`host:5000/ns/app:tag`).
    Push {
        /// The image (its name says where it goes, unless TARGET does).
        reference: String,
        /// Where to push it, when not under its own name.
        target: Option<String>,
    },
    /// Pull an image from its registry (`host:5000/ns/app:tag` or `…@sha256:…`) onto the node
    /// the CLI talks to.
    Pull {
        /// The image.
        reference: String,
    },
    /// Import an image: a root-filesystem tarball (as `docker import`), a `docker save`
    /// archive or an OCI image-layout archive, plain or gzip.
    #[command(visible_alias = "load")]
    Import {
        /// The archive (`-` reads stdin).
        #[arg(required_unless_present = "input")]
        file: Option<String>,
        /// Name for the image, as `docker import FILE NAME:TAG` takes it.
        #[arg(conflicts_with = "tag")]
        reference: Option<String>,
        /// The archive, as `docker load -i FILE` takes it.
        #[arg(long, short = 'i', conflicts_with = "file")]
        input: Option<String>,
        /// Name for the image (required for a root-filesystem tarball).
        #[arg(long, short = 't')]
        tag: Option<String>,
        /// Dockerfile instruction for a tarball's config: CMD, ENTRYPOINT, ENV, WORKDIR, USER,
        /// LABEL, STOPSIGNAL.
        #[arg(long, short = 'c')]
        change: Vec<String>,
    },
    /// List images.
    Ls,
    /// Show images in full.
    Inspect {
        /// Image references or ids.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Add a tag to an image.
    Tag {
        /// The image.
        source: String,
        /// The new tag.
        target: String,
    },
    /// Remove images (refused while a container uses one).
    Rm {
        /// Image references or ids.
        #[arg(required = true)]
        images: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum NetworkCmd {
    /// List networks.
    Ls,
    /// Show networks in full.
    Inspect {
        /// Network names or ids.
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Create an overlay network.
    Create {
        /// Its name.
        name: String,
        /// Driver (only `overlay`).
        #[arg(short, long, default_value = "overlay")]
        driver: String,
        /// Subnet in CIDR form (default: the next free one of the cluster's pool).
        #[arg(long)]
        subnet: Option<String>,
        /// Its containers reach only each other.
        #[arg(long)]
        internal: bool,
        /// Standalone containers may attach.
        #[arg(long)]
        attachable: bool,
        /// Labels, KEY=VALUE.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Driver options, KEY[=VALUE] (`encrypted` is refused: not supported yet).
        #[arg(short, long = "opt")]
        opts: Vec<String>,
    },
    /// Remove networks (refused while a service uses one).
    Rm {
        /// Network names or ids.
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum VolumeCmd {
    /// List volumes.
    Ls,
    /// Show volumes in full.
    Inspect {
        /// Volume names.
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove volumes (refused while a container uses one).
    Rm {
        /// Volume names.
        #[arg(required = true)]
        volumes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceCmd {
    /// List services.
    Ls,
    /// Go back to the spec before the last update, rolled out per the rollback config.
    Rollback {
        /// Service name or id.
        service: String,
    },
    /// Run a command in a running task of the service on the node the CLI talks to.
    Exec(container::ExecArgs),
    /// List a service's tasks.
    Ps {
        /// Service name or id.
        service: String,
    },
    /// Show services in full.
    Inspect {
        /// Service names or ids.
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Set replica counts: SERVICE=N ...
    Scale {
        /// SERVICE=REPLICAS pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Change a service.
    Update(UpdateArgs),
    /// Remove services.
    Rm {
        /// Service names or ids.
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Show what a service's tasks printed, from every node they ran on.
    Logs {
        /// Keep printing new output.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the last N lines of each task.
        #[arg(long, short = 'n')]
        tail: Option<usize>,
        /// Leave out the task name prefix.
        #[arg(long)]
        no_task_ids: bool,
        /// Only lines written since then: a time (2026-11-23T10:00:00Z, 2026-11-23), Unix
        /// seconds, or a duration before now (10m, 1h30m).
        #[arg(long)]
        since: Option<String>,
        /// Only lines written before then (same forms as --since).
        #[arg(long)]
        until: Option<String>,
        /// Show each line's time.
        #[arg(long, short = 't')]
        timestamps: bool,
        /// Show the node, service and task ids of each line.
        #[arg(long)]
        details: bool,
        /// Service name or id.
        service: String,
    },
}

#[derive(Debug, Args)]
struct UpdateArgs {
    /// New image.
    #[arg(long)]
    image: Option<String>,
    /// New replica count.
    #[arg(long)]
    replicas: Option<u64>,
    /// Add or change an environment variable (KEY=VALUE).
    #[arg(long = "env-add")]
    env_add: Vec<String>,
    /// Remove an environment variable.
    #[arg(long = "env-rm")]
    env_rm: Vec<String>,
    /// Add a placement constraint.
    #[arg(long = "constraint-add")]
    constraint_add: Vec<String>,
    /// Remove a placement constraint.
    #[arg(long = "constraint-rm")]
    constraint_rm: Vec<String>,
    /// Tasks updated at once.
    #[arg(long = "update-parallelism")]
    parallelism: Option<u64>,
    /// Delay between batches.
    #[arg(long = "update-delay")]
    delay: Option<shoal_api::units::Duration>,
    /// stop-first or start-first.
    #[arg(long = "update-order")]
    order: Option<String>,
    /// When an updated task fails: pause, continue or rollback.
    #[arg(long = "update-failure-action")]
    failure_action: Option<String>,
    /// How long each updated task is watched for failure.
    #[arg(long = "update-monitor")]
    monitor: Option<shoal_api::units::Duration>,
    /// Fraction of tasks that may fail before the failure action (0 to 1).
    #[arg(long = "update-max-failure-ratio")]
    max_failure_ratio: Option<f64>,
    /// Go back to the spec before the last update (as `service rollback`).
    #[arg(long)]
    rollback: bool,
    /// Replace every task even if nothing changed.
    #[arg(long)]
    force: bool,
    /// Send the credentials `shoal login` keeps for the image's registry to the nodes that
    /// run its tasks.
    #[arg(long)]
    with_registry_auth: bool,
    /// Service name or id.
    service: String,
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// List nodes.
    Ls,
    /// Show nodes in full.
    Inspect {
        /// Node ids or hostnames.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Change a node.
    Update {
        /// active, pause or drain.
        #[arg(long)]
        availability: Option<String>,
        /// Add a label (KEY=VALUE).
        #[arg(long = "label-add")]
        label_add: Vec<String>,
        /// Remove a label.
        #[arg(long = "label-rm")]
        label_rm: Vec<String>,
        /// manager or worker: the same as `node promote` or `node demote`.
        #[arg(long)]
        role: Option<String>,
        /// Node id or hostname.
        node: String,
    },
    /// Make workers managers (they join the Raft voters).
    Promote {
        /// Node ids or hostnames.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers (they leave the Raft voters).
    Demote {
        /// Demote even when the managers left could not reach a quorum.
        #[arg(long)]
        force: bool,
        /// Node ids or hostnames.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove nodes from the cluster (down nodes; `--force` for live ones).
    Rm {
        /// Remove a node that is not down.
        #[arg(short, long)]
        force: bool,
        /// Node ids or hostnames.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

fn client(cli: &Cli) -> Result<Client> {
    let host = cli
        .host
        .clone()
        .unwrap_or_else(|| format!("unix://{}", shoal_client::DEFAULT_SOCKET));
    let endpoint = host.parse::<Endpoint>()?;
    let tls = match (&endpoint, cli.tlsverify) {
        (Endpoint::Tcp(_), true) => {
            let dir = cert_path();
            let read = |given: &Option<std::path::PathBuf>, name: &str, flag: &str| {
                let path = given.clone().unwrap_or_else(|| dir.join(name));
                std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "{flag} {}: make one with `shoal cluster client-cert`",
                        path.display()
                    )
                })
            };
            let tls = shoal_client::Tls::from_pem(
                &read(&cli.tlscacert, "ca.pem", "--tlscacert")?,
                &read(&cli.tlscert, "cert.pem", "--tlscert")?,
                &read(&cli.tlskey, "key.pem", "--tlskey")?,
                "shoal-manager",
            )
            .map_err(|e| anyhow::anyhow!("--tlsverify: {e}"))?;
            Some(tls)
        }
        _ => None,
    };
    Ok(Client::new(endpoint).with_tls(tls))
}

/// Where the client certificate files are by default: $SHOAL_CERT_PATH, else ~/.shoal.
fn cert_path() -> std::path::PathBuf {
    match std::env::var_os("SHOAL_CERT_PATH") {
        Some(p) if !p.is_empty() => p.into(),
        _ => std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".shoal"),
    }
}

fn path_part(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    if let Command::Stack(StackCmd::Config { files }) = &cli.command {
        {
            let loaded = load_files(files)?;
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            match cli.format {
                Format::Json => print_json(&stack::render::value(&loaded))?,
                Format::Table => print!("{}", stack::render::yaml(&loaded)),
            }
            return Ok(());
        }
    }
    let c = client(&cli)?;
    let json = cli.format == Format::Json;
    match cli.command {
        Command::Cluster(ClusterCmd::Init {
            advertise_addr,
            listen_addr,
            default_addr_pool,
            default_addr_pool_mask_length,
            allow_privileged,
            cert_expiry,
            ca_cert,
            ca_key,
        }) => {
            let req = InitRequest {
                advertise_addr,
                listen_addr,
                default_addr_pool,
                subnet_size: default_addr_pool_mask_length,
                allow_privileged,
                cert_expiry_secs: cert_expiry.map(|d| d.0.as_secs()),
                external_ca: read_external_ca(ca_cert.as_deref(), ca_key.as_deref())?,
            };
            let info: ClusterInfo = c
                .clone()
                .with_timeout(Duration::from_secs(30))
                .post("/v1/cluster/init", &req)
                .await?;
            if json {
                print_json(&info)?;
            } else {
                println!(
                    "Cluster {} initialized: this node is its first manager.",
                    info.id
                );
                println!("Worker join token: {}", info.worker_join_token);
            }
        }
        Command::Cluster(ClusterCmd::Join {
            token,
            advertise_addr,
            listen_addr,
            remote_addr,
        }) => {
            let req = JoinRequest {
                remote_addr,
                token,
                advertise_addr,
                listen_addr,
            };
            c.clone()
                .with_timeout(Duration::from_secs(60))
                .send_no_content(hyper::Method::POST, "/v1/cluster/join", Some(&req))
                .await?;
            println!("This node joined the cluster.");
        }
        Command::Cluster(ClusterCmd::JoinToken {
            rotate,
            quiet,
            role,
        }) => {
            let t: JoinToken = c
                .get(&format!(
                    "/v1/cluster/join-token?role={role}&rotate={rotate}"
                ))
                .await?;
            if json {
                print_json(&t)?;
            } else if quiet {
                println!("{}", t.token);
            } else {
                if rotate {
                    println!(
                        "The {} join token was rotated: the old one no longer works.",
                        t.role
                    );
                }
                println!("To add a {} to this cluster, run on it:\n", t.role);
                println!(
                    "    shoal cluster join --token {} MANAGER_ADDR:2377\n",
                    t.token
                );
            }
        }
        Command::Cluster(ClusterCmd::Leave { force }) => {
            c.clone()
                .with_timeout(Duration::from_secs(30))
                .send_no_content(
                    hyper::Method::POST,
                    "/v1/cluster/leave",
                    Some(&LeaveRequest { force }),
                )
                .await?;
            println!("This node left the cluster.");
        }
        Command::Cluster(ClusterCmd::ClientCert { list: true, .. }) => {
            let certs: Vec<shoal_api::wire::ClientCert> = c.get("/v1/cluster/client-certs").await?;
            output::client_certs(&certs);
        }
        Command::Cluster(ClusterCmd::ClientCert {
            revoke: Some(target),
            ..
        }) => {
            let certs: Vec<shoal_api::wire::ClientCert> = c
                .post(
                    "/v1/cluster/client-certs/revoke",
                    &shoal_api::wire::ClientCertRevoke { target },
                )
                .await?;
            output::client_certs(&certs);
        }
        Command::Cluster(ClusterCmd::ClientCert { name, out, .. }) => {
            let key = rcgen::KeyPair::generate().context("making a key")?;
            let csr = rcgen::CertificateParams::default()
                .serialize_request(&key)
                .and_then(|r| r.pem())
                .context("making the certificate request")?;
            let resp: shoal_api::wire::RenewResponse = c
                .post(
                    "/v1/cluster/client-cert",
                    &shoal_api::wire::ClientCertRequest { name, csr },
                )
                .await?;
            let dir = out.unwrap_or_else(cert_path);
            write_client_cert(
                &dir,
                &resp.ca_certificate,
                &resp.certificate,
                &key.serialize_pem(),
            )?;
            println!(
                "Wrote {}/{{ca,cert,key}}.pem: use them with `shoal -H tcp://MANAGER:PORT --tlsverify`.",
                dir.display()
            );
        }
        Command::Cluster(ClusterCmd::Ca {
            rotate,
            ca_cert,
            ca_key,
            detach,
            quiet,
        }) => {
            let mut info: shoal_api::wire::CaInfo = if rotate {
                let req = shoal_api::wire::CaRotate {
                    external_ca: read_external_ca(ca_cert.as_deref(), ca_key.as_deref())?,
                };
                c.post("/v1/cluster/ca/rotate", &req).await?
            } else {
                c.get("/v1/cluster/ca").await?
            };
            // As `docker swarm ca --rotate`: wait for every node unless detached.
            let mut shown = None;
            while rotate && !detach && info.rotating {
                if !quiet && !json && shown != Some(info.nodes_done) {
                    eprintln!(
                        "rotating the root CA: {}/{} nodes hold a certificate from the new root",
                        info.nodes_done, info.nodes_total
                    );
                    shown = Some(info.nodes_done);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                info = c.get("/v1/cluster/ca").await?;
            }
            if json {
                print_json(&info)?;
            } else {
                if rotate && !info.rotating && !quiet {
                    eprintln!("every node holds a certificate from the new root CA; the old one is no longer trusted");
                }
                print!("{}", info.ca_certificate);
            }
        }
        Command::Cluster(ClusterCmd::Update {
            allow_privileged,
            autolock,
            cert_expiry,
        }) => {
            let req = ClusterUpdate {
                allow_privileged,
                autolock,
                cert_expiry_secs: cert_expiry.map(|d| d.0.as_secs()),
            };
            let info: ClusterInfo = c.post("/v1/cluster/update", &req).await?;
            if json {
                print_json(&info)?;
            } else {
                println!("Cluster {} updated.", info.id);
                if autolock == Some(true) {
                    let k: UnlockKey = c.get("/v1/cluster/unlock-key").await?;
                    print_unlock_key(&k.key);
                }
            }
        }
        Command::Cluster(ClusterCmd::UnlockKey { rotate, quiet }) => {
            let k: UnlockKey = c
                .get(&format!("/v1/cluster/unlock-key?rotate={rotate}"))
                .await?;
            if json {
                print_json(&k)?;
            } else if quiet {
                println!("{}", k.key);
            } else {
                if rotate {
                    println!("The unlock key was rotated: keep the new one, the old one no longer unlocks a manager that restarts from now on.");
                }
                print_unlock_key(&k.key);
            }
        }
        Command::Cluster(ClusterCmd::Unlock) => {
            let mut key = String::new();
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprint!("Unlock key: ");
            }
            std::io::stdin()
                .read_line(&mut key)
                .context("reading the unlock key from stdin")?;
            let req = UnlockRequest {
                key: key.trim().to_owned(),
            };
            let info: ClusterInfo = c.post("/v1/cluster/unlock", &req).await?;
            if json {
                print_json(&info)?;
            } else {
                println!("This manager is unlocked.");
            }
        }
        Command::Cluster(ClusterCmd::Info) => {
            let info: ClusterInfo = c.get("/v1/cluster").await?;
            if json {
                print_json(&info)?;
            } else {
                output::cluster_info(&info);
            }
        }
        Command::Stack(StackCmd::Deploy {
            files,
            prune,
            wait,
            timeout,
            resolve_image,
            with_registry_auth,
            name,
        }) => {
            let resolve_image = match resolve_image.as_str() {
                "changed" => ResolveImage::Changed,
                "never" => ResolveImage::Never,
                _ => ResolveImage::Always,
            };
            let options = DeployOptions {
                prune,
                wait,
                timeout: timeout.0,
                resolve_image,
                with_registry_auth,
            };
            deploy(&c, &files, &options, &name, json).await?
        }
        Command::Stack(StackCmd::Ls) => {
            let stacks: Vec<StackSummary> = c.get("/v1/stacks").await?;
            if json {
                print_json(&stacks)?;
            } else {
                output::table(
                    &["NAME", "SERVICES", "NETWORKS"],
                    stacks.iter().map(|s| {
                        vec![
                            s.name.clone(),
                            s.services.to_string(),
                            s.networks.to_string(),
                        ]
                    }),
                );
            }
        }
        Command::Stack(StackCmd::Ps { name }) => {
            let tasks: Vec<Task> = c
                .get(&format!("/v1/stacks/{}/tasks", path_part(&name)))
                .await?;
            show_tasks(&c, &tasks, json).await?;
        }
        Command::Stack(StackCmd::Rm { names }) => {
            for name in names {
                c.send_no_content::<()>(
                    Method::DELETE,
                    &format!("/v1/stacks/{}", path_part(&name)),
                    None,
                )
                .await
                .with_context(|| format!("removing stack {name}"))?;
                println!("Removing stack {name}");
            }
        }
        Command::Stack(StackCmd::Config { .. }) => unreachable!("handled above"),
        Command::Service(cmd) => service(&c, cmd, json).await?,
        Command::Node(cmd) => node(&c, cmd, json).await?,
        Command::Image(cmd) => image(&c, cmd, json).await?,
        Command::Volume(cmd) => volume(&c, cmd, json).await?,
        Command::Container(cmd) => {
            let exec = matches!(cmd, container::ContainerCmd::Exec(_));
            let code = container::run(&c, cmd, json).await?;
            // An exec may leave a read of stdin pending: leave at once, with its code.
            if exec || code != 0 {
                std::process::exit(code);
            }
        }
        Command::Network(cmd) => network(&c, cmd, json).await?,
        Command::Secret(cmd) => {
            files::run(&c, shoal_api::secret::FileKind::Secret, cmd, json).await?
        }
        Command::Config(cmd) => {
            files::run(&c, shoal_api::secret::FileKind::Config, cmd, json).await?
        }
        Command::Login {
            registry,
            username,
            password,
            password_stdin,
        } => {
            let password = match (password, password_stdin) {
                (Some(p), _) => p,
                (None, true) => {
                    let mut p = String::new();
                    std::io::stdin().read_line(&mut p)?;
                    p.trim_end_matches(['\r', '\n']).to_owned()
                }
                (None, false) => bail!("give the password with --password-stdin or --password"),
            };
            c.send_no_content(
                Method::POST,
                "/v1/registry/login",
                Some(&serde_json::json!({
                    "registry": registry, "username": username, "password": password,
                })),
            )
            .await?;
            credentials::store(&registry, &username, &password)?;
            println!("Login Succeeded");
        }
        Command::Logout { registry } => {
            if credentials::remove(&registry)? {
                println!("Removing login credentials for {registry}");
            } else {
                println!("Not logged in to {registry}");
            }
        }
        Command::Events { since } => {
            let mut lines = Lines::new(c.stream(&format!("/v1/events?since={since}")).await?);
            while let Some(e) = lines.next::<serde_json::Value>().await? {
                if json {
                    println!("{e}");
                } else {
                    output::event(&e);
                }
            }
        }
    }
    Ok(())
}

fn load_files(files: &[String]) -> Result<stack::Loaded> {
    let mut sources = Vec::new();
    for f in files {
        let content = if f == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading the stack from stdin")?
        } else {
            std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?
        };
        sources.push(SourceFile {
            name: f.clone(),
            content,
        });
    }
    let first = std::path::Path::new(&files[0]);
    let dir = match first.parent() {
        Some(p) if !p.as_os_str().is_empty() && files[0] != "-" => p
            .canonicalize()
            .with_context(|| format!("resolving {}", p.display()))?,
        _ => std::env::current_dir()?,
    };
    let env: HashMap<String, String> = std::env::vars().collect();
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| e.to_string());
    let opts = LoadOptions {
        env: &env,
        working_dir: &dir.to_string_lossy(),
        read_file: &read,
        skip_interpolation: false,
    };
    Ok(stack::load(&sources, &opts)?)
}

/// `stack deploy`'s options.
#[derive(Debug, Clone, Copy)]
struct DeployOptions {
    prune: bool,
    wait: bool,
    timeout: Duration,
    resolve_image: ResolveImage,
    with_registry_auth: bool,
}

async fn deploy(
    c: &Client,
    files: &[String],
    options: &DeployOptions,
    name: &str,
    json: bool,
) -> Result<()> {
    let DeployOptions {
        prune,
        wait,
        timeout,
        resolve_image,
        with_registry_auth,
    } = *options;
    let loaded = load_files(files)?;
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    let mut spec = convert::convert(name, &loaded.config).with_context(|| files.join(", "))?;
    files::fill_stack_files(&mut spec).with_context(|| files.join(", "))?;
    if with_registry_auth {
        for s in &mut spec.services {
            s.task.container.registry_auth =
                credentials::registry_auth_for(&s.task.container.image)?;
        }
    }
    let wanted: Vec<String> = spec.services.iter().map(|s| s.name.clone()).collect();
    let result: StackDeployResult = c
        .post(
            &format!("/v1/stacks/{}/deploy", path_part(name)),
            &StackDeploy {
                stack: spec,
                prune,
                resolve_image,
            },
        )
        .await?;
    if json {
        print_json(&result)?;
    } else {
        for w in &result.warnings {
            eprintln!("warning: {w}");
        }
        for f in &result.files_created {
            println!("Creating {f}");
        }
        for n in &result.networks_created {
            println!("Creating network {n}");
        }
        for s in &result.created {
            println!("Creating service {s}");
        }
        for s in &result.updated {
            println!("Updating service {s}");
        }
        for s in &result.removed {
            println!("Removing service {s}");
        }
    }
    if wait {
        wait_converged(c, &wanted, result.revision, timeout, json).await?;
    }
    Ok(())
}

/// Follows events until every named service runs its desired tasks on its current spec.
async fn wait_converged(
    c: &Client,
    names: &[String],
    since: u64,
    timeout: Duration,
    quiet: bool,
) -> Result<()> {
    let started = Instant::now();
    let bars = MultiProgress::new();
    if quiet {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let mut progress: BTreeMap<String, ProgressBar> = BTreeMap::new();
    for n in names {
        let bar = bars.add(ProgressBar::new(0));
        bar.set_style(style.clone());
        bar.set_prefix(n.clone());
        progress.insert(n.clone(), bar);
    }
    let mut lines = Lines::new(c.stream(&format!("/v1/events?since={since}")).await?);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let services: Vec<ServiceSummary> = c.get("/v1/services").await?;
        let mut done = true;
        let mut pending: Vec<String> = Vec::new();
        for (name, bar) in &progress {
            let Some(s) = services.iter().find(|s| &s.service.spec.name == name) else {
                done = false;
                pending.push(format!("{name} (the service does not exist)"));
                continue;
            };
            bar.set_length(s.desired);
            bar.set_position(s.running.min(s.desired));
            let status = s.service.update_status.as_ref();
            let updating = status.is_some_and(|u| u.state.in_progress());
            // An update of this deploy that paused or rolled back is an answer too: a failure.
            if let Some(u) = status.filter(|_| s.service.spec_version >= since) {
                if matches!(
                    u.state,
                    UpdateState::Paused
                        | UpdateState::RollbackPaused
                        | UpdateState::RollbackCompleted
                ) {
                    bars.clear().ok();
                    bail!("service {name}: {}", u.message);
                }
            }
            let ok = s.running == s.desired && !updating;
            bar.set_message(if ok {
                "converged"
            } else if status.is_some_and(|u| u.state == UpdateState::RollbackStarted) {
                "rolling back"
            } else if updating {
                "updating"
            } else {
                ""
            });
            if ok {
                bar.finish();
            } else {
                pending.push(format!("{name} ({}/{} running)", s.running, s.desired));
            }
            done &= ok;
        }
        if done {
            if !quiet {
                eprintln!(
                    "All {} services converged in {:.2}s",
                    names.len(),
                    started.elapsed().as_secs_f64()
                );
            }
            return Ok(());
        }
        // Wait for the next change (an event, or a second at most: the store is read again
        // either way, so nothing is missed), then drain what else arrived.
        let until = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
        match tokio::time::timeout_at(until, lines.next::<serde_json::Value>()).await {
            Ok(Ok(Some(_))) => {
                while let Ok(Ok(Some(_))) = tokio::time::timeout(
                    Duration::from_millis(1),
                    lines.next::<serde_json::Value>(),
                )
                .await
                {}
            }
            // The stream was cut (this watcher fell behind, or the manager restarted): follow
            // live events again; the next pass catches up from the store.
            Ok(Ok(None)) | Ok(Err(_)) => {
                lines = Lines::new(c.stream("/v1/events?since=0").await?);
            }
            Err(_) if tokio::time::Instant::now() < deadline => {}
            Err(_) => {
                let tasks: Vec<Task> = c.get("/v1/tasks").await?;
                let problems: Vec<String> = tasks
                    .iter()
                    .filter(|t| {
                        names.contains(&t.service_name) && t.wanted() && !t.status.err.is_empty()
                    })
                    .map(|t| format!("{}: {}", t.name(), t.status.err))
                    .collect();
                bail!(
                    "not converged after {}s: {}{}",
                    timeout.as_secs(),
                    pending.join(", "),
                    if problems.is_empty() {
                        String::new()
                    } else {
                        format!(":\n  {}", problems.join("\n  "))
                    }
                );
            }
        }
    }
}

async fn show_tasks(c: &Client, tasks: &[Task], json: bool) -> Result<()> {
    if json {
        return print_json(&tasks);
    }
    let nodes: Vec<Node> = c.get("/v1/nodes").await?;
    output::tasks(tasks, &nodes);
    Ok(())
}

async fn find_service(c: &Client, name: &str) -> Result<Service> {
    Ok(c.get(&format!("/v1/services/{}", path_part(name))).await?)
}

async fn service(c: &Client, cmd: ServiceCmd, json: bool) -> Result<()> {
    match cmd {
        ServiceCmd::Ls => {
            let services: Vec<ServiceSummary> = c.get("/v1/services").await?;
            if json {
                return print_json(&services);
            }
            output::services(&services);
        }
        ServiceCmd::Exec(args) => {
            let code = container::service_exec(c, &args.target, &args).await?;
            // An exec may leave a read of stdin pending: leave at once, with its code.
            std::process::exit(code);
        }
        ServiceCmd::Ps { service } => {
            let s = find_service(c, &service).await?;
            let tasks: Vec<Task> = c.get(&format!("/v1/services/{}/tasks", s.id)).await?;
            show_tasks(c, &tasks, json).await?;
        }
        ServiceCmd::Inspect { services } => {
            let mut out = Vec::new();
            for s in services {
                out.push(find_service(c, &s).await?);
            }
            print_json(&out)?;
        }
        ServiceCmd::Scale { pairs } => {
            for pair in pairs {
                let (name, n) = pair
                    .split_once('=')
                    .with_context(|| format!("{pair:?}: use SERVICE=REPLICAS"))?;
                let replicas: u64 = n
                    .parse()
                    .with_context(|| format!("{pair:?}: {n:?} is not a number"))?;
                let _: Service = c
                    .post(
                        &format!("/v1/services/{}/scale", path_part(name)),
                        &ScaleRequest { replicas },
                    )
                    .await?;
                println!("{name} scaled to {replicas}");
            }
        }
        ServiceCmd::Update(args) if args.rollback => rollback(c, &args.service, json).await?,
        ServiceCmd::Rollback { service } => rollback(c, &service, json).await?,
        ServiceCmd::Update(args) => {
            let s = find_service(c, &args.service).await?;
            let spec = updated_spec(s.spec.clone(), &args)?;
            let updated: Service = c
                .post(
                    &format!("/v1/services/{}/update", s.id),
                    &ServiceUpdate {
                        spec,
                        version: Some(s.version),
                    },
                )
                .await?;
            if json {
                print_json(&updated)?;
            } else {
                println!("{}", updated.spec.name);
            }
        }
        ServiceCmd::Logs {
            follow,
            tail,
            no_task_ids,
            since,
            until,
            timestamps,
            details,
            service,
        } => {
            let now = chrono::Utc::now();
            let view = LogView {
                prefix: !no_task_ids,
                since: since.as_deref().map(|s| log_time(s, now)).transpose()?,
                until: until.as_deref().map(|s| log_time(s, now)).transpose()?,
                timestamps,
                details,
            };
            logs(c, &service, follow, tail, &view, json).await?
        }
        ServiceCmd::Rm { services } => {
            for name in services {
                c.send_no_content::<()>(
                    Method::DELETE,
                    &format!("/v1/services/{}", path_part(&name)),
                    None,
                )
                .await
                .with_context(|| format!("removing service {name}"))?;
                println!("{name}");
            }
        }
    }
    Ok(())
}

fn query(s: &str) -> String {
    path_part(s)
}

async fn image(c: &Client, cmd: ImageCmd, json: bool) -> Result<()> {
    match cmd {
        ImageCmd::Import {
            file,
            reference,
            input,
            tag,
            change,
        } => {
            let file = file.or(input).context("give the archive to import")?;
            let tag = tag.or(reference);
            let mut path = format!("/v1/images/import?source={}&", query(&file));
            if let Some(t) = &tag {
                path.push_str(&format!("tag={}&", query(t)));
            }
            for ch in &change {
                path.push_str(&format!("change={}&", query(ch)));
            }
            let r: ImageResult = if file == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                    .context("reading stdin")?;
                c.upload(&path, b).await?
            } else {
                let f = tokio::fs::File::open(&file)
                    .await
                    .with_context(|| format!("opening {file}"))?;
                c.upload_file(&path, f).await?
            };
            if json {
                return print_json(&r);
            }
            for line in r.done {
                println!("{line}");
            }
        }
        ImageCmd::Ls => {
            let list: Vec<ImageInfo> = c.get("/v1/images").await?;
            if json {
                return print_json(&list);
            }
            output::images(&list);
        }
        ImageCmd::Inspect { images } => {
            let mut out = Vec::new();
            for i in images {
                let info: ImageInfo = c
                    .get(&format!("/v1/images/inspect?ref={}", query(&i)))
                    .await?;
                out.push(info);
            }
            print_json(&out)?;
        }
        ImageCmd::Prune { all } => {
            let r: ImageResult = c
                .call::<(), _>(Method::POST, &format!("/v1/images/prune?all={all}"), None)
                .await?;
            if json {
                return print_json(&r);
            }
            for line in r.done {
                println!("{line}");
            }
        }
        ImageCmd::Push { reference, target } => {
            let to = target.clone().unwrap_or_else(|| reference.clone());
            let mut c = c.clone();
            if let Some(auth) = credentials::header_for(&to)? {
                c = c.with_header("x-registry-auth", auth);
            }
            let mut path = format!("/v1/images/push?progress=true&ref={}", query(&reference));
            if let Some(t) = &target {
                path.push_str(&format!("&target={}", query(t)));
            }
            registry_job(&c, &path, &format!("Pushing {to}"), "pushing", json).await?;
        }
        ImageCmd::Pull { reference } => {
            let mut c = c.clone();
            if let Some(auth) = credentials::header_for(&reference)? {
                c = c.with_header("x-registry-auth", auth);
            }
            let path = format!("/v1/images/pull?progress=true&ref={}", query(&reference));
            registry_job(&c, &path, &format!("Pulling {reference}"), "pulling", json).await?;
        }
        ImageCmd::Tag { source, target } => {
            let _: ImageResult = c
                .call::<(), _>(
                    Method::POST,
                    &format!(
                        "/v1/images/tag?ref={}&tag={}",
                        query(&source),
                        query(&target)
                    ),
                    None,
                )
                .await?;
        }
        ImageCmd::Rm { images } => {
            let mut failed = false;
            for i in images {
                match c
                    .call::<(), ImageResult>(
                        Method::DELETE,
                        &format!("/v1/images?ref={}", query(&i)),
                        None,
                    )
                    .await
                {
                    Ok(r) => r.done.iter().for_each(|l| println!("{l}")),
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                bail!("some images were not removed");
            }
        }
    }
    Ok(())
}

/// Follows a pull or push as the node streams it: a bar per layer on a terminal (`verb`,
/// then done), plain lines otherwise; then the result's lines, or the error.
async fn registry_job(c: &Client, path: &str, title: &str, verb: &str, json: bool) -> Result<()> {
    use std::io::IsTerminal;
    let c = c.clone().with_timeout(Duration::from_secs(3600));
    let mut lines = Lines::new(c.stream_post(path).await?);
    let terminal = std::io::stderr().is_terminal() && !json;
    let bars = MultiProgress::new();
    if !terminal {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    if !json {
        eprintln!("{title} ...");
    }
    let mut open: BTreeMap<String, ProgressBar> = BTreeMap::new();
    while let Some(line) = lines.next::<serde_json::Value>().await? {
        if let Some(p) = line.get("progress") {
            let p: shoal_registry::Progress = serde_json::from_value(p.clone())?;
            match &p {
                shoal_registry::Progress::Start { digest, size } => {
                    let short = shoal_registry::short(digest).to_owned();
                    if terminal {
                        let bar = bars.add(ProgressBar::new(*size));
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                            )
                            .expect("template")
                            .progress_chars("=> "),
                        );
                        bar.set_message(format!("{short}: {verb}"));
                        open.insert(digest.clone(), bar);
                    } else if !json {
                        eprintln!("{short}: {verb} {}", output::size(*size));
                    }
                }
                shoal_registry::Progress::Advance { digest, bytes } => {
                    if let Some(bar) = open.get(digest) {
                        bar.set_position(*bytes);
                    }
                }
                shoal_registry::Progress::Done { digest } => {
                    let short = shoal_registry::short(digest);
                    match open.remove(digest) {
                        Some(bar) => {
                            bar.set_position(bar.length().unwrap_or(0));
                            bar.finish_with_message(format!("{short}: done"));
                        }
                        None if !json => eprintln!("{short}: done"),
                        None => {}
                    }
                }
                shoal_registry::Progress::Note(n) => {
                    if terminal {
                        let _ = bars.println(n);
                    } else if !json {
                        eprintln!("{n}");
                    }
                }
            }
        } else if let Some(r) = line.get("result") {
            for bar in open.values() {
                bar.finish_and_clear();
            }
            let r: ImageResult = serde_json::from_value(r.clone())?;
            if json {
                return print_json(&r);
            }
            for l in r.done {
                println!("{l}");
            }
            return Ok(());
        } else if let Some(e) = line.get("error") {
            for bar in open.values() {
                bar.abandon();
            }
            bail!("{}", e.as_str().unwrap_or("the node failed"));
        }
    }
    bail!("the node ended the answer without a result")
}

async fn network(c: &Client, cmd: NetworkCmd, json: bool) -> Result<()> {
    match cmd {
        NetworkCmd::Ls => {
            let list: Vec<Network> = c.get("/v1/networks").await?;
            if json {
                return print_json(&list);
            }
            output::table(
                &["NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET"],
                list.iter().map(|n| {
                    vec![
                        n.id.short().to_owned(),
                        n.spec.name.clone(),
                        n.spec.driver.clone(),
                        "swarm".to_owned(),
                        n.subnet.clone(),
                    ]
                }),
            );
        }
        NetworkCmd::Inspect { networks } => {
            let mut out = Vec::new();
            for n in networks {
                let info: NetworkInfo = c.get(&format!("/v1/networks/{}", path_part(&n))).await?;
                out.push(info);
            }
            print_json(&out)?;
        }
        NetworkCmd::Create {
            name,
            driver,
            subnet,
            internal,
            attachable,
            labels,
            opts,
        } => {
            let pairs = |list: Vec<String>| -> BTreeMap<String, String> {
                list.into_iter()
                    .map(|kv| match kv.split_once('=') {
                        Some((k, v)) => (k.to_owned(), v.to_owned()),
                        None => (kv, String::new()),
                    })
                    .collect()
            };
            let spec = NetworkSpec {
                name,
                driver,
                attachable,
                internal,
                subnet: subnet.unwrap_or_default(),
                labels: pairs(labels),
                driver_opts: pairs(opts),
            };
            let created: Created = c.post("/v1/networks", &spec).await?;
            println!("{}", created.id);
        }
        NetworkCmd::Rm { networks } => {
            let mut failed = false;
            for n in networks {
                match c
                    .send_no_content::<()>(
                        Method::DELETE,
                        &format!("/v1/networks/{}", path_part(&n)),
                        None,
                    )
                    .await
                {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                bail!("some networks were not removed");
            }
        }
    }
    Ok(())
}

async fn volume(c: &Client, cmd: VolumeCmd, json: bool) -> Result<()> {
    match cmd {
        VolumeCmd::Ls => {
            let list: Vec<VolumeInfo> = c.get("/v1/volumes").await?;
            if json {
                return print_json(&list);
            }
            output::table(
                &["DRIVER", "VOLUME NAME"],
                list.iter().map(|v| vec![v.driver.clone(), v.name.clone()]),
            );
        }
        VolumeCmd::Inspect { volumes } => {
            let mut out = Vec::new();
            for v in volumes {
                let info: VolumeInfo = c.get(&format!("/v1/volumes/{}", path_part(&v))).await?;
                out.push(info);
            }
            print_json(&out)?;
        }
        VolumeCmd::Rm { volumes } => {
            let mut failed = false;
            for v in volumes {
                match c
                    .send_no_content::<()>(
                        Method::DELETE,
                        &format!("/v1/volumes/{}", path_part(&v)),
                        None,
                    )
                    .await
                {
                    Ok(()) => println!("{v}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                bail!("some volumes were not removed");
            }
        }
    }
    Ok(())
}

/// How `service logs` shows lines.
#[derive(Debug, Clone, Default)]
struct LogView {
    prefix: bool,
    /// Lines from then on (RFC 3339, nanoseconds, UTC: compared as text with the lines').
    since: Option<String>,
    /// Lines before then.
    until: Option<String>,
    timestamps: bool,
    details: bool,
}

/// `--since`/`--until` as docker reads them: a duration before `now` (`10m`), Unix seconds
/// (`1700000000.5`), an RFC 3339 time, or a date (midnight UTC); in the logs' own format.
fn log_time(s: &str, now: chrono::DateTime<chrono::Utc>) -> Result<String> {
    use chrono::{DateTime, NaiveDate, TimeZone, Utc};
    let t: DateTime<Utc> = if let Ok(d) = s.parse::<shoal_api::units::Duration>() {
        now - chrono::Duration::from_std(d.0).context("duration too large")?
    } else if let Ok(secs) = s.parse::<f64>() {
        Utc.timestamp_opt(secs.trunc() as i64, (secs.fract() * 1e9) as u32)
            .single()
            .with_context(|| format!("{s:?}: not a time"))?
    } else if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        t.with_timezone(&Utc)
    } else if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"))
    } else {
        bail!("{s:?}: use a time (2026-11-23T10:00:00Z, 2026-11-23), Unix seconds, or a duration (10m)")
    };
    Ok(t.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string())
}

async fn logs(
    c: &Client,
    service: &str,
    follow: bool,
    tail: Option<usize>,
    view: &LogView,
    json: bool,
) -> Result<()> {
    let s = find_service(c, service).await?;
    let mut path = format!("/v1/services/{}/logs?follow={follow}", s.id);
    if let Some(n) = tail {
        path.push_str(&format!("&tail={n}"));
    }
    let mut lines = Lines::new(c.stream(&path).await?);
    let nodes: Vec<Node> = c.get("/v1/nodes").await.unwrap_or_default();
    let host = |id: &shoal_api::NodeId| {
        nodes
            .iter()
            .find(|n| &n.id == id)
            .map(|n| n.description.hostname.clone())
            .unwrap_or_else(|| id.short().to_owned())
    };
    use std::io::Write;
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    while let Some(l) = lines.next::<LogLine>().await? {
        if view.since.as_ref().is_some_and(|t| l.time < *t)
            || view.until.as_ref().is_some_and(|t| l.time >= *t)
        {
            continue;
        }
        if json {
            println!("{}", serde_json::to_string(&l)?);
            continue;
        }
        let mut line = l.line.clone();
        if view.details {
            line = format!(
                "com.docker.swarm.node.id={},com.docker.swarm.service.id={},com.docker.swarm.task.id={} {line}",
                l.node_id, s.id, l.task_id
            );
        }
        if view.timestamps {
            line = format!("{} {line}", l.time);
        }
        let text = if view.prefix {
            // Global tasks have no slot: docker names them by node.
            let slot = if l.slot == 0 {
                l.node_id.short().to_owned()
            } else {
                l.slot.to_string()
            };
            format!(
                "{}.{slot}.{}@{}    | {}",
                l.service,
                l.task_id.short(),
                host(&l.node_id),
                line
            )
        } else {
            line
        };
        let text = if text.ends_with('\n') {
            text
        } else {
            format!("{text}\n")
        };
        if l.stream == "stderr" {
            let _ = stderr.lock().write_all(text.as_bytes());
        } else {
            let mut out = stdout.lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }
    Ok(())
}

fn updated_spec(mut spec: ServiceSpec, a: &UpdateArgs) -> Result<ServiceSpec> {
    if let Some(image) = &a.image {
        spec.task.container.image = image.clone();
    }
    if a.with_registry_auth {
        spec.task.container.registry_auth =
            credentials::registry_auth_for(&spec.task.container.image)?;
    }
    if let Some(r) = a.replicas {
        match spec.mode {
            ServiceMode::Replicated { .. } => spec.mode = ServiceMode::Replicated { replicas: r },
            ServiceMode::Global => bail!("--replicas works on replicated services only"),
        }
    }
    let env = &mut spec.task.container.env;
    for rm in &a.env_rm {
        env.retain(|e| e.split('=').next() != Some(rm.as_str()));
    }
    for add in &a.env_add {
        let key = add.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(add.clone());
    }
    let constraints = &mut spec.task.placement.constraints;
    constraints.retain(|c| !a.constraint_rm.contains(c));
    for add in &a.constraint_add {
        shoal_api::constraint::Constraint::parse(add)?;
        constraints.push(add.clone());
    }
    if let Some(p) = a.parallelism {
        spec.update_config.parallelism = p;
    }
    if let Some(d) = a.delay {
        spec.update_config.delay = d;
    }
    if let Some(o) = &a.order {
        spec.update_config.order = match o.as_str() {
            "stop-first" => UpdateOrder::StopFirst,
            "start-first" => UpdateOrder::StartFirst,
            other => bail!("--update-order {other:?}: use stop-first or start-first"),
        };
    }
    if let Some(f) = &a.failure_action {
        spec.update_config.failure_action = match f.as_str() {
            "pause" => FailureAction::Pause,
            "continue" => FailureAction::Continue,
            "rollback" => FailureAction::Rollback,
            other => bail!("--update-failure-action {other:?}: use pause, continue or rollback"),
        };
    }
    if let Some(m) = a.monitor {
        spec.update_config.monitor = m;
    }
    if let Some(r) = a.max_failure_ratio {
        if !(0.0..=1.0).contains(&r) {
            bail!("--update-max-failure-ratio {r}: a fraction from 0 to 1");
        }
        spec.update_config.max_failure_ratio = r;
    }
    if a.force {
        spec.task.force_update += 1;
    }
    Ok(spec)
}

/// `service rollback` (and `service update --rollback`).
async fn rollback(c: &Client, service: &str, json: bool) -> Result<()> {
    let s = find_service(c, service).await?;
    let s: Service = c
        .post(&format!("/v1/services/{}/rollback", s.id), &())
        .await?;
    if json {
        print_json(&s)
    } else {
        println!("{}", s.spec.name);
        Ok(())
    }
}

async fn node(c: &Client, cmd: NodeCmd, json: bool) -> Result<()> {
    match cmd {
        NodeCmd::Ls => {
            let nodes: Vec<Node> = c.get("/v1/nodes").await?;
            if json {
                return print_json(&nodes);
            }
            let leader = c
                .get::<ClusterInfo>("/v1/cluster")
                .await
                .map(|i| i.raft.leader)
                .unwrap_or(0);
            output::nodes(&nodes, leader);
        }
        NodeCmd::Inspect { nodes } => {
            let mut out = Vec::new();
            for n in nodes {
                out.push(
                    c.get::<Node>(&format!("/v1/nodes/{}", path_part(&n)))
                        .await?,
                );
            }
            print_json(&out)?;
        }
        NodeCmd::Update {
            availability,
            label_add,
            label_rm,
            role,
            node,
        } => {
            let role_path = match role.as_deref() {
                None => None,
                Some("manager") => Some("promote"),
                Some("worker") => Some("demote"),
                Some(other) => bail!("--role {other:?}: use manager or worker"),
            };
            let availability = match availability.as_deref() {
                None => None,
                Some("active") => Some(Availability::Active),
                Some("pause") => Some(Availability::Pause),
                Some("drain") => Some(Availability::Drain),
                Some(other) => bail!("--availability {other:?}: use active, pause or drain"),
            };
            let mut labels_add = BTreeMap::new();
            for l in label_add {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                labels_add.insert(k.to_owned(), v.to_owned());
            }
            let n: Node = c
                .post(
                    &format!("/v1/nodes/{}/update", path_part(&node)),
                    &NodeUpdate {
                        availability,
                        labels_add,
                        labels_rm: label_rm,
                    },
                )
                .await?;
            if let Some(action) = role_path {
                c.send_no_content::<()>(
                    Method::POST,
                    &format!("/v1/nodes/{}/{action}", path_part(n.id.as_str())),
                    None,
                )
                .await?;
            }
            if json {
                print_json(&n)?;
            } else {
                println!("{}", n.id);
            }
        }
        NodeCmd::Promote { nodes } => {
            for n in nodes {
                c.send_no_content::<()>(
                    Method::POST,
                    &format!("/v1/nodes/{}/promote", path_part(&n)),
                    None,
                )
                .await?;
                println!("Node {n} promoted to a manager in the cluster.");
            }
        }
        NodeCmd::Demote { force, nodes } => {
            for n in nodes {
                c.send_no_content::<()>(
                    Method::POST,
                    &format!("/v1/nodes/{}/demote?force={force}", path_part(&n)),
                    None,
                )
                .await?;
                println!("Manager {n} demoted in the cluster.");
            }
        }
        NodeCmd::Rm { force, nodes } => {
            for n in nodes {
                c.send_no_content::<()>(
                    Method::DELETE,
                    &format!("/v1/nodes/{}?force={force}", path_part(&n)),
                    None,
                )
                .await?;
                println!("{n}");
            }
        }
    }
    Ok(())
}

/// Writes a client certificate's files, the key readable by its owner only.
fn write_client_cert(dir: &std::path::Path, ca: &str, cert: &str, key: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text, mode) in [
        ("ca.pem", ca, 0o644),
        ("cert.pem", cert, 0o644),
        ("key.pem", key, 0o600),
    ] {
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Reads `--ca-cert` and `--ca-key`.
fn read_external_ca(
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> anyhow::Result<Option<shoal_api::wire::CaKeyPair>> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read_to_string(p).with_context(|| format!("{what} {}", p.display()))
    };
    Ok(Some(shoal_api::wire::CaKeyPair {
        cert_pem: read(cert, "--ca-cert")?,
        key_pem: read(key, "--ca-key")?,
    }))
}

fn print_unlock_key(key: &str) {
    println!(
        "To unlock a manager after it restarts, run on it `shoal cluster unlock` and give it:\n"
    );
    println!("    {key}\n");
    println!("Keep it somewhere safe: a restarted manager serves nothing until it is unlocked.");
}

//! The container executor: tasks run as real containers through `shoal-runtime`'s pieces.
//!
//! Per task: the image must be in the node's store (else the task is rejected with that
//! reason); its layers are mounted with overlayfs under a writable layer in
//! `<data-root>/containers/<task id>/`, the OCI spec is written beside them, and a shim
//! (`shoal-runtime shim`) runs the configured OCI runtime (built-in, runc, crun) on that bundle.
//! The shim outlives the daemon: everything the executor needs to re-adopt a container after a
//! restart (`meta.json`, `shim.pid`, `exit.json`, `container.log`) is in its directory, so
//! [`Executor::observe`] reads only the disk. Exits are awaited with a pidfd on the shim.

use crate::executor::{ExecError, Executor, Observed};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use shoal_api::secret::{FileKind, FileObject};
use shoal_api::service::MountKind;
use shoal_api::task::Task;
use shoal_api::units::Duration;
use shoal_api::TaskId;
use shoal_overlay_net::HostNetwork;
use shoal_runtime::digest::Digest;
use shoal_runtime::image::{ImageError, ImageStore};
use shoal_runtime::oci::OciRuntime;
use shoal_runtime::rootfs::Overlay;
use shoal_runtime::shim::{files, read_exit, ExitRecord};
use shoal_runtime::spec::{self, MountInput, SpecInput};
use shoal_runtime::volume::VolumeStore;
use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncBufReadExt;

/// How long a shim may take to create and start a container and report.
const SHIM_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a container may take to exit once SIGKILLed.
const AFTER_KILL: std::time::Duration = std::time::Duration::from_secs(30);

/// `shoal-init`, built statically by the build script (init/main.rs).
const INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/shoal-init"));

/// Where `init: true` puts it inside a container.
pub const INIT_PATH: &str = "/sbin/shoal-init";

/// How the node runs containers.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// `<data-root>`: images, volumes and containers live under it.
    pub data_root: PathBuf,
    /// The OCI runtime (its `--root` under the node's run directory).
    pub runtime: OciRuntime,
    /// The `shoal-runtime` binary (the shim).
    pub shim: PathBuf,
    /// Parent of the containers' cgroups (`/shoal`).
    pub cgroup_parent: String,
    /// Registries pulled from over plain HTTP (`--insecure-registry HOST:PORT`).
    pub insecure_registries: Vec<String>,
    /// Docker Hub mirrors tried before Docker Hub (`--registry-mirror`).
    pub registry_mirrors: Vec<String>,
    /// Registries this node never contacts (`--block-registry`).
    pub blocked_registries: Vec<String>,
    /// Where registries' CAs are (`HOST:PORT/ca.crt`; `None`: /etc/shoal/certs.d).
    pub registry_certs_dir: Option<PathBuf>,
}

/// What the executor records of a container (`meta.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerMeta {
    /// Container id (the task id).
    pub id: String,
    /// The task.
    pub task: TaskId,
    /// `service.slot` name, for messages.
    pub name: String,
    /// The image as the task names it.
    pub image: String,
    /// The image's id.
    pub image_id: Digest,
    /// Named volumes it mounts.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Signal that asks it to stop.
    pub stop_signal: String,
    /// When it was created (ms).
    pub created: u64,
}

/// Runs tasks as containers.
#[derive(Debug, Clone)]
pub struct ContainerExecutor {
    config: Arc<ContainerConfig>,
    images: Arc<ImageStore>,
    volumes: VolumeStore,
    network: Arc<HostNetwork>,
    /// One lock per reference being pulled: two tasks needing one image pull it once.
    pulls: Arc<tokio::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// The secrets and configs the node's tasks use, as its assignments brought them.
    files: Arc<std::sync::Mutex<BTreeMap<(FileKind, String), FileObject>>>,
    /// Each container's health verdict and its last check's output.
    pub(crate) health: Arc<std::sync::Mutex<BTreeMap<String, (shoal_api::task::Health, String)>>>,
}

fn failed(context: &str) -> impl Fn(std::io::Error) -> ExecError + '_ {
    move |e| ExecError::Failed(format!("{context}: {e}"))
}

impl ContainerExecutor {
    /// Opens the node's stores.
    pub fn open(config: ContainerConfig) -> Result<ContainerExecutor, ExecError> {
        let images = ImageStore::open(&config.data_root.join("images"))
            .map_err(|e| ExecError::Failed(e.to_string()))?;
        let volumes = VolumeStore::open(&config.data_root.join("volumes"))
            .map_err(failed("opening the volume store"))?;
        std::fs::create_dir_all(config.data_root.join("containers"))
            .map_err(failed("creating the containers directory"))?;
        let init = config.data_root.join("shoal-init");
        if std::fs::read(&init).ok().as_deref() != Some(INIT) {
            use std::os::unix::fs::PermissionsExt;
            shoal_runtime::write_atomic(&init, INIT).map_err(failed("writing shoal-init"))?;
            std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
                .map_err(failed("writing shoal-init"))?;
        }
        let network = Arc::new(HostNetwork::new(
            &config.data_root.join("netns"),
            std::net::Ipv4Addr::LOCALHOST,
        ));
        Ok(ContainerExecutor {
            config: Arc::new(config),
            images: Arc::new(images),
            volumes,
            network,
            pulls: Arc::default(),
            files: Arc::default(),
            health: Arc::default(),
        })
    }

    /// Keeps the secrets and configs an assignment brought (`full`: they are all the node's
    /// tasks need, so the others go).
    pub fn set_files(&self, files: &[FileObject], full: bool) {
        let mut all = self.files.lock().expect("files lock");
        if full {
            all.clear();
        }
        for f in files {
            all.insert((f.kind, f.spec.name.clone()), f.clone());
        }
    }

    /// The task's secrets (files in a tmpfs of the container's own, as Docker keeps them) and
    /// configs (files in its directory), each with its owner and mode, bind-mounted read-only
    /// at its target.
    fn file_mounts(&self, task: &Task, dir: &Path) -> Result<Vec<MountInput>, ExecError> {
        let c = &task.spec.container;
        if c.secrets.is_empty() && c.configs.is_empty() {
            return Ok(Vec::new());
        }
        let files = self.files.lock().expect("files lock").clone();
        let mut mounts = Vec::new();
        for (kind, refs) in [
            (FileKind::Secret, &c.secrets),
            (FileKind::Config, &c.configs),
        ] {
            if refs.is_empty() {
                continue;
            }
            let home = dir.join(match kind {
                FileKind::Secret => SECRETS_DIR,
                FileKind::Config => "configs",
            });
            std::fs::create_dir_all(&home).map_err(failed("creating the files directory"))?;
            if kind == FileKind::Secret && !is_mount_point(&home) {
                // Never on disk: a tmpfs only root can read, sized for what it holds.
                nix::mount::mount(
                    Some("tmpfs"),
                    &home,
                    Some("tmpfs"),
                    nix::mount::MsFlags::MS_NOSUID
                        | nix::mount::MsFlags::MS_NODEV
                        | nix::mount::MsFlags::MS_NOEXEC,
                    Some("mode=0700,size=2m"),
                )
                .map_err(|e| ExecError::Failed(format!("mounting the secrets tmpfs: {e}")))?;
            }
            for (i, r) in refs.iter().enumerate() {
                let f = files.get(&(kind, r.source.clone())).ok_or_else(|| {
                    ExecError::Rejected(format!("{kind} not found: {}", r.source))
                })?;
                let uid: u32 = r.uid.parse().map_err(|_| {
                    ExecError::Rejected(format!(
                        "{kind} {}: uid {:?} is not a number",
                        r.source, r.uid
                    ))
                })?;
                let gid: u32 = r.gid.parse().map_err(|_| {
                    ExecError::Rejected(format!(
                        "{kind} {}: gid {:?} is not a number",
                        r.source, r.gid
                    ))
                })?;
                let path = home.join(format!("{i}"));
                std::fs::write(&path, &f.spec.data).map_err(failed("writing a file"))?;
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(failed("setting a file's owner"))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(r.mode & 0o7777))
                    .map_err(failed("setting a file's mode"))?;
                mounts.push(MountInput::Bind {
                    source: path,
                    target: r.target.clone(),
                    read_only: true,
                });
            }
        }
        Ok(mounts)
    }

    /// The node's image store.
    pub fn images(&self) -> &Arc<ImageStore> {
        &self.images
    }

    /// How this node speaks to registries, with the user's credentials if any.
    fn registry_options(
        &self,
        credentials: Option<(String, String)>,
    ) -> shoal_registry::PullOptions {
        shoal_registry::PullOptions {
            insecure: self.config.insecure_registries.clone(),
            credentials,
            certs_dir: self.config.registry_certs_dir.clone(),
            mirrors: self.config.registry_mirrors.clone(),
            blocked: self.config.blocked_registries.clone(),
        }
    }

    /// Pulls `reference` from its registry into the node's store (once, when several ask at
    /// the same time).
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<(String, String)>,
        progress: impl Fn(shoal_registry::Progress) + Send + Sync,
    ) -> Result<shoal_runtime::image::ImageRecord, shoal_registry::RegistryError> {
        let lock = self
            .pulls
            .lock()
            .await
            .entry(reference.to_owned())
            .or_default()
            .clone();
        let _pulling = lock.lock().await;
        if let Ok(image) = self.images.get(reference) {
            return Ok(image.record);
        }
        let options = self.registry_options(credentials);
        tracing::info!(%reference, "pulling");
        shoal_registry::pull(self.images.clone(), reference, &options, |p| {
            tracing::debug!(progress = %p, "pull");
            progress(p);
        })
        .await
    }

    /// Pushes the image `source` to `target` (its name when `None`); returns the digest.
    pub async fn push(
        &self,
        source: &str,
        target: Option<&str>,
        credentials: Option<(String, String)>,
        progress: impl Fn(shoal_registry::Progress) + Send + Sync,
    ) -> Result<String, shoal_registry::RegistryError> {
        let options = self.registry_options(credentials);
        shoal_registry::push(
            self.images.clone(),
            source,
            target.unwrap_or(source),
            &options,
            |p| {
                tracing::debug!(progress = %p, "push");
                progress(p);
            },
        )
        .await
    }

    /// Checks credentials against a registry, as this node would use them.
    pub async fn login(
        &self,
        registry: &str,
        credentials: (String, String),
    ) -> Result<(), shoal_registry::RegistryError> {
        let options = self.registry_options(Some(credentials));
        shoal_registry::login(registry, &options).await
    }

    /// The node's volumes.
    pub fn volumes(&self) -> &VolumeStore {
        &self.volumes
    }

    /// The OCI runtime in use.
    pub fn runtime(&self) -> &OciRuntime {
        &self.config.runtime
    }

    pub(crate) fn dir(&self, id: &str) -> PathBuf {
        self.config.data_root.join("containers").join(id)
    }

    /// The directory of the task's container.
    pub fn container_dir(&self, task: &TaskId) -> PathBuf {
        self.dir(&task.to_string())
    }

    /// Every container on this node.
    pub fn containers(&self) -> Vec<ContainerMeta> {
        std::fs::read_dir(self.config.data_root.join("containers"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("meta.json")).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }

    /// Containers using the image.
    pub fn using_image(&self, image: &Digest) -> Vec<String> {
        self.containers()
            .into_iter()
            .filter(|c| &c.image_id == image)
            .map(|c| c.name)
            .collect()
    }

    /// Containers using the volume.
    pub fn using_volume(&self, volume: &str) -> Vec<String> {
        self.containers()
            .into_iter()
            .filter(|c| c.volumes.iter().any(|v| v == volume))
            .map(|c| c.name)
            .collect()
    }

    /// The log file of the task's container.
    pub fn log_file(&self, task: &TaskId) -> PathBuf {
        self.container_dir(task).join(files::LOG)
    }

    /// Makes the bundle: directory, overlay root, spec; the container joins `netns` when it is
    /// on networks. Blocking.
    fn prepare(&self, task: &Task, netns: Option<PathBuf>) -> Result<(), ExecError> {
        let c = &task.spec.container;
        let id = task.id.to_string();
        let dir = self.dir(&id);
        let image = self.images.get(&c.image).map_err(|e| match e {
            ImageError::NotFound(r) => ExecError::Rejected(format!("No such image: {r}")),
            other => ExecError::Rejected(other.to_string()),
        })?;
        let run = image.run_config();
        let mut args = spec::process_args(&c.command, &c.args, &run)
            .map_err(|e| ExecError::Rejected(e.to_string()))?;
        if c.init == Some(true) {
            args.splice(0..0, [INIT_PATH.to_owned(), "--".to_owned()]);
        }
        std::fs::create_dir_all(&dir).map_err(failed("creating the container directory"))?;
        // Recorded before anything is mounted: from here on `image rm` and `volume rm` see the
        // container as a user of its image and volumes.
        let volume_name = |i: usize, m: &shoal_api::service::Mount| {
            if m.source.is_empty() {
                format!("{}-{i}", task.id)
            } else {
                m.source.clone()
            }
        };
        let stop_signal = if !c.stop_signal.is_empty() {
            c.stop_signal.clone()
        } else if !run.stop_signal.is_empty() {
            run.stop_signal.clone()
        } else {
            "TERM".into()
        };
        let meta = ContainerMeta {
            id: id.clone(),
            task: task.id.clone(),
            name: format!("{}.{}", task.name(), task.id.short()),
            image: c.image.clone(),
            image_id: image.record.id.clone(),
            volumes: c
                .mounts
                .iter()
                .enumerate()
                .filter(|(_, m)| m.kind == MountKind::Volume)
                .map(|(i, m)| volume_name(i, m))
                .collect(),
            stop_signal: stop_signal.trim_start_matches("SIG").to_owned(),
            created: shoal_runtime::now_ms(),
        };
        let bytes = serde_json::to_vec_pretty(&meta).expect("meta serializes");
        shoal_runtime::write_atomic(&dir.join("meta.json"), &bytes)
            .map_err(failed("writing meta.json"))?;
        let overlay = Overlay::under(&dir);
        overlay
            .mount(&self.images.lower_dirs(&image))
            .map_err(failed("mounting the root filesystem"))?;
        let user_spec = if c.user.is_empty() {
            &run.user
        } else {
            &c.user
        };
        let user = shoal_runtime::user::resolve(user_spec, &overlay.merged)
            .map_err(|e| ExecError::Rejected(e.to_string()))?;
        let hostname = if c.hostname.is_empty() {
            task.id.short().to_owned()
        } else {
            c.hostname.clone()
        };
        let mut mounts = Vec::new();
        for (i, m) in c.mounts.iter().enumerate() {
            match m.kind {
                MountKind::Volume => {
                    let v = self
                        .volumes
                        .ensure(&volume_name(i, m), &BTreeMap::new())
                        .map_err(|e| ExecError::Rejected(e.to_string()))?;
                    // As Docker: a new (empty) volume starts with the image's files there.
                    let inside =
                        shoal_runtime::linux::secure_join(&overlay.merged, Path::new(&m.target))
                            .map_err(failed("resolving the volume's mount point"))?;
                    self.volumes
                        .populate(&v, &inside)
                        .map_err(failed("copying the image's files into the volume"))?;
                    mounts.push(MountInput::Bind {
                        source: v.mountpoint,
                        target: m.target.clone(),
                        read_only: m.read_only,
                    });
                }
                MountKind::Bind => {
                    let source = PathBuf::from(&m.source);
                    if !source.is_absolute() || !source.exists() {
                        return Err(ExecError::Rejected(format!(
                            "invalid mount config for type \"bind\": bind source path does not exist: {}",
                            m.source
                        )));
                    }
                    mounts.push(MountInput::Bind {
                        source,
                        target: m.target.clone(),
                        read_only: m.read_only,
                    });
                }
                MountKind::Tmpfs => mounts.push(MountInput::Tmpfs {
                    target: m.target.clone(),
                    size: m.tmpfs_size,
                }),
            }
        }
        if c.init == Some(true) {
            mounts.push(MountInput::Bind {
                source: self.config.data_root.join("shoal-init"),
                target: INIT_PATH.into(),
                read_only: true,
            });
        }
        mounts.extend(self.file_mounts(task, &dir)?);
        // The container's own /etc/hostname and /etc/hosts, as Docker gives them.
        std::fs::write(dir.join("hostname"), format!("{hostname}\n"))
            .map_err(failed("writing hostname"))?;
        // On networks, the host's name maps to the first network's address, and names resolve
        // through the resolver in the container's namespace.
        let own = task
            .networks
            .first()
            .and_then(|a| a.address.split_once('/'))
            .map_or("127.0.1.1", |(ip, _)| ip);
        std::fs::write(
            dir.join("hosts"),
            format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{hostname}\n"),
        )
        .map_err(failed("writing hosts"))?;
        let mut files = vec!["hostname", "hosts"];
        if netns.is_some() {
            std::fs::write(
                dir.join("resolv.conf"),
                format!(
                    "nameserver {}\noptions ndots:0\n",
                    shoal_overlay_net::dns::RESOLVER
                ),
            )
            .map_err(failed("writing resolv.conf"))?;
            files.push("resolv.conf");
        }
        for f in files {
            mounts.push(MountInput::Bind {
                source: dir.join(f),
                target: format!("/etc/{f}"),
                read_only: false,
            });
        }
        let limits = &task.spec.resources.limits;
        let nonzero = |n: u64| (n > 0).then_some(n);
        let input = SpecInput {
            rootfs: overlay.merged.clone(),
            read_only_rootfs: c.read_only,
            env: spec::process_env(&c.env, &run, &hostname, &user.home),
            args,
            cwd: if !c.dir.is_empty() {
                c.dir.clone()
            } else if !run.working_dir.is_empty() {
                run.working_dir.clone()
            } else {
                "/".into()
            },
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.additional_gids,
            hostname,
            mounts,
            memory: nonzero(limits.memory_bytes),
            nano_cpus: nonzero(limits.nano_cpus),
            pids: nonzero(limits.pids).map(|p| p as i64),
            cgroups_path: format!("{}/{id}", self.config.cgroup_parent.trim_end_matches('/')),
            netns_path: netns,
            cap_add: c.cap_add.clone(),
            cap_drop: c.cap_drop.clone(),
            privileged: c.privileged,
            seccomp: c.seccomp.clone(),
            node_capabilities: c
                .privileged
                .then(shoal_runtime::spec::node_capabilities)
                .flatten(),
            // As Docker's --privileged: every device of the host.
            devices: if c.privileged {
                shoal_runtime::devices::host_devices(Path::new("/dev"))
            } else {
                Vec::new()
            },
        };
        let oci = spec::build(&input).map_err(|e| ExecError::Rejected(e.to_string()))?;
        oci.save(dir.join("config.json"))
            .map_err(|e| ExecError::Failed(format!("writing config.json: {e}")))?;
        Ok(())
    }

    /// Removes what [`prepare`](Self::prepare) made (and the runtime's state, if any), and the
    /// container's network attachments. Blocking.
    fn cleanup(&self, id: &str) -> Result<(), ExecError> {
        let dir = self.dir(id);
        let anonymous: Vec<String> = self
            .meta(id)
            .map(|m| m.volumes)
            .unwrap_or_default()
            .into_iter()
            .filter(|v| v.starts_with(&format!("{id}-")))
            .collect();
        if let Err(e) = self.config.runtime.delete(id, true) {
            if !e.message.contains("does not exist") && !e.message.contains("not exist") {
                tracing::debug!(container = id, error = %e, "runtime delete");
            }
        }
        Overlay::under(&dir)
            .unmount()
            .map_err(failed("unmounting the root filesystem"))?;
        unmount_secrets(&dir).map_err(failed("unmounting the secrets"))?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed("removing the container directory")(e)),
        }
        if let Ok(task) = id.parse::<TaskId>() {
            if let Err(e) = self.network.detach(&task) {
                tracing::warn!(container = id, error = %e, "network attachment not removed");
            }
        }
        // Anonymous volumes go with their container, as Swarm removes its tasks' containers.
        for v in anonymous {
            if let Err(e) = self.volumes.remove(&v, &[]) {
                tracing::warn!(container = id, volume = %v, error = %e, "anonymous volume not removed");
            }
        }
        Ok(())
    }

    fn meta(&self, id: &str) -> Option<ContainerMeta> {
        std::fs::read(self.dir(id).join("meta.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// The shim's pid, if that process still is this container's shim.
    fn live_shim(&self, id: &str) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.dir(id).join(files::SHIM_PID))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let needle = id.as_bytes();
        let ours = cmdline.windows(needle.len()).any(|w| w == needle);
        (ours && shoal_runtime::linux::live_start_time(pid).is_some()).then_some(pid)
    }

    /// The exit of a container whose shim is gone; records one if the shim died without.
    fn settle(&self, id: &str) -> ExitRecord {
        if let Some(e) = read_exit(&self.dir(id)) {
            return e;
        }
        let record = ExitRecord {
            code: 255,
            signal: None,
            oom_killed: false,
            finished: shoal_runtime::now_ms(),
            error: Some("the container's monitor ended without recording its exit".into()),
        };
        let bytes = serde_json::to_vec(&record).expect("serializes");
        let _ = shoal_runtime::write_atomic(&self.dir(id).join(files::EXIT), &bytes);
        record
    }

    async fn spawn_shim(&self, id: &str, logging: &[String]) -> Result<(), ExecError> {
        let mut child = tokio::process::Command::from(shoal_runtime::shim::command(
            &self.config.shim,
            &self.config.runtime,
            &self.dir(id),
            id,
            logging,
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            ExecError::Failed(format!(
                "cannot run the shim {}: {e}",
                self.config.shim.display()
            ))
        })?;
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        let read = tokio::time::timeout(
            SHIM_HANDSHAKE,
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await;
        match read {
            Ok(r) => {
                r.map_err(|e| ExecError::Failed(format!("reading the shim: {e}")))?;
            }
            Err(_) => {
                let _ = child.start_kill();
                return Err(ExecError::Failed(format!(
                    "the shim did not report within {SHIM_HANDSHAKE:?}"
                )));
            }
        }
        // The shim runs on after reporting; tokio reaps it when it ends.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let line = line.trim();
        if line.starts_with("ok ") {
            Ok(())
        } else {
            let msg = line.strip_prefix("error ").unwrap_or(line);
            let msg = if msg.is_empty() {
                "the shim ended without a word"
            } else {
                msg
            };
            Err(ExecError::Failed(format!(
                "starting container failed: {msg}"
            )))
        }
    }
}

/// The shim's options for the task's logging driver: json-file's `max-size` and `max-file`,
/// or none. Other drivers log to json-file (the stack loader warns).
fn shim_log_args(task: &Task) -> Vec<String> {
    let options = match &task.spec.log_driver {
        Some(d) if d.name == "none" => return vec!["--no-log".into()],
        Some(d) => d.options.clone(),
        None => BTreeMap::new(),
    };
    // Kept in bounds by default (docker's `local` driver's defaults), option by option.
    let size = options
        .get("max-size")
        .and_then(|s| shoal_api::units::parse_bytes(s).ok())
        .unwrap_or(DEFAULT_LOG_MAX_SIZE);
    let files = options
        .get("max-file")
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(DEFAULT_LOG_MAX_FILE);
    let mut out = vec![
        "--log-max-size".to_owned(),
        size.to_string(),
        "--log-max-file".to_owned(),
        files.to_string(),
    ];
    if options.get("compress").is_none_or(|c| c == "true") {
        out.push("--log-compress".into());
    }
    out
}

/// A container's log rotates at this size unless its `logging.options.max-size` says.
pub const DEFAULT_LOG_MAX_SIZE: u64 = 20 << 20;
/// Log files kept (the current one included) unless `max-file` says.
pub const DEFAULT_LOG_MAX_FILE: u32 = 5;

/// A pidfd for `pid`: readable once the process ends.
fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Executor for ContainerExecutor {
    fn name(&self) -> &'static str {
        "container"
    }

    fn describe(&self) -> String {
        format!("container ({})", self.config.runtime.name)
    }

    fn tasks(&self) -> Vec<TaskId> {
        self.containers().into_iter().map(|c| c.task).collect()
    }

    fn observe(&self, task: &TaskId) -> Observed {
        let id = task.to_string();
        if self.meta(&id).is_none() {
            return Observed::Absent;
        }
        if let Some(e) = read_exit(&self.dir(&id)) {
            return Observed::Exited {
                container: id,
                code: e.code,
            };
        }
        if self.live_shim(&id).is_some() {
            return Observed::Running { container: id };
        }
        if !self.dir(&id).join(files::SHIM_PID).exists() {
            // Prepared but never started (the daemon stopped in between): start afresh.
            return Observed::Absent;
        }
        let e = self.settle(&id);
        Observed::Exited {
            container: id,
            code: e.code,
        }
    }

    fn start(&self, task: &Task) -> BoxFuture<'static, Result<String, ExecError>> {
        let this = self.clone();
        let task = task.clone();
        Box::pin(async move {
            let id = task.id.to_string();
            // An image the node lacks is pulled where the task lands, from its registry (Docker
            // Hub's through the node's mirrors first).
            let image = task.spec.container.image.clone();
            if this.images.get(&image).is_err() {
                // Credentials sent with the service (`--with-registry-auth`) for its registry.
                let credentials = task.spec.container.registry_auth.as_ref().and_then(|a| {
                    let r = shoal_registry::reference::Reference::parse(&image).ok()?;
                    (r.registry == a.server)
                        .then(|| (a.username.clone(), a.password.clone().unwrap_or_default()))
                });
                if let Err(e) = this.pull(&image, credentials, |_| {}).await {
                    return Err(ExecError::Rejected(format!("pulling {image}: {e}")));
                }
            }
            let prep = {
                let this = this.clone();
                let task = task.clone();
                tokio::task::spawn_blocking(move || {
                    // Leftovers of an attempt the daemon did not finish.
                    this.cleanup(&task.id.to_string())?;
                    let netns = this.network.attach(&task).map_err(|e| {
                        ExecError::Failed(format!("attaching to the task's networks: {e}"))
                    })?;
                    this.prepare(&task, netns)
                })
                .await
                .map_err(|e| ExecError::Failed(format!("preparing: {e}")))?
            };
            let result = match prep {
                Ok(()) => this.spawn_shim(&id, &shim_log_args(&task)).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    tracing::info!(task_id = %task.id, runtime = %this.config.runtime.name, "container started");
                    Ok(id)
                }
                Err(e) => {
                    let this2 = this.clone();
                    let id2 = id.clone();
                    let _ = tokio::task::spawn_blocking(move || this2.cleanup(&id2)).await;
                    Err(e)
                }
            }
        })
    }

    fn wait(&self, container: &str) -> BoxFuture<'static, Result<i32, ExecError>> {
        let this = self.clone();
        let id = container.to_owned();
        Box::pin(async move {
            loop {
                if let Some(e) = read_exit(&this.dir(&id)) {
                    return Ok(e.code);
                }
                if this.meta(&id).is_none() {
                    return Err(ExecError::NotFound(id));
                }
                let Some(pid) = this.live_shim(&id) else {
                    return Ok(this.settle(&id).code);
                };
                match pidfd_open(pid) {
                    Ok(fd) => {
                        // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open and
                        // unchanged until it is dropped.
                        let afd = unsafe {
                            tokio::io::unix::AsyncFd::register_with_interest(
                                fd,
                                tokio::io::Interest::READABLE,
                            )
                        }
                        .map_err(|e| ExecError::Failed(format!("watching the shim: {e}")))?;
                        let _ = afd.readable().await;
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                }
            }
        })
    }

    fn stop(&self, container: &str, grace: Duration) -> BoxFuture<'static, Result<(), ExecError>> {
        let this = self.clone();
        let id = container.to_owned();
        Box::pin(async move {
            if read_exit(&this.dir(&id)).is_some() || this.live_shim(&id).is_none() {
                return Ok(());
            }
            let signal = this
                .meta(&id)
                .map(|m| m.stop_signal)
                .unwrap_or_else(|| "TERM".into());
            let rt = this.config.runtime.clone();
            let id2 = id.clone();
            let _ = tokio::task::spawn_blocking(move || rt.kill(&id2, &signal)).await;
            let waited = tokio::time::timeout(grace.0, this.wait(&id)).await;
            if waited.is_err() {
                tracing::info!(container = %id, grace = %grace, "stop grace period over: SIGKILL");
                let rt = this.config.runtime.clone();
                let id2 = id.clone();
                let _ = tokio::task::spawn_blocking(move || rt.kill(&id2, "KILL")).await;
                // SIGKILL cannot be refused, but a process stuck in the kernel (D state) can
                // outlive it: give up after a bound, saying so, rather than hang the task.
                match tokio::time::timeout(AFTER_KILL, this.wait(&id)).await {
                    Ok(r) => {
                        r?;
                    }
                    Err(_) => {
                        return Err(ExecError::Failed(format!(
                            "container {id} did not exit within {AFTER_KILL:?} of SIGKILL"
                        )))
                    }
                }
            }
            Ok(())
        })
    }

    fn remove(&self, container: &str) -> Result<(), ExecError> {
        self.cleanup(container)
    }

    fn log_path(&self, task: &TaskId) -> Option<PathBuf> {
        Some(self.log_file(task))
    }

    fn network(&self) -> Option<Arc<HostNetwork>> {
        Some(self.network.clone())
    }

    fn exit_reason(&self, container: &str) -> Option<String> {
        let e = read_exit(&self.dir(container))?;
        if e.oom_killed {
            Some("OOMKilled: the container exceeded its memory limit".into())
        } else {
            e.error
        }
    }

    fn health_policy(&self, task: &Task) -> Option<crate::health::Policy> {
        let image = self
            .images
            .get(&task.spec.container.image)
            .ok()
            .and_then(|i| i.run_config().healthcheck);
        crate::health::policy(task.spec.container.healthcheck.as_ref(), image.as_ref())
    }

    fn health_check(
        &self,
        container: &str,
        policy: &crate::health::Policy,
    ) -> BoxFuture<'static, (bool, String)> {
        let this = self.clone();
        let container = container.to_owned();
        let policy = policy.clone();
        Box::pin(async move { this.run_health_check(&container, &policy).await })
    }

    fn set_files(&self, files: &[FileObject], full: bool) {
        ContainerExecutor::set_files(self, files, full);
    }

    fn record_health(&self, container: &str, health: shoal_api::task::Health, output: &str) {
        let mut all = self.health.lock().expect("health lock");
        all.retain(|id, _| self.dir(id).exists());
        all.insert(container.to_owned(), (health, output.to_owned()));
    }
}

/// Where a container's secrets live (a tmpfs), in its directory.
const SECRETS_DIR: &str = "secrets";

fn is_mount_point(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m == want)
}

/// Unmounts a container's secrets tmpfs, if it has one.
fn unmount_secrets(dir: &Path) -> std::io::Result<()> {
    let home = dir.join(SECRETS_DIR);
    if is_mount_point(&home) {
        nix::mount::umount2(&home, nix::mount::MntFlags::MNT_DETACH)
            .map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// Where a daemon finds `shoal-runtime`: `$SHOAL_RUNTIME_BIN`, or beside its own binary.
pub fn default_shim_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SHOAL_RUNTIME_BIN") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("shoal-runtime")))
        .unwrap_or_else(|| Path::new("shoal-runtime").to_owned())
}

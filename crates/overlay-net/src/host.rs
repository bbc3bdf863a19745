//! [`HostNetwork`]: one host's part of the overlay networks, driven by the agent. It attaches a
//! container before it starts (namespace, veth, address, resolver, VIP rules), detaches it once
//! it is removed, keeps forwarding entries, DNS and VIP rules in step with the network views
//! the manager sends, and removes a network's devices when its last local task leaves.
//!
//! Every operation is blocking (netlink runs on threads of its own, one per namespace) and
//! serialized by one lock; callers on an async runtime use `spawn_blocking`.

use crate::dns::{self, Lookup};
use crate::link::{self, Remote};
use crate::ports;
use crate::{lb, netns, NetError};
use shoal_api::network::{mac_for, split_address, NetworkView, PortPlan};
use shoal_api::task::Task;
use shoal_api::{NetworkId, TaskId};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

type Views = Arc<RwLock<BTreeMap<NetworkId, NetworkView>>>;

/// A container attached to networks here.
#[derive(Debug)]
struct Attached {
    /// Its networks, in attachment order (eth0, eth1, ...).
    networks: Vec<NetworkId>,
    /// Its resolver.
    dns: tokio::task::AbortHandle,
    /// The VIP rules last loaded (`None`: to be loaded at the next update).
    rules: Option<crate::nft::Table>,
    /// Its network namespace.
    netns: PathBuf,
    /// Its address on the host's gateway bridge (none when all its networks are internal).
    gw: Option<Ipv4Addr>,
}

#[derive(Debug, Default)]
struct State {
    attached: BTreeMap<TaskId, Attached>,
    /// Attachments being made (outside the lock): their networks and reserved gateway
    /// address, so that pruning spares their devices and no address is given twice.
    pending: BTreeMap<TaskId, (Vec<NetworkId>, Option<Ipv4Addr>)>,
    /// The cluster's published ports, from the last assignment that carried them.
    ports: PortPlan,
    /// The host rules last loaded (`None`: never touched; `Some(None)`: removed).
    host_rules: Option<Option<crate::nft::Table>>,
}

/// One host's overlay networking.
#[derive(Debug)]
pub struct HostNetwork {
    /// Where containers' namespaces are bound (`<data-root>/netns`).
    dir: PathBuf,
    /// This host's underlay address (known once the node joined a cluster).
    local: RwLock<Ipv4Addr>,
    views: Views,
    state: Arc<Mutex<State>>,
    /// Held while devices of the host's namespace are made or pruned (two attachments to one
    /// new network must not both create its bridge).
    devices: Mutex<()>,
    /// Wakes the VIP refresher (set: the views changed since its last pass).
    refresh: Arc<(Mutex<bool>, std::sync::Condvar)>,
    refresher: std::sync::Once,
    /// nf_tables in the host's namespace, for its port rules (opened at first use).
    host_nft: std::sync::OnceLock<crate::nft::Conn>,
    /// The runtime resolvers run on (the caller's, or the one a blocking call came from).
    runtime: Option<tokio::runtime::Handle>,
    upstream: Vec<std::net::SocketAddr>,
}

/// Names a container resolves: the services on its networks, in attachment order.
struct ContainerLookup {
    views: Views,
    networks: Vec<NetworkId>,
}

impl Lookup for ContainerLookup {
    fn lookup(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        let views = self.views.read().expect("views lock");
        let (tasks_of, name) = match name.strip_prefix("tasks.") {
            Some(n) => (true, n),
            None => (false, name),
        };
        for id in &self.networks {
            let Some(v) = views.get(id) else { continue };
            let Some(s) = v
                .services
                .iter()
                .find(|s| s.names.iter().any(|n| n == name))
            else {
                continue;
            };
            if let (false, Some(vip)) = (tasks_of, s.vip) {
                return Some(vec![vip]);
            }
            return Some(running_addresses(v, &s.service_id));
        }
        None
    }
}

fn host_ns() -> &'static Path {
    Path::new("/proc/self/ns/net")
}

impl HostNetwork {
    /// Networking for the host whose underlay address is `local`, keeping namespaces under
    /// `dir`. Resolvers run on the current tokio runtime, or on the one a later call comes
    /// from (`spawn_blocking` threads belong to theirs).
    pub fn new(dir: &Path, local: Ipv4Addr) -> HostNetwork {
        HostNetwork {
            dir: dir.to_owned(),
            local: RwLock::new(local),
            views: Arc::default(),
            state: Arc::default(),
            devices: Mutex::default(),
            refresh: Arc::default(),
            refresher: std::sync::Once::new(),
            host_nft: std::sync::OnceLock::new(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            upstream: dns::host_resolvers(),
        }
    }

    /// Sets this host's underlay address (VXLAN's source, and how remote endpoints are told
    /// from local ones).
    pub fn set_local(&self, addr: Ipv4Addr) {
        *self.local.write().expect("local lock") = addr;
    }

    fn local(&self) -> Ipv4Addr {
        *self.local.read().expect("local lock")
    }

    /// Where the namespace of `task`'s container is bound.
    pub fn netns_path(&self, task: &TaskId) -> PathBuf {
        self.dir.join(task.as_str())
    }

    /// Attaches `task`'s container to its networks before it starts; returns the namespace it
    /// must join, or `None` for a task on no network (it keeps a namespace of its own with
    /// loopback only).
    pub fn attach(&self, task: &Task) -> Result<Option<PathBuf>, NetError> {
        if task.networks.is_empty() {
            return Ok(None);
        }
        let networks: Vec<NetworkId> = task.networks.iter().map(|a| a.network_id.clone()).collect();
        let outside = {
            let views = self.views.read().expect("views lock");
            networks
                .iter()
                .any(|id| views.get(id).is_some_and(|v| !v.network.spec.internal))
        };
        // Under the lock only to reserve: the namespace, links and rules are made outside it,
        // so containers starting together are attached together.
        let gw = {
            let mut state = self.state.lock().expect("network state lock");
            if let Some(old) = state.attached.remove(&task.id) {
                old.dns.abort();
            }
            let used: BTreeSet<Ipv4Addr> = state
                .attached
                .values()
                .filter_map(|a| a.gw)
                .chain(state.pending.values().filter_map(|p| p.1))
                .collect();
            let gw = if outside {
                Some(free_gateway_address(&used)?)
            } else {
                None
            };
            state.pending.insert(task.id.clone(), (networks, gw));
            gw
        };
        let path = self.netns_path(&task.id);
        // A half-made attachment of an earlier attempt goes first.
        let result = self
            .remove_veths(&task.id, task.networks.len())
            .and_then(|()| netns::remove(&path))
            .and_then(|()| self.attach_inner(task, &path, gw));
        let mut state = self.state.lock().expect("network state lock");
        state.pending.remove(&task.id);
        match result {
            Ok(a) => {
                state.attached.insert(task.id.clone(), a);
                drop(state);
                self.sync_remotes()?;
                self.sync_host_rules()?;
                Ok(Some(path))
            }
            Err(e) => {
                drop(state);
                let _ = self.remove_veths(&task.id, task.networks.len());
                let _ = netns::remove(&path);
                let _ = self.prune();
                Err(e)
            }
        }
    }

    fn attach_inner(
        &self,
        task: &Task,
        path: &Path,
        gw: Option<Ipv4Addr>,
    ) -> Result<Attached, NetError> {
        netns::create(path)?;
        let mut networks = Vec::new();
        for (i, a) in task.networks.iter().enumerate() {
            let vni = self
                .views
                .read()
                .expect("views lock")
                .get(&a.network_id)
                .map(|v| v.network.vni)
                .ok_or_else(|| NetError::Netlink {
                    what: format!("attaching to network {}", a.network),
                    message: "the manager has not described that network to this node".into(),
                })?;
            let (ip, prefix) = split_address(&a.address).ok_or_else(|| NetError::Netlink {
                what: format!("attaching to network {}", a.network),
                message: format!("bad address {:?}", a.address),
            })?;
            let host = link::veth_name(task.id.as_str(), i);
            let peer = format!("shp{}", &host[3..]);
            let local = self.local();
            let ns_file = std::fs::File::open(path)
                .map_err(NetError::io(format!("opening {}", path.display())))?;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&ns_file);
            let (host2, peer2) = (host.clone(), peer.clone());
            // Under the lock only the network's own devices: attachments run side by side.
            let devices = self.devices.lock().expect("devices lock");
            let (br, mtu) = netns::run_in(host_ns(), move |h| async move {
                let underlay = link::underlay(&h, local).await?;
                let (br, _) = link::ensure_network(&h, vni, local, underlay).await?;
                Ok((br, link::overlay_mtu(underlay.1)))
            })?;
            drop(devices);
            netns::run_in(host_ns(), move |h| async move {
                link::add_veth(&h, &host2, &peer2, (br, false), mtu, fd).await
            })?;
            drop(ns_file);
            let name = format!("eth{i}");
            netns::run_in(path, move |h| async move {
                link::configure_inside(&h, &peer, &name, mac_for(ip), mtu, (ip, prefix)).await
            })?;
            tracing::debug!(task_id = %task.id, network = %a.network, %ip, mtu, "attached");
            networks.push(a.network_id.clone());
        }
        if let Some(addr) = gw {
            self.attach_gateway(task, path, networks.len(), addr)?;
        }
        let dns = self.serve_dns(path, &networks)?;
        let rules = lb::ruleset(&self.vips(&networks));
        crate::nft::load(path, &rules)?;
        Ok(Attached {
            netns: path.to_owned(),
            networks,
            dns,
            rules: Some(rules),
            gw,
        })
    }

    /// Gives the container an interface on the host's gateway bridge, `eth<n>` after its
    /// overlay ones, with its default route through it.
    fn attach_gateway(
        &self,
        task: &Task,
        path: &Path,
        n: usize,
        addr: Ipv4Addr,
    ) -> Result<(), NetError> {
        let prefix = ports::GW_SUBNET.1;
        let host = link::gw_veth_name(task.id.as_str());
        let peer = format!("shq{}", &host[3..]);
        let local = self.local();
        let ns_file = std::fs::File::open(path)
            .map_err(NetError::io(format!("opening {}", path.display())))?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&ns_file);
        let (host2, peer2) = (host.clone(), peer.clone());
        let devices = self.devices.lock().expect("devices lock");
        let (br, mtu) = netns::run_in(host_ns(), move |h| async move {
            let (_, mtu) = link::underlay(&h, local).await?;
            let br = link::ensure_bridge_with_address(&h, ports::GW_BRIDGE, ports::GW_ADDR, prefix)
                .await?;
            Ok((br, mtu.min(9000)))
        })?;
        drop(devices);
        // Containers never meet on the gateway bridge, only on their overlays.
        netns::run_in(host_ns(), move |h| async move {
            link::add_veth(&h, &host2, &peer2, (br, true), mtu, fd).await
        })?;
        drop(ns_file);
        let name = format!("eth{n}");
        netns::run_in(path, move |h| async move {
            link::configure_inside(&h, &peer, &name, mac_for(addr), mtu, (addr, prefix)).await?;
            link::default_route(&h, &name, ports::GW_ADDR).await
        })
    }

    /// Takes the cluster's published ports from an assignment message.
    pub fn update_ports(&self, plan: PortPlan) -> Result<(), NetError> {
        self.state.lock().expect("network state lock").ports = plan;
        self.sync_host_rules()
    }

    /// Loads the host's rules (published ports, container egress) when they changed. A host
    /// that never had a container on a network is not touched.
    fn sync_host_rules(&self) -> Result<(), NetError> {
        let mut state = self.state.lock().expect("network state lock");
        let local: BTreeMap<TaskId, Ipv4Addr> = state
            .attached
            .iter()
            .filter_map(|(id, a)| a.gw.map(|g| (id.clone(), g)))
            .collect();
        let idle = local.is_empty() && state.ports.ports.is_empty();
        let rules = (!idle).then(|| ports::ruleset(&state.ports, &local, self.local()));
        if state.host_rules.as_ref() == Some(&rules) || (idle && state.host_rules.is_none()) {
            return Ok(());
        }
        let conn = match self.host_nft.get() {
            Some(c) => c,
            None => {
                let c = crate::nft::Conn::open_in(host_ns())?;
                self.host_nft.get_or_init(|| c)
            }
        };
        ports::apply(conn, rules.as_ref())?;
        state.host_rules = Some(rules);
        Ok(())
    }

    /// Opens the resolver's socket on 127.0.0.11:53 inside the namespace at `path` and serves
    /// it, answering with the services of `networks`.
    fn serve_dns(
        &self,
        path: &Path,
        networks: &[NetworkId],
    ) -> Result<tokio::task::AbortHandle, NetError> {
        let sock = netns::blocking_in(path, || {
            let s = std::net::UdpSocket::bind((dns::RESOLVER, 53))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })?;
        let lookup = Arc::new(ContainerLookup {
            views: self.views.clone(),
            networks: networks.to_vec(),
        });
        let upstream = self.upstream.clone();
        let rt = self
            .runtime
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok())
            .ok_or_else(|| {
                NetError::io("serving DNS")(std::io::Error::other("no async runtime"))
            })?;
        let _guard = rt.enter();
        let sock = tokio::net::UdpSocket::from_std(sock)
            .map_err(NetError::io("registering the resolver socket"))?;
        Ok(rt.spawn(dns::serve(sock, lookup, upstream)).abort_handle())
    }

    /// Takes back a container that outlived a restart of the agent: its namespace and veths
    /// are there; its resolver is opened again.
    pub fn resume(&self, task: &Task) -> Result<(), NetError> {
        if task.networks.is_empty() {
            return Ok(());
        }
        let path = self.netns_path(&task.id);
        let mut state = self.state.lock().expect("network state lock");
        if state.attached.contains_key(&task.id) || !netns::is_mounted(&path) {
            return Ok(());
        }
        let networks: Vec<NetworkId> = task.networks.iter().map(|a| a.network_id.clone()).collect();
        let gw_link = format!("eth{}", networks.len());
        let gw = netns::run_in(&path, move |h| async move {
            link::address_of(&h, &gw_link).await
        })?;
        let dns = self.serve_dns(&path, &networks)?;
        tracing::info!(task_id = %task.id, "resumed the networking of a running container");
        state.attached.insert(
            task.id.clone(),
            Attached {
                netns: path,
                networks,
                dns,
                // Loaded again at the next update.
                rules: None,
                gw,
            },
        );
        drop(state);
        self.sync_host_rules()
    }

    /// Detaches `task`'s container once it is gone: its veths, namespace and resolver; and the
    /// devices of networks it was the last local task of.
    pub fn detach(&self, task: &TaskId) -> Result<(), NetError> {
        let path = self.netns_path(task);
        let mut state = self.state.lock().expect("network state lock");
        let attached = state.attached.remove(task);
        if attached.is_none() && !path.exists() {
            return Ok(());
        }
        let count = attached.as_ref().map_or(8, |a| a.networks.len().max(1));
        if let Some(a) = attached {
            a.dns.abort();
        }
        self.remove_veths(task, count)?;
        netns::remove(&path)?;
        drop(state);
        self.sync_host_rules()?;
        self.prune()
    }

    fn remove_veths(&self, task: &TaskId, count: usize) -> Result<(), NetError> {
        let names: Vec<String> = (0..count)
            .map(|i| link::veth_name(task.as_str(), i))
            .chain([link::gw_veth_name(task.as_str())])
            .collect();
        netns::run_in(host_ns(), move |h| async move {
            for n in names {
                link::delete(&h, &n).await?;
            }
            Ok(())
        })
    }

    /// Takes the network views from an assignment message: forwarding entries and VIP rules
    /// follow them.
    pub fn update(&self, views: Vec<NetworkView>) -> Result<(), NetError> {
        *self.views.write().expect("views lock") = views
            .into_iter()
            .map(|v| (v.network.id.clone(), v))
            .collect();
        self.sync_remotes()?;
        // The containers' VIP rules follow on the refresher's thread: one load per container
        // whose backends changed, which must not hold up the tasks this message starts. Changes
        // arriving during a pass are taken together by the next.
        self.refresher.call_once(|| {
            let (state, views, refresh) =
                (self.state.clone(), self.views.clone(), self.refresh.clone());
            std::thread::Builder::new()
                .name("vip-refresher".into())
                .spawn(move || refresh_vips(&state, &views, &refresh))
                .expect("spawning the VIP refresher");
        });
        let (dirty, wake) = &*self.refresh;
        *dirty.lock().expect("refresh lock") = true;
        wake.notify_one();
        Ok(())
    }

    /// VIP → running task addresses, for the services on `networks`.
    fn vips(&self, networks: &[NetworkId]) -> BTreeMap<Ipv4Addr, Vec<Ipv4Addr>> {
        vips(&self.views, networks)
    }

    /// Networks with local containers, by VNI.
    fn local_networks(&self) -> BTreeMap<u32, NetworkId> {
        let state = self.state.lock().expect("network state lock");
        let views = self.views.read().expect("views lock");
        state
            .attached
            .values()
            .flat_map(|a| a.networks.iter())
            .chain(state.pending.values().flat_map(|p| p.0.iter()))
            .filter_map(|id| views.get(id).map(|v| (v.network.vni, id.clone())))
            .collect()
    }

    /// Makes every local network's VXLAN device know exactly its remote endpoints.
    fn sync_remotes(&self) -> Result<(), NetError> {
        let here = self.local();
        let local = self.local_networks();
        let plans: Vec<(u32, Vec<Remote>)> = {
            let views = self.views.read().expect("views lock");
            local
                .iter()
                .filter_map(|(vni, id)| {
                    let local = here;
                    let v = views.get(id)?;
                    let remotes = v
                        .endpoints
                        .iter()
                        .filter(|e| e.node_addr != local)
                        .map(|e| Remote {
                            addr: e.addr,
                            mac: mac_for(e.addr),
                            host: e.node_addr,
                        })
                        .collect();
                    Some((*vni, remotes))
                })
                .collect()
        };
        if plans.is_empty() {
            return Ok(());
        }
        netns::run_in(host_ns(), move |h| async move {
            for (vni, remotes) in plans {
                if let Some(vx) = link::index(&h, &link::vxlan_name(vni)).await? {
                    link::sync_remotes(&h, vx, &remotes).await?;
                }
            }
            Ok(())
        })
    }

    /// Removes the devices of networks with no local container, and namespaces of containers
    /// this host no longer has (`keep`: tasks whose containers exist).
    pub fn sweep(&self, keep: &BTreeSet<TaskId>) -> Result<(), NetError> {
        // Attachments being made are never swept.
        let mut keep = keep.clone();
        keep.extend(
            self.state
                .lock()
                .expect("network state lock")
                .pending
                .keys()
                .cloned(),
        );
        let keep = &keep;
        let attached: Vec<TaskId> = self
            .state
            .lock()
            .expect("network state lock")
            .attached
            .keys()
            .cloned()
            .collect();
        for id in attached.iter().filter(|id| !keep.contains(*id)) {
            self.detach(id)?;
        }
        for path in netns::list(&self.dir) {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Ok(id) = name.parse::<TaskId>() else {
                continue;
            };
            if !keep.contains(&id) {
                self.detach(&id)?;
            }
        }
        self.prune()
    }

    /// Deletes bridges and VXLAN devices of networks without a local container, and veths of
    /// containers not attached.
    fn prune(&self) -> Result<(), NetError> {
        // What is needed is read under the lock: an attachment reserves its devices (as
        // pending) before it takes the lock to make them.
        let _devices = self.devices.lock().expect("devices lock");
        let needed: BTreeSet<u32> = self.local_networks().into_keys().collect();
        let (attached, gw_used): (BTreeSet<String>, bool) = {
            let state = self.state.lock().expect("network state lock");
            let names = state
                .attached
                .iter()
                .map(|(id, a)| (id, a.networks.len(), a.gw.is_some()))
                .chain(
                    state
                        .pending
                        .iter()
                        .map(|(id, p)| (id, p.0.len(), p.1.is_some())),
                )
                .flat_map(|(id, n, gw)| {
                    (0..n)
                        .map(move |i| link::veth_name(id.as_str(), i))
                        .chain(gw.then(|| link::gw_veth_name(id.as_str())))
                })
                .collect();
            let gw_used = state.attached.values().any(|a| a.gw.is_some())
                || state.pending.values().any(|p| p.1.is_some());
            (names, gw_used)
        };
        netns::run_in(host_ns(), move |h| async move {
            for (name, _) in link::links(&h).await? {
                let vni = name
                    .strip_prefix("shb")
                    .or_else(|| name.strip_prefix("shv"))
                    .and_then(|v| v.parse::<u32>().ok());
                let stale = match vni {
                    Some(vni) => !needed.contains(&vni),
                    None if name == ports::GW_BRIDGE => !gw_used,
                    None => {
                        (name.starts_with("shc") || name.starts_with("shd"))
                            && !attached.contains(&name)
                    }
                };
                if stale {
                    tracing::debug!(link = %name, "removing an unused network device");
                    link::delete(&h, &name).await?;
                }
            }
            Ok(())
        })
    }
}

/// The lowest address of the gateway subnet not in `used`.
fn free_gateway_address(used: &BTreeSet<Ipv4Addr>) -> Result<Ipv4Addr, NetError> {
    let (base, prefix) = ports::GW_SUBNET;
    let size = 1u32 << (32 - prefix);
    (2..size - 1)
        .map(|i| Ipv4Addr::from(u32::from(base) + i))
        .find(|a| !used.contains(a))
        .ok_or_else(|| NetError::Netlink {
            what: "the gateway bridge".into(),
            message: "no free address".into(),
        })
}

/// The addresses of `service`'s running tasks on the network of `view`.
fn running_addresses(view: &NetworkView, service: &shoal_api::ServiceId) -> Vec<Ipv4Addr> {
    view.endpoints
        .iter()
        .filter(|e| e.running && e.service_id == *service)
        .map(|e| e.addr)
        .collect()
}

/// VIP → running task addresses, for the services on `networks`.
fn vips(views: &Views, networks: &[NetworkId]) -> BTreeMap<Ipv4Addr, Vec<Ipv4Addr>> {
    let views = views.read().expect("views lock");
    let mut out = BTreeMap::new();
    for id in networks {
        let Some(v) = views.get(id) else { continue };
        for s in &v.services {
            let Some(vip) = s.vip else { continue };
            out.insert(vip, running_addresses(v, &s.service_id));
        }
    }
    out
}

/// The VIP refresher: whenever the views changed, loads new rules into every attached
/// container whose VIP backends changed. The state lock is not held while the rules load, so
/// attaching and detaching go on meanwhile.
fn refresh_vips(state: &Mutex<State>, views: &Views, refresh: &(Mutex<bool>, std::sync::Condvar)) {
    let (dirty, wake) = refresh;
    loop {
        {
            let mut d = dirty.lock().expect("refresh lock");
            while !*d {
                d = wake.wait(d).expect("refresh lock");
            }
            *d = false;
        }
        let work: Vec<(TaskId, PathBuf, crate::nft::Table)> = {
            let state = state.lock().expect("network state lock");
            state
                .attached
                .iter()
                .filter_map(|(id, a)| {
                    let rules = lb::ruleset(&vips(views, &a.networks));
                    (a.rules.as_ref() != Some(&rules)).then(|| (id.clone(), a.netns.clone(), rules))
                })
                .collect()
        };
        for (id, netns, rules) in work {
            // A socket for this load only: one kept per container would double the
            // descriptors a host holds per container.
            match crate::nft::load(&netns, &rules) {
                Ok(()) => {
                    if let Some(a) = state
                        .lock()
                        .expect("network state lock")
                        .attached
                        .get_mut(&id)
                    {
                        a.rules = Some(rules);
                    }
                }
                // A container detached meanwhile has no namespace left to load into.
                Err(e) => tracing::debug!(task_id = %id, error = %e, "VIP rules not loaded"),
            }
        }
    }
}

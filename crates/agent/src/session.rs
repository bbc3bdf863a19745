//! The agent's session with the leader: register (with the join token; the node id is kept in
//! the state directory so a restarted agent is the same node), heartbeat, follow assignments
//! (the full set, then changes), run one worker per task, and report statuses in batches.
//! When the session breaks (leader restarted, network), the agent registers again; its task
//! workers and containers carry on meanwhile.

use crate::executor::{now, ExecError, Executor, Observed};
use crate::health::Tracker;
use crate::reconcile::{self, Op};
use shoal_api::node::NodeDescription;
use shoal_api::task::{Health, Task, TaskState, TaskStatus};
use shoal_api::units::Duration as ApiDuration;
use shoal_api::wire::*;
use shoal_api::{NodeId, TaskId};
use shoal_client::{Client, ClientError, Endpoint};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, RwLock};
use tokio_util::sync::CancellationToken;

/// How the agent reaches its managers and describes its host.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The managers' API endpoints; the agent opens its session with whichever leads, and
    /// follows the list the managers send with each heartbeat answer.
    pub managers: Vec<Endpoint>,
    /// The cluster's join token.
    pub join_token: String,
    /// Where the agent keeps its node id.
    pub state_dir: PathBuf,
    /// What the host is.
    pub description: NodeDescription,
    /// Underlay address of the host.
    pub addr: String,
    /// True on a manager host.
    pub manager_role: bool,
    /// The host's manager's Raft id (0 on a worker).
    pub raft_id: u64,
    /// Where a promotion (the manager join token) goes: the daemon makes the host a manager.
    pub promotions: Option<mpsc::UnboundedSender<String>>,
    /// Mutual TLS to TCP managers, as this node's certificate (`None`: a Unix socket, or a
    /// plain connection only tests use).
    pub tls: Option<shoal_client::Tls>,
    /// The node id this node's certificate names: it registers as that node, whatever an
    /// earlier registration saved.
    pub node_id: Option<NodeId>,
}

#[derive(Debug, Clone)]
struct Session {
    node_id: NodeId,
    session_id: String,
    heartbeat: Duration,
    /// The manager (the leader) the session is with.
    client: Client,
}

/// A full assignment set is fetched at least this often, a safety net under the deltas.
const FULL_RESYNC: Duration = Duration::from_secs(30);

/// The running agent.
pub struct Agent {
    config: AgentConfig,
    executor: Arc<dyn Executor>,
    session: RwLock<Option<Session>>,
    reports: mpsc::UnboundedSender<(TaskId, TaskStatus)>,
    workers: std::sync::Mutex<HashMap<TaskId, watch::Sender<Task>>>,
    /// Managers to try, and which one to try first.
    managers: std::sync::Mutex<(Vec<Endpoint>, usize)>,
    /// When a manager last answered as the cluster's voice (a leader, or a manager that knows
    /// there is none), and the silence after which the agent stops its tasks (0: never).
    contact: std::sync::Mutex<(tokio::time::Instant, Duration)>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("executor", &self.executor.name())
            .finish()
    }
}

impl Agent {
    /// Runs the agent until `shutdown`.
    pub async fn run(
        config: AgentConfig,
        executor: Arc<dyn Executor>,
        shutdown: CancellationToken,
    ) {
        if let (Some(net), Ok(addr)) = (executor.network(), config.addr.parse()) {
            net.set_local(addr);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let agent = Arc::new(Agent {
            executor,
            session: RwLock::new(None),
            reports: tx,
            workers: std::sync::Mutex::new(HashMap::new()),
            managers: std::sync::Mutex::new((config.managers.clone(), 0)),
            contact: std::sync::Mutex::new((tokio::time::Instant::now(), Duration::ZERO)),
            config,
        });
        tokio::spawn(agent.clone().report_loop(rx, shutdown.clone()));
        tokio::spawn(agent.clone().silence_watch(shutdown.clone()));
        loop {
            match agent.register().await {
                Ok(session) => {
                    tracing::info!(node_id = %session.node_id, "agent session opened");
                    *agent.session.write().await = Some(session.clone());
                    let hb = agent.clone().heartbeat_loop(session.clone());
                    let asg = agent.clone().assignment_loop(session.clone());
                    let logs = agent.clone().log_loop(session.clone());
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        e = logs => tracing::warn!(error = %e, "log subscriptions failed; registering again"),
                        e = hb => tracing::warn!(error = %e, "heartbeat failed; registering again"),
                        e = asg => tracing::warn!(error = %e, "assignments failed; registering again"),
                    }
                    *agent.session.write().await = None;
                    // The manager that failed is tried last next time.
                    let mut m = agent.managers.lock().expect("managers lock");
                    m.1 = (m.1 + 1) % m.0.len().max(1);
                }
                Err(e) => tracing::warn!(error = %e, "registration failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    fn node_id_file(&self) -> PathBuf {
        self.config.state_dir.join("node-id")
    }

    async fn register(&self) -> Result<Session, ClientError> {
        let known: Option<NodeId> = self.config.node_id.clone().or_else(|| {
            std::fs::read_to_string(self.node_id_file())
                .ok()
                .and_then(|s| s.trim().parse().ok())
        });
        let mut description = self.config.description.clone();
        description.executor = self.executor.describe();
        let req = RegisterRequest {
            node_id: known,
            join_token: self.config.join_token.clone(),
            description,
            addr: self.config.addr.clone(),
            manager: self.config.manager_role,
            raft_id: self.config.raft_id,
        };
        let (managers, first) = self.managers.lock().expect("managers lock").clone();
        let mut last = None;
        let mut found = None;
        for i in 0..managers.len() {
            let at = (first + i) % managers.len();
            let client = Client::new(managers[at].clone())
                .with_timeout(Duration::from_secs(5))
                .with_tls(self.config.tls.clone());
            match client
                .post::<_, RegisterResponse>("/v1/dispatcher/register", &req)
                .await
            {
                Ok(resp) => {
                    self.managers.lock().expect("managers lock").1 = at;
                    let client =
                        Client::new(managers[at].clone()).with_tls(self.config.tls.clone());
                    found = Some((resp, client));
                    break;
                }
                Err(e) => {
                    tracing::debug!(manager = %managers[at], error = %e, "registration refused");
                    last = Some(e);
                }
            }
        }
        let Some((resp, client)) = found else {
            // None leads among those known: the list may be stale (managers joined or left
            // since). Ask them where the managers are now; the next round tries those.
            for m in &managers {
                let client = Client::new(m.clone())
                    .with_timeout(Duration::from_secs(2))
                    .with_tls(self.config.tls.clone());
                if let Ok(list) = client.get::<ManagerList>("/v1/dispatcher/managers").await {
                    // A cluster without a leader replaces nobody's tasks: that counts as
                    // hearing from it.
                    if !list.leader_known {
                        self.heard();
                    }
                    self.follow_managers(list.managers);
                    break;
                }
            }
            return Err(last.unwrap_or_else(|| ClientError::Endpoint("no managers known".into())));
        };
        self.follow_managers(resp.managers.clone());
        {
            let mut c = self.contact.lock().expect("contact lock");
            *c = (
                tokio::time::Instant::now(),
                Duration::from_millis(resp.self_stop_after_ms),
            );
        }
        if let Err(e) = std::fs::create_dir_all(&self.config.state_dir)
            .and_then(|_| std::fs::write(self.node_id_file(), resp.node_id.as_str()))
        {
            tracing::warn!(error = %e, "node id not saved: a restart will register a new node");
        }
        Ok(Session {
            node_id: resp.node_id,
            session_id: resp.session_id,
            heartbeat: Duration::from_millis(resp.heartbeat_period_ms.max(10)),
            client,
        })
    }

    async fn heartbeat_loop(self: Arc<Self>, s: Session) -> ClientError {
        let mut period = s.heartbeat;
        loop {
            tokio::time::sleep(period).await;
            let hb = Heartbeat {
                node_id: s.node_id.clone(),
                session_id: s.session_id.clone(),
            };
            // A heartbeat must answer well within the time after which the node is marked
            // down; a leader that does not is as good as gone.
            let client = s.client.clone().with_timeout(period * 4);
            match client
                .post::<_, HeartbeatResponse>("/v1/dispatcher/heartbeat", &hb)
                .await
            {
                Ok(r) => {
                    self.heard();
                    period = Duration::from_millis(r.heartbeat_period_ms.max(10));
                    self.follow_managers(r.managers);
                    if let (Some(token), Some(tx)) = (r.promote, &self.config.promotions) {
                        let _ = tx.send(token);
                    }
                }
                Err(e) => return e,
            }
        }
    }

    /// Notes that the cluster answered.
    fn heard(&self) {
        self.contact.lock().expect("contact lock").0 = tokio::time::Instant::now();
    }

    /// Stops every task of this node once no manager has answered for longer than the managers
    /// wait before marking the node down and replacing its tasks (told at registration): a host
    /// cut off from the managers does not keep running copies that now run elsewhere. The
    /// trade-off: if every manager is unreachable that long, workloads stop too (a cluster that
    /// merely lost its quorum still answers, and tasks keep running).
    async fn silence_watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut stopped_at = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            let (last, limit) = *self.contact.lock().expect("contact lock");
            if limit.is_zero() || last.elapsed() <= limit || stopped_at == Some(last) {
                continue;
            }
            stopped_at = Some(last);
            let workers = self.workers.lock().expect("workers lock");
            let running: Vec<_> = workers
                .values()
                .filter(|tx| tx.borrow().desired_state <= TaskState::Running)
                .collect();
            if running.is_empty() {
                continue;
            }
            tracing::warn!(
                silent_ms = last.elapsed().as_millis() as u64,
                tasks = running.len(),
                "no manager heard from: the cluster has replaced this node's tasks; stopping them"
            );
            for tx in running {
                tx.send_modify(|t| t.desired_state = TaskState::Shutdown);
            }
        }
    }

    /// Takes the managers' list from a heartbeat answer (a cluster on TCP only).
    fn follow_managers(&self, addrs: Vec<String>) {
        if addrs.is_empty() {
            return;
        }
        let mut m = self.managers.lock().expect("managers lock");
        if m.0.iter().all(|e| matches!(e, Endpoint::Tcp(_))) {
            let new: Vec<Endpoint> = addrs.into_iter().map(Endpoint::Tcp).collect();
            if new != m.0 {
                tracing::info!(managers = ?new, "managers changed");
                let current = m.0.get(m.1).cloned();
                m.1 = current
                    .and_then(|c| new.iter().position(|e| *e == c))
                    .unwrap_or(0);
                m.0 = new;
            }
        }
    }

    async fn assignment_loop(self: Arc<Self>, s: Session) -> ClientError {
        let mut since = 0;
        let mut first = true;
        let mut last_full = tokio::time::Instant::now();
        loop {
            if last_full.elapsed() >= FULL_RESYNC {
                since = 0;
            }
            if since == 0 {
                last_full = tokio::time::Instant::now();
            }
            let path = format!(
                "/v1/dispatcher/assignments?node_id={}&session_id={}&since={since}&wait_ms=10000",
                s.node_id, s.session_id
            );
            let mut a: Assignments = match s.client.get(&path).await {
                Ok(a) => a,
                Err(e) => return e,
            };
            self.heard();
            if since == 0 && first {
                self.stop_stale(&a).await;
                first = false;
            }
            since = a.revision;
            self.networks(&mut a).await;
            self.apply(a);
        }
    }

    /// Brings the host's networking in step with an assignment message, before its tasks are
    /// started: containers that outlived an agent restart get their resolvers back, the
    /// network views (forwarding entries, DNS, VIP rules) are taken, and with a full set,
    /// leftovers of containers this host no longer has are removed.
    async fn networks(&self, a: &mut Assignments) {
        let Some(net) = self.executor.network() else {
            return;
        };
        let Some(views) = a.networks.take() else {
            return;
        };
        let ports = a.ports.take();
        let resume: Vec<Task> = if a.full {
            a.tasks
                .iter()
                .filter(|t| !t.networks.is_empty())
                .filter(|t| matches!(self.executor.observe(&t.id), Observed::Running { .. }))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        // Kept: containers this host has, and every task assigned to it (one being started
        // may not have a container yet, but its namespace is being made).
        let keep: Option<std::collections::BTreeSet<TaskId>> = a.full.then(|| {
            self.executor
                .tasks()
                .into_iter()
                .chain(a.tasks.iter().map(|t| t.id.clone()))
                .collect()
        });
        let r = tokio::task::spawn_blocking(move || {
            for t in &resume {
                if let Err(e) = net.resume(t) {
                    tracing::warn!(task_id = %t.id, error = %e, "networking not resumed");
                }
            }
            net.update(views)?;
            if let Some(plan) = ports {
                net.update_ports(plan)?;
            }
            if let Some(keep) = keep {
                net.sweep(&keep)?;
            }
            Ok::<_, shoal_overlay_net::NetError>(())
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "network views not fully applied"),
            Err(e) => tracing::warn!(error = %e, "network update panicked"),
        }
    }

    /// On a session's first full assignment set: stops the containers the cluster no longer
    /// wants here (tasks replaced while the node was away, and tasks it forgot) before any new
    /// task starts, so a service never runs more copies than its replicas after the node
    /// returns.
    async fn stop_stale(&self, a: &Assignments) {
        let assigned: Vec<TaskId> = a.tasks.iter().map(|t| t.id.clone()).collect();
        let mut stale: Vec<(TaskId, ApiDuration)> = a
            .tasks
            .iter()
            .filter(|t| t.desired_state > TaskState::Running)
            .map(|t| {
                let grace = t.spec.container.stop_grace_period;
                (t.id.clone(), grace.unwrap_or(ApiDuration::from_secs(10)))
            })
            .collect();
        stale.extend(
            reconcile::strays(&self.executor.tasks(), &assigned)
                .into_iter()
                .map(|t| (t, ApiDuration::from_secs(10))),
        );
        let stops: Vec<_> = stale
            .into_iter()
            .filter_map(|(task, grace)| match self.executor.observe(&task) {
                Observed::Running { container } => Some(self.executor.stop(&container, grace)),
                _ => None,
            })
            .collect();
        if stops.is_empty() {
            return;
        }
        tracing::info!(
            containers = stops.len(),
            "stopping containers of tasks replaced while away, before starting anything"
        );
        for r in futures::future::join_all(stops).await {
            if let Err(e) = r {
                tracing::warn!(error = %e, "stop failed");
            }
        }
    }

    /// Stops and removes the container of a task the cluster no longer has.
    async fn remove_stray(self: Arc<Self>, task: TaskId) {
        if let Observed::Running { container } = self.executor.observe(&task) {
            tracing::info!(task_id = %task, "stopping the container of a task the cluster no longer has");
            if let Err(e) = self
                .executor
                .stop(&container, ApiDuration::from_secs(10))
                .await
            {
                tracing::warn!(task_id = %task, error = %e, "stop failed");
            }
        }
        let container = match self.executor.observe(&task) {
            Observed::Exited { container, .. } | Observed::Running { container } => container,
            Observed::Absent => return,
        };
        let exec = self.executor.clone();
        match tokio::task::spawn_blocking(move || exec.remove(&container)).await {
            Ok(Ok(())) => {
                tracing::info!(task_id = %task, "removed the container of a forgotten task")
            }
            Ok(Err(e)) => tracing::warn!(task_id = %task, error = %e, "remove failed"),
            Err(e) => tracing::warn!(task_id = %task, error = %e, "remove failed"),
        }
    }

    /// Picks up `service logs` subscriptions for this node and serves each.
    async fn log_loop(self: Arc<Self>, s: Session) -> ClientError {
        loop {
            let path = format!(
                "/v1/dispatcher/logs?node_id={}&session_id={}&wait_ms=10000",
                s.node_id, s.session_id
            );
            let subs: Vec<LogSubscription> = match s.client.get(&path).await {
                Ok(subs) => subs,
                Err(e) => return e,
            };
            for sub in subs {
                tokio::spawn(self.clone().serve_logs(s.clone(), sub));
            }
        }
    }

    /// Sends the subscription's lines: what the logs hold (the last `tail` of each task), then,
    /// when following, new lines as they are written, until the manager says nobody reads.
    async fn serve_logs(self: Arc<Self>, s: Session, sub: LogSubscription) {
        // Well under the API's 4 MiB body limit, with JSON's overhead.
        const BATCH_BYTES: usize = 1 << 20;
        // Each task's log: where the next read starts, and whether it has been read to its end.
        let mut offsets: Vec<(TaskId, Option<PathBuf>, u64, bool)> = sub
            .tasks
            .iter()
            .map(|t| (t.clone(), self.executor.log_path(t), 0, false))
            .collect();
        let mut first = true;
        let mut idle = 0u32;
        loop {
            let mut lines = Vec::new();
            for (task, path, offset, at_end) in offsets.iter_mut() {
                let Some(path) = path else {
                    *at_end = true;
                    continue;
                };
                // File reads off the async threads, a bounded amount each round: the last
                // `tail` entries read from the end; otherwise rotated files first, then the
                // current one chunk by chunk.
                let (path, from, tail) = (path.clone(), *offset, sub.tail);
                let read = tokio::task::spawn_blocking(move || {
                    use shoal_runtime::logs;
                    match (first, tail) {
                        (true, Some(n)) => {
                            let (entries, at) = logs::read_tail(&path, n)?;
                            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
                            Ok((entries, at, at >= len))
                        }
                        (true, None) => {
                            let mut older = logs::read_rotated(&path)?;
                            let (current, at, end) = logs::read_chunk(&path, 0, BATCH_BYTES)?;
                            older.extend(current);
                            Ok((older, at, end))
                        }
                        (false, _) => logs::read_chunk(&path, from, BATCH_BYTES),
                    }
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                let (entries, next, end) = match read {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(task_id = %task, error = %e, "reading logs");
                        *at_end = true;
                        continue;
                    }
                };
                *offset = next;
                *at_end = end;
                lines.extend(entries.into_iter().map(|e| LogLine {
                    task_id: task.clone(),
                    service: String::new(),
                    slot: 0,
                    node_id: s.node_id.clone(),
                    stream: e.stream,
                    time: e.time,
                    line: e.log,
                }));
            }
            first = false;
            // Without `follow`, done once every log was read to its end.
            let done = !sub.follow && offsets.iter().all(|(.., at_end)| *at_end);
            // Publish what there is; while following and quiet, a keepalive every 2 s tells
            // whether anyone still reads.
            idle = if lines.is_empty() { idle + 1 } else { 0 };
            if !lines.is_empty() || done || idle >= 10 {
                idle = 0;
                let mut chunks: Vec<Vec<LogLine>> = vec![Vec::new()];
                let mut size = 0;
                for l in lines {
                    let n = l.line.len() * 2 + 200;
                    if size + n > BATCH_BYTES && !chunks.last().is_some_and(|c| c.is_empty()) {
                        chunks.push(Vec::new());
                        size = 0;
                    }
                    size += n;
                    chunks.last_mut().expect("one chunk at least").push(l);
                }
                let n = chunks.len();
                for (i, chunk) in chunks.into_iter().enumerate() {
                    let body = LogPublish {
                        session: s.session_id.clone(),
                        lines: chunk,
                        done: done && i + 1 == n,
                    };
                    let path = format!("/v1/dispatcher/logs/{}?node_id={}", sub.id, s.node_id);
                    match s.client.post::<_, LogPublishResponse>(&path, &body).await {
                        Ok(r) if r.active => {}
                        Ok(_) => return,
                        Err(e) => {
                            tracing::debug!(subscription = %sub.id, error = %e, "log publish failed");
                            return;
                        }
                    }
                }
            }
            if done {
                return;
            }
            // A log not read to its end yet is read on at once; otherwise wait for more.
            if offsets.iter().all(|(.., at_end)| *at_end) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Starts, updates or retires task workers from an assignment message.
    fn apply(self: &Arc<Self>, a: Assignments) {
        // The files first: the tasks of this message may need them at once.
        self.executor.set_files(&a.files, a.full);
        let mut workers = self.workers.lock().expect("workers lock");
        if a.full {
            let keep: Vec<&TaskId> = a.tasks.iter().map(|t| &t.id).collect();
            for (id, tx) in workers.iter() {
                if !keep.contains(&id) {
                    retire(tx);
                }
            }
            let assigned: Vec<TaskId> = a.tasks.iter().map(|t| t.id.clone()).collect();
            for stray in reconcile::strays(&self.executor.tasks(), &assigned) {
                if !workers.contains_key(&stray) {
                    tokio::spawn(self.clone().remove_stray(stray));
                }
            }
        }
        for id in &a.removed {
            if let Some(tx) = workers.get(id) {
                retire(tx);
            }
        }
        for task in a.tasks {
            match workers.get(&task.id) {
                Some(tx) if !tx.is_closed() => {
                    tx.send_replace(task);
                }
                _ => {
                    let (tx, rx) = watch::channel(task.clone());
                    workers.insert(task.id.clone(), tx);
                    tokio::spawn(self.clone().work(rx));
                }
            }
        }
        workers.retain(|_, tx| !tx.is_closed());
    }

    fn report(&self, id: &TaskId, status: TaskStatus) {
        let _ = self.reports.send((id.clone(), status));
    }

    /// Stops a task's container: its stop signal, then SIGKILL after its grace period.
    async fn stop_container(&self, task: &Task, container: &str) {
        let grace = task
            .spec
            .container
            .stop_grace_period
            .unwrap_or(ApiDuration::from_secs(10));
        if let Err(e) = self.executor.stop(container, grace).await {
            tracing::warn!(task_id = %task.id, error = %e, "stop failed");
        }
    }

    /// One task's worker: asks the reconciler for the next step and does it, until the task is
    /// finished and no longer assigned.
    async fn work(self: Arc<Self>, mut rx: watch::Receiver<Task>) {
        let mut known: Option<TaskStatus> = None;
        // The running container's health checks: its id, verdicts so far, when it started.
        let mut health: Option<(String, Tracker, tokio::time::Instant)> = None;
        loop {
            let task = rx.borrow_and_update().clone();
            let status = match &known {
                Some(k) => reconcile::newest(&task.status, k),
                None => task.status.clone(),
            };
            let observed = self.executor.observe(&task.id);
            let op = reconcile::step(&task, &status, &observed);
            tracing::debug!(task_id = %task.id, ?op, "task step");
            let mut set = |s: TaskStatus| {
                self.report(&task.id, s.clone());
                known = Some(s);
            };
            match op {
                Op::Start => {
                    set(TaskStatus::new(TaskState::Starting, now(), "starting"));
                    match self.executor.start(&task).await {
                        Ok(container) => {
                            // With a health check it counts as running once healthy.
                            let mut s = match self.executor.health_policy(&task) {
                                Some(_) => {
                                    let mut s =
                                        TaskStatus::new(TaskState::Starting, now(), "started");
                                    s.health = Some(Health::Starting);
                                    s
                                }
                                None => TaskStatus::new(TaskState::Running, now(), "started"),
                            };
                            s.container_id = container;
                            set(s);
                        }
                        Err(ExecError::Rejected(reason)) => {
                            let mut s = TaskStatus::new(TaskState::Rejected, now(), "rejected");
                            s.err = reason;
                            set(s);
                        }
                        Err(e) => {
                            let mut s = TaskStatus::new(TaskState::Failed, now(), "starting");
                            s.err = e.to_string();
                            set(s);
                        }
                    }
                    continue;
                }
                Op::Watch { container } => {
                    if health.as_ref().is_none_or(|(c, ..)| *c != container) {
                        health = self.executor.health_policy(&task).map(|p| {
                            (
                                container.clone(),
                                Tracker::new(p),
                                tokio::time::Instant::now(),
                            )
                        });
                    }
                    if status.state < TaskState::Running && health.is_none() {
                        let mut s = TaskStatus::new(TaskState::Running, now(), "started");
                        s.container_id = container.clone();
                        set(s);
                    } else if status.state < TaskState::Starting {
                        let mut s = TaskStatus::new(TaskState::Starting, now(), "started");
                        s.container_id = container.clone();
                        s.health = Some(Health::Starting);
                        set(s);
                    }
                    let executor = self.executor.clone();
                    let check = async {
                        let Some((c, tracker, started)) = health.as_mut() else {
                            return std::future::pending().await;
                        };
                        tokio::time::sleep_until(*started + tracker.next_at).await;
                        let (passed, output) = executor.health_check(c, tracker.policy()).await;
                        let change = tracker.record(passed, started.elapsed());
                        (tracker.state(), change, output)
                    };
                    tokio::select! {
                        (verdict, change, output) = check => {
                            self.executor.record_health(&container, verdict, &output);
                            match change {
                                Some(Health::Healthy) => {
                                    let mut s = TaskStatus::new(TaskState::Running, now(), "started");
                                    s.container_id = container.clone();
                                    s.health = Some(Health::Healthy);
                                    set(s);
                                }
                                Some(Health::Unhealthy) if task.desired_state <= TaskState::Running => {
                                    tracing::warn!(task_id = %task.id, output = %output.trim(), "unhealthy container: stopping it");
                                    // Shown while it stops.
                                    let mut s = status.clone();
                                    s.health = Some(Health::Unhealthy);
                                    set(s);
                                    self.stop_container(&task, &container).await;
                                    let mut s = TaskStatus::new(TaskState::Failed, now(), "started");
                                    s.err = match output.trim() {
                                        "" => "unhealthy container".to_owned(),
                                        o => format!("unhealthy container: {o}"),
                                    };
                                    s.container_id = container.clone();
                                    s.health = Some(Health::Unhealthy);
                                    set(s);
                                }
                                _ => {}
                            }
                            continue;
                        }
                        exit = self.executor.wait(&container) => {
                            if let Ok(code) = exit {
                                if task.desired_state <= TaskState::Running {
                                    let reason = self.executor.exit_reason(&container);
                                    set(reconcile::exit_status(code, reason, &container, now()));
                                }
                            }
                            continue;
                        }
                        changed = rx.changed() => if changed.is_err() { return } else { continue },
                    }
                }
                Op::ReportExit { container, code } => {
                    let reason = self.executor.exit_reason(&container);
                    set(reconcile::exit_status(code, reason, &container, now()));
                    continue;
                }
                Op::Stop { container } => {
                    self.stop_container(&task, &container).await;
                    let mut s = TaskStatus::new(TaskState::Shutdown, now(), "shutdown");
                    s.container_id = container;
                    set(s);
                    continue;
                }
                Op::ReportShutdown => {
                    set(TaskStatus::new(TaskState::Shutdown, now(), "shutdown"));
                    continue;
                }
                Op::ReportLost => {
                    let mut s = TaskStatus::new(TaskState::Failed, now(), "lost");
                    s.err = "the container disappeared".into();
                    set(s);
                    continue;
                }
                Op::Remove { container } => {
                    // Removing runs the OCI runtime and unmounts: off the async threads.
                    let exec = self.executor.clone();
                    let removed =
                        tokio::task::spawn_blocking(move || exec.remove(&container)).await;
                    match removed {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(task_id = %task.id, error = %e, "remove failed")
                        }
                        Err(e) => tracing::warn!(task_id = %task.id, error = %e, "remove failed"),
                    }
                    return;
                }
                Op::Wait => {
                    // A retired task with nothing left to stop or remove is done.
                    if task.desired_state == TaskState::Remove || rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Sends statuses in batches: whatever queued while the previous batch was in flight.
    async fn report_loop(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<(TaskId, TaskStatus)>,
        shutdown: CancellationToken,
    ) {
        let mut pending: BTreeMap<TaskId, TaskStatus> = BTreeMap::new();
        loop {
            if pending.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    item = rx.recv() => match item {
                        Some((id, s)) => { pending.insert(id, s); }
                        None => return,
                    },
                }
            }
            while let Ok((id, s)) = rx.try_recv() {
                let keep = pending.get(&id).is_none_or(|p| s.state >= p.state);
                if keep {
                    pending.insert(id, s);
                }
            }
            let session = self.session.read().await.clone();
            let Some(session) = session else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let updates: Vec<TaskStatusUpdate> = pending
                .iter()
                .map(|(id, s)| TaskStatusUpdate {
                    task_id: id.clone(),
                    status: s.clone(),
                })
                .collect();
            let report = StatusReport {
                node_id: session.node_id.clone(),
                session_id: session.session_id.clone(),
                updates,
            };
            match session
                .client
                .send_no_content(hyper::Method::POST, "/v1/dispatcher/status", Some(&report))
                .await
            {
                Ok(()) => pending.clear(),
                Err(e) => {
                    tracing::warn!(error = %e, batch = pending.len(), "status report failed; will retry");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// Tells a worker its task is no longer assigned: stop it and remove its container.
fn retire(tx: &watch::Sender<Task>) {
    tx.send_modify(|t| t.desired_state = TaskState::Remove);
}

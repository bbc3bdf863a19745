//! Tables, as docker prints them: left-aligned columns, ids cut to 12 characters.

use shoal_api::node::Node;
use shoal_api::service::ServiceMode;
use shoal_api::task::Task;
use shoal_api::wire::{ClusterInfo, ServiceSummary};

/// Prints rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{:<w$}   ", c, w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

pub fn cluster_info(i: &ClusterInfo) {
    println!("Cluster:      {}", i.id);
    println!("Revision:     {}", i.revision);
    println!(
        "Raft:         id {} term {} leader {} commit {} applied {} voters {:?}",
        i.raft.id, i.raft.term, i.raft.leader, i.raft.commit, i.raft.applied, i.raft.voters
    );
    for (id, addr) in &i.raft.managers {
        let leader = if *id == i.raft.leader {
            " (leader)"
        } else {
            ""
        };
        let addr = if addr.is_empty() {
            "(local only)"
        } else {
            addr
        };
        println!("Manager:      {id} {addr}{leader}");
    }
    println!("Nodes:        {}", i.nodes);
    println!("Services:     {}", i.services);
    println!("Tasks:        {}", i.tasks);
    println!("Networks:     {}", i.networks);
    println!("Join token:   {}", i.worker_join_token);
    println!(
        "Privileged:   {}",
        if i.allow_privileged {
            "allowed"
        } else {
            "refused"
        }
    );
    println!("Autolock:     {}", if i.autolock { "on" } else { "off" });
}

pub fn services(list: &[ServiceSummary]) {
    table(
        &["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"],
        list.iter().map(|s| {
            let spec = &s.service.spec;
            let mode = match spec.mode {
                ServiceMode::Replicated { .. } => "replicated",
                ServiceMode::Global => "global",
            };
            // Only what the hosts publish: declared ports and those the cluster chose for ports
            // without `published`, of services on a network.
            let ports: Vec<String> = s
                .service
                .published_ports
                .iter()
                .filter_map(|p| {
                    let published = p.published?;
                    Some(match p.mode.as_str() {
                        "host" => format!("{published}->{}/{} (host)", p.target, p.protocol),
                        _ => format!("*:{published}->{}/{}", p.target, p.protocol),
                    })
                })
                .collect();
            vec![
                s.service.id.short().to_owned(),
                spec.name.clone(),
                mode.to_owned(),
                format!("{}/{}", s.running, s.desired),
                spec.task.container.image.clone(),
                ports.join(", "),
            ]
        }),
    );
}

pub fn tasks(list: &[Task], nodes: &[Node]) {
    let host = |t: &Task| {
        t.node_id
            .as_ref()
            .and_then(|id| nodes.iter().find(|n| &n.id == id))
            .map(|n| n.description.hostname.clone())
            .unwrap_or_default()
    };
    table(
        &[
            "ID",
            "NAME",
            "IMAGE",
            "NODE",
            "DESIRED STATE",
            "CURRENT STATE",
            "ERROR",
        ],
        list.iter().map(|t| {
            let name = if t.wanted() {
                t.name()
            } else {
                format!(" \\_ {}", t.name())
            };
            vec![
                t.id.short().to_owned(),
                name,
                t.spec.container.image.clone(),
                host(t),
                t.desired_state.to_string(),
                match t.status.health {
                    Some(h) => format!("{} ({})", t.status.state, h.label()),
                    None => t.status.state.to_string(),
                },
                t.status.err.clone(),
            ]
        }),
    );
}

/// `node ls`; `leader` is the leader's Raft id, for the MANAGER STATUS column (as docker's:
/// Leader, Reachable, Unreachable, empty for workers).
pub fn nodes(list: &[Node], leader: u64) {
    table(
        &[
            "ID",
            "HOSTNAME",
            "STATUS",
            "AVAILABILITY",
            "MANAGER STATUS",
            "ENGINE VERSION",
        ],
        list.iter().map(|n| {
            let manager = match &n.manager_status {
                Some(m) if m.raft_id == leader => "Leader",
                Some(_) if n.status.state == shoal_api::node::NodeState::Ready => "Reachable",
                Some(_) => "Unreachable",
                None => "",
            };
            vec![
                n.id.short().to_owned(),
                n.description.hostname.clone(),
                n.status.state.to_string(),
                n.spec.availability.to_string(),
                manager.to_owned(),
                n.description.engine_version.clone(),
            ]
        }),
    );
}

pub fn event(e: &serde_json::Value) {
    let kind = e["type"].as_str().unwrap_or("?");
    let obj = &e["object"];
    let name = match kind {
        "service" => obj["spec"]["name"].as_str().map(str::to_owned),
        "network" => obj["spec"]["name"].as_str().map(str::to_owned),
        "node" => obj["description"]["hostname"].as_str().map(str::to_owned),
        "task" => Some(format!(
            "{} {} -> {}",
            obj["service_name"].as_str().unwrap_or(""),
            obj["status"]["state"].as_str().unwrap_or(""),
            obj["desired_state"].as_str().unwrap_or("")
        )),
        _ => None,
    };
    println!(
        "{} {} {} {} {}",
        e["revision"],
        kind,
        e["action"].as_str().unwrap_or("?"),
        obj["id"].as_str().unwrap_or(""),
        name.unwrap_or_default()
    );
}

/// A size as docker prints it (`1.23MB`).
pub fn size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
            + units[i]
    }
}

/// `image ls`.
pub fn images(list: &[shoal_api::wire::ImageInfo]) {
    let mut rows = Vec::new();
    for i in list {
        let id =
            i.id.trim_start_matches("sha256:")
                .chars()
                .take(12)
                .collect::<String>();
        let tags: Vec<(String, String)> = if i.tags.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            i.tags
                .iter()
                .map(|t| match t.rsplit_once(':') {
                    Some((r, tag)) if !tag.contains('/') => (r.to_owned(), tag.to_owned()),
                    _ => (t.clone(), "<none>".into()),
                })
                .collect()
        };
        for (repo, tag) in tags {
            rows.push(vec![repo, tag, id.clone(), size(i.size)]);
        }
    }
    table(&["REPOSITORY", "TAG", "IMAGE ID", "SIZE"], rows.into_iter());
}

/// `cluster client-cert --list` (and after `--revoke`): the user certificates the cluster keeps.
pub fn client_certs(list: &[shoal_api::wire::ClientCert]) {
    table(
        &["NAME", "DIGEST", "EXPIRES", "REVOKED"],
        list.iter().map(|k| {
            let expires = chrono::DateTime::from_timestamp(k.not_after, 0).map_or_else(
                || k.not_after.to_string(),
                |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
            );
            vec![
                k.name.clone(),
                k.digest.chars().take(12).collect(),
                expires,
                if k.revoked { "yes" } else { "no" }.to_owned(),
            ]
        }),
    );
}

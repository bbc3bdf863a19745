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
    println!("Nodes:        {}", i.nodes);
    println!("Services:     {}", i.services);
    println!("Tasks:        {}", i.tasks);
    println!("Networks:     {}", i.networks);
    println!("Join token:   {}", i.worker_join_token);
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
            let ports: Vec<String> = spec
                .endpoint
                .ports
                .iter()
                .map(|p| {
                    format!(
                        "*:{}->{}/{}",
                        p.published.map(|x| x.to_string()).unwrap_or_default(),
                        p.target,
                        p.protocol
                    )
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
                t.status.state.to_string(),
                t.status.err.clone(),
            ]
        }),
    );
}

pub fn nodes(list: &[Node]) {
    table(
        &[
            "ID",
            "HOSTNAME",
            "STATUS",
            "AVAILABILITY",
            "ROLE",
            "EXECUTOR",
        ],
        list.iter().map(|n| {
            vec![
                n.id.short().to_owned(),
                n.description.hostname.clone(),
                n.status.state.to_string(),
                n.spec.availability.to_string(),
                n.spec.role.to_string(),
                n.description.executor.clone(),
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

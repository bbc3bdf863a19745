//! `shoal container ls|inspect|logs|exec` and `service exec`: the containers of the node the
//! CLI talks to, through its node API.

use crate::{path_part, print_json};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use shoal_api::wire::{ContainerInfo, ExecSpec};
use shoal_client::{Client, Lines};
use std::io::Write;
use std::time::Duration;

/// `container …`.
#[derive(Debug, Subcommand)]
pub enum ContainerCmd {
    /// List this node's containers.
    Ls {
        /// Show exited ones too.
        #[arg(short, long)]
        all: bool,
    },
    /// Show containers in full.
    Inspect {
        /// Container ids (or unique prefixes) or `service.slot` names.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Show a container's output.
    Logs {
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        /// Container id (or a unique prefix) or `service.slot` name.
        container: String,
    },
    /// Run a command in a running container of this node.
    Exec(ExecArgs),
}

/// What `container exec` and `service exec` run.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Set an environment variable (KEY=VALUE; repeatable).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Run as this user (`name`, `uid` or `uid:gid`).
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Keep stdin open (not supported yet: refused).
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal (not supported yet: refused).
    #[arg(short, long)]
    pub tty: bool,
    /// The container (`container exec`) or the service (`service exec`).
    pub target: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

/// Runs a `container` command; returns the exit code to leave with.
pub async fn run(c: &Client, cmd: ContainerCmd, json: bool) -> Result<i32> {
    match cmd {
        ContainerCmd::Ls { all } => {
            let list: Vec<ContainerInfo> = c.get("/v1/containers").await?;
            let list: Vec<ContainerInfo> = list
                .into_iter()
                .filter(|c| all || c.state == "running")
                .collect();
            if json {
                print_json(&list)?;
            } else {
                crate::output::table(
                    &["CONTAINER ID", "NAME", "IMAGE", "STATE"],
                    list.iter().map(|c| {
                        vec![
                            c.id.chars().take(12).collect(),
                            c.name.clone(),
                            c.image.clone(),
                            match (c.exit_code, c.health) {
                                (Some(code), _) => format!("{} ({code})", c.state),
                                (None, Some(h)) => format!("{} ({})", c.state, h.label()),
                                (None, None) => c.state.clone(),
                            },
                        ]
                    }),
                );
            }
        }
        ContainerCmd::Inspect { containers } => {
            let mut out = Vec::new();
            for name in containers {
                let info: ContainerInfo = c
                    .get(&format!("/v1/containers/{}", path_part(&name)))
                    .await?;
                out.push(info);
            }
            print_json(&out)?;
        }
        ContainerCmd::Logs { tail, container } => {
            let mut path = format!("/v1/containers/{}/logs", path_part(&container));
            if let Some(n) = tail {
                path.push_str(&format!("?tail={n}"));
            }
            let entries: Vec<serde_json::Value> = c.get(&path).await?;
            if json {
                return print_json(&entries).map(|_| 0);
            }
            let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
            for e in entries {
                let text = e["log"].as_str().unwrap_or_default();
                if e["stream"] == "stderr" {
                    err.write_all(text.as_bytes())?;
                } else {
                    out.write_all(text.as_bytes())?;
                }
            }
        }
        ContainerCmd::Exec(args) => return exec(c, &args.target.clone(), &args).await,
    }
    Ok(0)
}

/// Runs `args.cmd` in `container` on the node `c` talks to, its output copied to ours;
/// returns its exit code.
pub async fn exec(c: &Client, container: &str, args: &ExecArgs) -> Result<i32> {
    if args.interactive || args.tty {
        bail!("exec -i and -t are not supported yet: run the command without them (its output is shown, stdin is closed)");
    }
    let spec = ExecSpec {
        cmd: args.cmd.clone(),
        env: args.env.clone(),
        user: args.user.clone(),
        workdir: args.workdir.clone(),
    };
    // The process may run for long: no answer timeout beyond a day.
    let c = c.clone().with_timeout(Duration::from_secs(24 * 3600));
    let body = c
        .stream_post_json(
            &format!("/v1/containers/{}/exec", path_part(container)),
            &spec,
        )
        .await?;
    let mut lines = Lines::new(body);
    while let Some(line) = lines.next::<serde_json::Value>().await? {
        if let Some(t) = line.get("stdout").and_then(|v| v.as_str()) {
            let mut out = std::io::stdout().lock();
            out.write_all(t.as_bytes())?;
            out.flush()?;
        } else if let Some(t) = line.get("stderr").and_then(|v| v.as_str()) {
            let mut err = std::io::stderr().lock();
            err.write_all(t.as_bytes())?;
            err.flush()?;
        } else if let Some(code) = line.get("exit").and_then(|v| v.as_i64()) {
            return Ok(code as i32);
        }
    }
    bail!("the node ended the exec without an exit code")
}

/// `service exec SERVICE -- CMD`: runs in one running container of the service on the node
/// the CLI talks to (a node runs its own containers only; `service ps` says where the others
/// are). Works on workers too: only the node's own API is asked.
pub async fn service_exec(c: &Client, service: &str, args: &ExecArgs) -> Result<i32> {
    let list: Vec<ContainerInfo> = c.get("/v1/containers").await?;
    let prefix = format!("{service}.");
    let mut mine: Vec<&ContainerInfo> = list
        .iter()
        .filter(|c| c.state == "running" && c.name.starts_with(&prefix))
        .collect();
    mine.sort_by(|a, b| a.name.cmp(&b.name));
    match mine.first() {
        Some(one) => exec(c, &one.id, args).await,
        None => bail!(
            "no running task of service {service} on this node: `shoal service ps {service}` shows where its tasks run; point the CLI at that node (-H)"
        ),
    }
}

//! `shoal container ls|inspect|logs|exec` and `service exec`: the containers of the node the
//! CLI talks to, through its node API.

use crate::{path_part, print_json};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use shoal_api::wire::{ContainerInfo, ExecInput, ExecSpec};
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
    /// Keep stdin open: what the CLI reads goes to the process.
    #[arg(short, long)]
    pub interactive: bool,
    /// Run the process on a terminal (raw mode here while it runs; its size follows ours).
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
    use std::io::IsTerminal;
    let tty = args.tty;
    let spec = ExecSpec {
        cmd: args.cmd.clone(),
        env: args.env.clone(),
        user: args.user.clone(),
        workdir: args.workdir.clone(),
        interactive: args.interactive,
        tty,
        size: if tty { terminal_size() } else { None },
    };
    // The process may run for long: no answer timeout beyond a day.
    let c = c.clone().with_timeout(Duration::from_secs(24 * 3600));
    let path = format!("/v1/containers/{}/exec", path_part(container));
    let body = if args.interactive {
        let mut first = serde_json::to_vec(&spec)?;
        first.push(b'\n');
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
        tx.send(first.into()).await.ok();
        tokio::spawn(forward_stdin(tx.clone()));
        if tty {
            tokio::spawn(forward_resizes(tx));
        }
        let input =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        c.stream_duplex(&path, input).await?
    } else {
        c.stream_post_json(&path, &spec).await?
    };
    // Raw mode while a terminal is in use here, restored however this ends.
    let _raw = if tty && std::io::stdin().is_terminal() {
        RawMode::enter()
    } else {
        None
    };
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

fn input_line(input: &ExecInput) -> bytes::Bytes {
    let mut l = serde_json::to_vec(input).expect("serializes");
    l.push(b'\n');
    l.into()
}

/// Sends what stdin gives, then its end.
async fn forward_stdin(tx: tokio::sync::mpsc::Sender<bytes::Bytes>) {
    use base64::Engine as _;
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 8192];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let data = base64::engine::general_purpose::STANDARD.encode(&buf[..n]);
                if tx.send(input_line(&ExecInput::Stdin(data))).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.send(input_line(&ExecInput::Eof(true))).await;
}

/// Sends the terminal's size whenever it changes (SIGWINCH).
async fn forward_resizes(tx: tokio::sync::mpsc::Sender<bytes::Bytes>) {
    let Ok(mut winch) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
    else {
        return;
    };
    while winch.recv().await.is_some() {
        if let Some(size) = terminal_size() {
            if tx.send(input_line(&ExecInput::Resize(size))).await.is_err() {
                return;
            }
        }
    }
}

/// Our terminal's rows and columns, when stdout is one.
fn terminal_size() -> Option<[u16; 2]> {
    let mut size = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize through the pointer, which outlives the call.
    let r = unsafe {
        nix::libc::ioctl(
            1,
            nix::libc::TIOCGWINSZ,
            &mut size as *mut nix::pty::Winsize,
        )
    };
    (r == 0 && size.ws_row > 0).then_some([size.ws_row, size.ws_col])
}

/// The terminal in raw mode until dropped.
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enter() -> Option<RawMode> {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
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

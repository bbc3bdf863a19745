//! `shoal-lab`: several shoal hosts on this machine (see the `shoal_lab` crate docs).

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use shoal_lab::{default_dir, Executor, Lab, LabConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// A local multi-host shoal cluster: one network namespace per host.
#[derive(Debug, Parser)]
#[command(name = "shoal-lab", version)]
struct Cli {
    /// The lab's name (1 to 6 letters or digits); several labs can be up at once.
    #[arg(long, env = "SHOAL_LAB", default_value = "lab", global = true)]
    name: String,
    /// The lab's directory (default /var/tmp/shoal-lab/NAME).
    #[arg(long, env = "SHOAL_LAB_DIR", global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the lab: hosts m1..mM and w1..wW, the managers in one cluster, workers joined.
    Up {
        /// Managers.
        #[arg(long, default_value_t = 3)]
        managers: usize,
        /// Workers.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// The underlay subnet (A.B.C.0/24).
        #[arg(long, default_value = "198.18.0.0/24")]
        subnet: String,
        /// `container` (real containers; the test images are imported on every host) or
        /// `sim` (simulated tasks).
        #[arg(long, default_value = "container")]
        executor: String,
        /// The daemons' log filter.
        #[arg(long, default_value = "info,raft=warn")]
        log: String,
        /// Where shoald, shoal and shoal-runtime are (default: beside shoal-lab).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Run a registry (Debian's docker-registry) at A.B.C.250:5000 as every host's Docker
        /// Hub mirror: the test images are imported on m1 only and pushed there, and the other
        /// hosts pull them where their tasks land.
        #[arg(long)]
        registry: bool,
    },
    /// Stop everything and remove every namespace, link, mount, cgroup and file of the lab.
    Down,
    /// Hosts, addresses, daemon alive, link, role and the leader each manager sees.
    Status,
    /// Print `export SHOAL_HOST=...` for a host: `eval "$(shoal-lab env m2)"`.
    Env {
        /// The host.
        host: String,
    },
    /// Run a command inside a host's network namespace.
    Exec {
        /// The host.
        host: String,
        /// The command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Power loss: the host's daemon and every container of it SIGKILLed at once.
    Kill {
        /// The host.
        host: String,
    },
    /// Boot a host again from its data root.
    Restart {
        /// The host.
        host: String,
    },
    /// Drop a host's underlay link.
    Cut {
        /// The host.
        host: String,
    },
    /// Bring a host's underlay link back.
    Heal {
        /// The host.
        host: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shoal-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let dir = cli.dir.clone().unwrap_or_else(|| default_dir(&cli.name));
    let open = || Lab::open(&dir).context("opening the lab");
    match cli.command {
        Cmd::Up {
            managers,
            workers,
            subnet,
            executor,
            log,
            bin_dir,
            registry,
        } => {
            let mut config = LabConfig::new(&cli.name, managers, workers);
            config.dir = dir.clone();
            config.subnet = subnet;
            config.log = log;
            config.registry = registry;
            if let Some(b) = bin_dir {
                config.bin_dir = b;
            }
            config.executor = match executor.as_str() {
                "container" => Executor::Container,
                "sim" => Executor::Sim,
                other => anyhow::bail!("unknown executor {other:?}: use container or sim"),
            };
            let lab = Lab::up(config)?.keep();
            print_status(&lab);
            println!(
                "\nThe lab is up. Talk to a host with: eval \"$(shoal-lab env m1)\"; shoal node ls\nTear it down with: shoal-lab down"
            );
        }
        Cmd::Down => {
            Lab::clean(&cli.name, &dir)?;
            println!("lab {} is down", cli.name);
        }
        Cmd::Status => print_status(&open()?),
        Cmd::Env { host } => {
            let lab = open()?;
            lab.host(&host)?;
            println!("export SHOAL_HOST=unix://{}", lab.socket(&host).display());
        }
        Cmd::Exec { host, command } => {
            let status = open()?.exec(&host, &command)?;
            return Ok(ExitCode::from(status.code().unwrap_or(1) as u8));
        }
        Cmd::Kill { host } => open()?.kill(&host)?,
        Cmd::Restart { host } => open()?.restart(&host)?,
        Cmd::Cut { host } => open()?.cut(&host)?,
        Cmd::Heal { host } => open()?.heal(&host)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(lab: &Lab) {
    println!(
        "{:<6} {:<15} {:<7} {:<6} {:<8} LEADER",
        "HOST", "ADDRESS", "DAEMON", "LINK", "ROLE"
    );
    let leader = lab.leader();
    for s in lab.status() {
        let lead = if s.host.manager {
            match (&s.leader, &leader) {
                (Some(_), Some(l)) if *l == s.host.name => "* (leader)".to_owned(),
                (Some(a), _) => a.clone(),
                (None, _) => "-".to_owned(),
            }
        } else {
            String::new()
        };
        println!(
            "{:<6} {:<15} {:<7} {:<6} {:<8} {}",
            s.host.name,
            s.host.addr,
            if s.alive { "alive" } else { "dead" },
            if s.linked { "up" } else { "cut" },
            s.role,
            lead
        );
    }
    if let Some(at) = &lab.state().registry {
        println!("\nregistry {at} (plain HTTP; every host's Docker Hub mirror)");
    }
}

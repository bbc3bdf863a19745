//! `shoal-runtime`: the built-in OCI runtime, with runc's command line (`create`, `start`,
//! `state`, `kill`, `delete`), and `shim`, the per-container monitor the agent starts.

use clap::{Parser, Subcommand};
use shoal_runtime::linux::{parse_signal, Runtime};
use shoal_runtime::oci::OciRuntime;
use shoal_runtime::shim::{self, ShimArgs};
use std::path::PathBuf;
use std::process::ExitCode;

/// shoal's built-in OCI runtime.
#[derive(Debug, Parser)]
#[command(name = "shoal-runtime", version, about)]
struct Args {
    /// Directory for container state.
    #[arg(long, global = true, default_value = "/run/shoal/runtime")]
    root: PathBuf,
    /// Accepted for runc compatibility; errors go to stderr.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Accepted for runc compatibility.
    #[arg(long, global = true)]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Creates a container from a bundle; its process waits for `start`.
    Create {
        /// The bundle directory (config.json and the root filesystem).
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
        /// Where to write the init's pid.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Container id.
        id: String,
    },
    /// Runs the created container's process.
    Start {
        /// Container id.
        id: String,
    },
    /// Prints the container's state as JSON.
    State {
        /// Container id.
        id: String,
    },
    /// Runs a process inside a running container (its namespaces, cgroup, user, env, cwd);
    /// exits with the process's code.
    Exec {
        /// The process, as an OCI `process` object (runc's `--process`).
        #[arg(long, short = 'p')]
        process: PathBuf,
        /// Container id.
        id: String,
    },
    /// Sends a signal to the container's init.
    Kill {
        /// Container id.
        id: String,
        /// Signal name or number.
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Deletes the container (its cgroup and state).
    Delete {
        /// Kill it first if it runs.
        #[arg(long, short = 'f')]
        force: bool,
        /// Container id.
        id: String,
    },
    /// Monitors one container (used by shoald).
    #[command(hide = true)]
    Shim {
        /// The OCI runtime binary.
        #[arg(long)]
        runtime: PathBuf,
        /// Its name, for messages.
        #[arg(long, default_value = "builtin")]
        runtime_name: String,
        /// Its state directory.
        #[arg(long)]
        runtime_root: PathBuf,
        /// The bundle.
        #[arg(long)]
        bundle: PathBuf,
        /// Rotate the log at this many bytes.
        #[arg(long)]
        log_max_size: Option<u64>,
        /// Log files kept, the current one included.
        #[arg(long, default_value_t = 1)]
        log_max_file: u32,
        /// Gzip rotated log files.
        #[arg(long)]
        log_compress: bool,
        /// Drop the output (logging driver `none`).
        #[arg(long)]
        no_log: bool,
        /// Container id.
        id: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = Runtime::new(&args.root);
    let result = match args.command {
        Cmd::Create {
            bundle,
            pid_file,
            id,
        } => rt.create(&id, &bundle, pid_file.as_deref()).map(|_| ()),
        Cmd::Start { id } => rt.start(&id),
        Cmd::State { id } => rt.state(&id).map(|s| {
            println!(
                "{}",
                serde_json::to_string_pretty(&s).expect("state serializes")
            );
        }),
        Cmd::Exec { process, id } => {
            let code = std::fs::read(&process)
                .map_err(|e| format!("reading {}: {e}", process.display()))
                .and_then(|b| {
                    serde_json::from_slice::<oci_spec::runtime::Process>(&b)
                        .map_err(|e| format!("{}: {e}", process.display()))
                })
                .and_then(|p| rt.exec(&id, &p).map_err(|e| e.to_string()));
            return match code {
                Ok(c) => ExitCode::from(c as u8),
                Err(e) => {
                    eprintln!("shoal-runtime: {e}");
                    ExitCode::from(125)
                }
            };
        }
        Cmd::Kill { id, signal } => parse_signal(&signal).and_then(|s| rt.kill(&id, s)),
        Cmd::Delete { force, id } => rt.delete(&id, force),
        Cmd::Shim {
            runtime,
            runtime_name,
            runtime_root,
            bundle,
            log_max_size,
            log_max_file,
            log_compress,
            no_log,
            id,
        } => {
            let code = shim::run(&ShimArgs {
                runtime: OciRuntime::new(&runtime_name, &runtime, &runtime_root),
                id,
                bundle,
                rotation: shoal_runtime::logs::Rotation {
                    max_size: log_max_size,
                    max_files: log_max_file.max(1),
                    compress: log_compress,
                },
                discard_output: no_log,
            });
            return ExitCode::from(code as u8);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

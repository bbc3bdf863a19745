//! `shoal secret …` and `shoal config …`: create (from a file or stdin), list, inspect and
//! remove the cluster's secrets and configs; and reading a stack's secrets and configs from
//! their files or environment variables before the stack is sent.

use crate::{path_part, print_json};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use hyper::Method;
use shoal_api::secret::{FileKind, FileObject, FileObjectSpec, MAX_SIZE};
use shoal_api::stack::convert::{FileSource, StackSpec};
use shoal_api::wire::Created;
use shoal_client::Client;
use std::collections::BTreeMap;
use std::io::Read;

/// `secret …` and `config …`.
#[derive(Debug, Subcommand)]
pub enum FileCmd {
    /// Create one from a file, or from stdin with `-`.
    Create {
        /// Add a label (KEY=VALUE).
        #[arg(short, long = "label")]
        labels: Vec<String>,
        /// Its name.
        name: String,
        /// The file holding the data (`-`: stdin).
        file: String,
    },
    /// List them.
    Ls,
    /// Show them (a secret without its data).
    Inspect {
        /// Names or ids.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove them (refused while a service uses one).
    Rm {
        /// Names or ids.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

fn read_data(file: &str) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    if file == "-" {
        std::io::stdin()
            .take(MAX_SIZE as u64 + 1)
            .read_to_end(&mut data)
            .context("reading stdin")?;
    } else {
        std::fs::File::open(file)
            .with_context(|| format!("reading {file}"))?
            .take(MAX_SIZE as u64 + 1)
            .read_to_end(&mut data)
            .with_context(|| format!("reading {file}"))?;
    }
    if data.len() > MAX_SIZE {
        bail!("{file}: more than the {MAX_SIZE} bytes a secret or config may hold");
    }
    Ok(data)
}

/// Runs a `secret` or `config` command.
pub async fn run(c: &Client, kind: FileKind, cmd: FileCmd, json: bool) -> Result<()> {
    let base = format!("/v1/{}s", kind.as_str());
    match cmd {
        FileCmd::Create { labels, name, file } => {
            let mut map = BTreeMap::new();
            for l in labels {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                map.insert(k.to_owned(), v.to_owned());
            }
            let spec = FileObjectSpec {
                name,
                labels: map,
                data: read_data(&file)?,
            };
            let created: Created = c.post(&base, &spec).await?;
            println!("{}", created.id);
        }
        FileCmd::Ls => {
            let mut list: Vec<FileObject> = c.get(&base).await?;
            list.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
            if json {
                return print_json(&list);
            }
            crate::output::table(
                &["ID", "NAME", "LABELS"],
                list.iter().map(|f| {
                    vec![
                        f.id.short().to_owned(),
                        f.spec.name.clone(),
                        f.spec
                            .labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(","),
                    ]
                }),
            );
        }
        FileCmd::Inspect { names } => {
            let mut out = Vec::new();
            for n in names {
                let f: FileObject = c.get(&format!("{base}/{}", path_part(&n))).await?;
                out.push(f);
            }
            print_json(&out)?;
        }
        FileCmd::Rm { names } => {
            for n in names {
                c.send_no_content::<()>(Method::DELETE, &format!("{base}/{}", path_part(&n)), None)
                    .await
                    .with_context(|| format!("removing {kind} {n}"))?;
                println!("{n}");
            }
        }
    }
    Ok(())
}

/// Reads the data of a stack's secrets and configs from their files or environment variables.
pub fn fill_stack_files(stack: &mut StackSpec) -> Result<()> {
    for f in &mut stack.files {
        let what = format!("{} {}", f.kind, f.spec.name);
        f.spec.data = match &f.source {
            FileSource::File(path) => read_data(path).with_context(|| what.clone())?,
            FileSource::Environment(var) => std::env::var(var)
                .with_context(|| format!("{what}: environment variable {var} is not set"))?
                .into_bytes(),
            FileSource::None => continue,
        };
        if f.spec.data.len() > MAX_SIZE {
            bail!("{what}: more than the {MAX_SIZE} bytes a secret or config may hold");
        }
    }
    Ok(())
}

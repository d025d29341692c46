//! The command line: raw flags (clap) and one function per command.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::{exec, lab, state, status, topology};

#[derive(Debug, Parser)]
#[command(
    name = "netlab",
    version,
    about = "Container-style network labs over netlink, with an eBPF datapath"
)]
pub struct Cli {
    /// More logging (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the lab (the embedded tutorial lab unless -f is given); converges if it is up.
    Up {
        /// Topology file (TOML). Without it, the embedded default lab.
        #[arg(short, long)]
        file: Option<PathBuf>,
        /// Override the topology's datapath.
        #[arg(long)]
        datapath: Option<DatapathArg>,
    },
    /// Remove everything the lab created, and nothing else.
    Down {
        #[arg(long)]
        lab: Option<String>,
    },
    /// Show namespaces, links, addresses, routes, attached programs and counters.
    Status {
        #[arg(long)]
        lab: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a lab namespace.
    Exec {
        #[arg(long)]
        lab: Option<String>,
        /// Namespace of the lab.
        namespace: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DatapathArg {
    Bridge,
    Redirect,
    Iptables,
}

impl From<DatapathArg> for topology::Datapath {
    fn from(arg: DatapathArg) -> Self {
        match arg {
            DatapathArg::Bridge => topology::Datapath::Bridge,
            DatapathArg::Redirect => topology::Datapath::Redirect,
            DatapathArg::Iptables => topology::Datapath::Iptables,
        }
    }
}

impl Command {
    pub fn execute(self) -> Result<ExitCode> {
        match self {
            Command::Up { file, datapath } => up(file, datapath),
            Command::Down { lab } => down(lab),
            Command::Status { lab, json } => show_status(lab, json),
            Command::Exec {
                lab,
                namespace,
                command,
            } => run_exec(lab, &namespace, &command),
        }
    }
}

fn up(file: Option<PathBuf>, datapath: Option<DatapathArg>) -> Result<ExitCode> {
    let (text, origin) = match &file {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("reading topology {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (topology::DEFAULT_LAB.to_owned(), "<default lab>".to_owned()),
    };
    let mut topo = topology::parse(&text, &origin)?;
    if let Some(datapath) = datapath {
        topo.datapath = datapath.into();
    }
    let report = lab::up(&topo, &origin, &text)?;
    println!(
        "lab {} is up ({} datapath): {} created, {} already there",
        topo.name,
        topo.datapath,
        report.created.len(),
        report.kept.len()
    );
    for item in &report.created {
        println!("  + {item}");
    }
    Ok(ExitCode::SUCCESS)
}

fn down(lab: Option<String>) -> Result<ExitCode> {
    let lab = match lab {
        Some(lab) => lab,
        None => match state::resolve_lab(None) {
            Ok(lab) => lab,
            Err(err) if state::labs().is_empty() => {
                println!("{err}; nothing to remove");
                return Ok(ExitCode::SUCCESS);
            }
            Err(err) => return Err(err),
        },
    };
    let report = lab::down(&lab)?;
    println!("lab {lab} is down: {} removed", report.removed.len());
    for item in &report.removed {
        println!("  - {item}");
    }
    Ok(ExitCode::SUCCESS)
}

fn show_status(lab: Option<String>, json: bool) -> Result<ExitCode> {
    let lab = state::resolve_lab(lab.as_deref())?;
    let Some(record) = state::LabState::load(&lab)? else {
        anyhow::bail!("lab `{lab}` is not up");
    };
    let status = status::collect(&record)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status::render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

fn run_exec(lab: Option<String>, namespace: &str, command: &[String]) -> Result<ExitCode> {
    let lab = state::resolve_lab(lab.as_deref())?;
    let record = state::LabState::load(&lab)?.with_context(|| format!("lab `{lab}` is not up"))?;
    if !record.namespaces.iter().any(|n| n == namespace) {
        anyhow::bail!(
            "`{namespace}` is not a namespace of lab `{lab}` (it has: {})",
            record.namespaces.join(", ")
        );
    }
    let status = exec::exec(namespace, command)?;
    Ok(match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::from(128 + 9),
    })
}

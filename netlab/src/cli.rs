//! The command line: raw flags (clap) and one function per command.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::{conntrack, exec, lab, publish, state, status, topology, trace};

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
    /// Publish a port (as `docker run -p`), remove one, or list them; takes
    /// effect at once, without reloading programs or touching other flows.
    Publish {
        #[arg(long, global = true)]
        lab: Option<String>,
        #[command(subcommand)]
        action: PublishAction,
    },
    /// List netlab's conntrack table (as `conntrack -L`).
    Conntrack {
        #[arg(long)]
        lab: Option<String>,
        /// One JSON object per flow.
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
    /// Print packets live as they cross the lab: every hop, NAT rewrite,
    /// redirect and drop, grouped by packet. Tracing is on while this runs.
    Trace(TraceArgs),
}

#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    #[arg(long)]
    lab: Option<String>,
    /// Only packets through this namespace (repeat: any of them).
    #[arg(long, value_name = "NS")]
    netns: Vec<String>,
    /// Only packets through this interface (`NAME` or `NS/NAME`).
    #[arg(long, value_name = "IFACE")]
    iface: Vec<String>,
    /// One JSON object per event (fields documented in `netlab::trace::output`).
    #[arg(long, conflicts_with = "pcapng")]
    json: bool,
    /// Write the packets to a pcapng file (one interface per lab interface,
    /// hop, action and NAT rewrite in each packet's comment).
    #[arg(long, value_name = "FILE")]
    pcapng: Option<PathBuf>,
    /// Trace one packet in N, e.g. `1/100`.
    #[arg(long, value_name = "1/N")]
    sample: Option<String>,
    /// Bytes of each packet to capture into `--pcapng` (at most 256).
    #[arg(long, default_value_t = 128)]
    snaplen: u32,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Switch tracing off (after a reader was killed) and exit.
    #[arg(long, conflicts_with_all = ["json", "pcapng"])]
    off: bool,
    /// Filter, tcpdump-like: host/net/port/portrange/tcp/udp/icmp/iface/netns,
    /// with and/or/not and parentheses.
    filter: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum PublishAction {
    /// Forward HOST_PORT on the host's lab addresses to PORT in NAMESPACE.
    Add {
        namespace: String,
        /// HOST_PORT[:PORT][/tcp|/udp], e.g. 8080:80/tcp.
        mapping: String,
        /// Print what was done as JSON (with the datapath's update time).
        #[arg(long)]
        json: bool,
    },
    /// Stop forwarding HOST_PORT[/tcp|/udp] (established flows finish normally).
    Rm {
        port: String,
        /// Print what was done as JSON (with the datapath's update time).
        #[arg(long)]
        json: bool,
    },
    /// List the published ports.
    List {
        #[arg(long)]
        json: bool,
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
            Command::Publish { lab, action } => publish(lab, action),
            Command::Conntrack { lab, json } => show_conntrack(lab, json),
            Command::Exec {
                lab,
                namespace,
                command,
            } => run_exec(lab, &namespace, &command),
            Command::Trace(args) => run_trace(args),
        }
    }
}

fn run_trace(args: TraceArgs) -> Result<ExitCode> {
    if args.off {
        let lab = state::resolve_lab(args.lab.as_deref())?;
        trace::switch_off(&lab)?;
        println!("tracing is off in lab {lab}");
        return Ok(ExitCode::SUCCESS);
    }
    let duration = match args.duration {
        Some(s) if s.is_finite() && s > 0.0 => Some(std::time::Duration::from_secs_f64(s)),
        Some(s) => anyhow::bail!("--duration {s}: expected a positive number of seconds"),
        None => None,
    };
    let options = trace::Options {
        lab: args.lab,
        expression: args.filter.join(" "),
        netns: args.netns,
        ifaces: args.iface,
        json: args.json,
        pcapng: args.pcapng.clone(),
        sample: args.sample,
        snaplen: args.snaplen,
        count: args.count,
        duration,
    };
    let summary = trace::run(&options)?;
    if let Some(path) = &args.pcapng {
        eprintln!(
            "netlab trace: {} packets written to {}",
            summary.packets_written,
            path.display()
        );
    }
    if summary.malformed > 0 {
        eprintln!(
            "netlab trace: {} malformed records skipped",
            summary.malformed
        );
    }
    eprintln!(
        "netlab trace: {} events received, {} events lost",
        summary.events, summary.lost
    );
    Ok(ExitCode::SUCCESS)
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

fn publish(lab: Option<String>, action: PublishAction) -> Result<ExitCode> {
    let lab = state::resolve_lab(lab.as_deref())?;
    match action {
        PublishAction::Add {
            namespace,
            mapping,
            json,
        } => {
            let outcome = publish::add(&lab, namespace, &mapping)?;
            if json {
                println!("{}", serde_json::to_string(&outcome)?);
            } else {
                println!("published {}", outcome.port);
            }
        }
        PublishAction::Rm { port, json } => {
            let outcome = publish::remove(&lab, &port)?;
            if json {
                println!("{}", serde_json::to_string(&outcome)?);
            } else {
                println!(
                    "unpublished {}/{}",
                    outcome.port.host_port, outcome.port.proto
                );
            }
        }
        PublishAction::List { json } => {
            let ports = publish::list(&lab)?;
            if json {
                let records: Vec<_> = ports.iter().map(|(p, _)| p).collect();
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                for (port, backend) in &ports {
                    let backend = backend.map_or_else(|| "?".to_owned(), |a| a.to_string());
                    println!("{port}  ({backend}:{})", port.port);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show_conntrack(lab: Option<String>, json: bool) -> Result<ExitCode> {
    let lab = state::resolve_lab(lab.as_deref())?;
    let flows = conntrack::flows(&lab)?;
    if json {
        for flow in &flows {
            println!("{}", serde_json::to_string(flow)?);
        }
    } else {
        print!("{}", conntrack::render(&flows));
    }
    Ok(ExitCode::SUCCESS)
}

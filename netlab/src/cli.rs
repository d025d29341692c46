//! The command line: raw flags (clap) and one function per command.

use std::{io::Write as _, net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::{Context, Result, bail};
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};

use crate::{
    conntrack, exec, graph, lab, metrics, publish, service, state, status, sys, topology, trace,
};

/// `println!` that returns the write's error instead of panicking on it: a
/// reader that closed the pipe (`netlab conntrack | head`) ends the command
/// as a clean exit (see `main`), not a panic.
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)?
    };
}

/// `print!` likewise (see [`outln!`]).
macro_rules! out {
    ($($arg:tt)*) => {
        write!(std::io::stdout().lock(), $($arg)*)?
    };
}

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
        /// The embedded default lab with IPv6 beside IPv4 (a unique local
        /// subnet, masqueraded; on the `iptables` datapath, the one that
        /// translates IPv6 so far).
        #[arg(long, conflicts_with = "file")]
        dual_stack: bool,
        /// Override the topology's datapath.
        #[arg(long)]
        datapath: Option<DatapathArg>,
        /// Override where the world's traffic enters the eBPF datapath on
        /// the uplink (the topology's `nat.entry`): its TC hook or XDP.
        #[arg(long)]
        entry: Option<EntryArg>,
        /// Build even when a lab subnet overlaps what the host uses (its
        /// routes, addresses, nameservers, connections), with a warning.
        #[arg(long)]
        force: bool,
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
    /// Add a Service (a ClusterIP load-balanced over backends, as
    /// Kubernetes'), change one's backends, remove one, or list them.
    Service {
        #[arg(long, global = true)]
        lab: Option<String>,
        #[command(subcommand)]
        action: ServiceAction,
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
    /// Draw the lab: namespaces, bridges, veth pairs with their addresses,
    /// the uplink, published ports and masquerade. For a running lab (no
    /// -f), also the datapath in use and each link's packet counters.
    Graph {
        /// Draw this topology file instead of the running lab (or the
        /// embedded default lab when none is up).
        #[arg(short, long, value_name = "TOPOLOGY", conflicts_with = "lab")]
        file: Option<PathBuf>,
        #[arg(long)]
        lab: Option<String>,
        /// `dot` (Graphviz), `svg` (laid out by Graphviz's `dot`, which must
        /// be installed), or `mermaid` (a ```mermaid block for Markdown).
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
        /// Write here instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Serve the lab's counters to Prometheus (text exposition at
    /// /metrics), read from the datapath at each scrape.
    Metrics {
        #[arg(long)]
        lab: Option<String>,
        /// Address to listen on; loopback unless you say otherwise.
        #[arg(long, value_name = "ADDR", default_value = metrics::DEFAULT_LISTEN)]
        listen: SocketAddr,
    },
    /// Print a shell completion script (e.g. `netlab completions bash >
    /// /etc/bash_completion.d/netlab`).
    Completions { shell: CompletionShell },
    /// Print netlab's man page (roff), e.g. `netlab man > netlab.1`; with
    /// --dir, write netlab.1 and one page per command there.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Svg,
    Mermaid,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl From<CompletionShell> for clap_complete::Shell {
    fn from(shell: CompletionShell) -> Self {
        match shell {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
        }
    }
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
    /// Say when tracing starts and what the session saw as JSON lines on
    /// stderr (`netlab::trace::Notice`), for programs that drive netlab.
    #[arg(long)]
    notices_json: bool,
    /// Filter, tcpdump-like: host/net (IPv4 or IPv6), port/portrange,
    /// tcp/udp/icmp/icmp6, ip/ip6, iface/netns, with and/or/not and
    /// parentheses.
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

#[derive(Clone, Debug, Subcommand)]
pub enum ServiceAction {
    /// Serve VIP:PORT over BACKENDs (a new Service, or new backends for the
    /// one of NAME: flows to the backends kept go on, the others' are cut).
    Add {
        name: String,
        /// VIP:PORT[/tcp|/udp], the VIP inside `[nat] service_range`.
        address: String,
        /// ADDRESS:PORT or NAMESPACE:PORT, each.
        backends: Vec<String>,
        /// Also serve it on this port of the uplink's address, to this
        /// node's backends (Kubernetes' NodePort, externalTrafficPolicy
        /// Local).
        #[arg(long)]
        node_port: Option<u16>,
        /// Send each client's flows to one backend (sessionAffinity:
        /// ClientIP).
        #[arg(long)]
        affinity: bool,
        /// Print what was done as JSON (with the datapath's update time).
        #[arg(long)]
        json: bool,
    },
    /// Stop serving Service NAME; its flows are cut.
    Rm {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List the Services.
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

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EntryArg {
    Tc,
    Xdp,
}

impl From<EntryArg> for topology::Entry {
    fn from(arg: EntryArg) -> Self {
        match arg {
            EntryArg::Tc => topology::Entry::Tc,
            EntryArg::Xdp => topology::Entry::Xdp,
        }
    }
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
    /// The command's name as typed when it needs the kernel's privileges
    /// (it builds or reads the lab's kernel objects); `None` for those that
    /// only print (completions, the man page, a drawing of a file).
    fn privileged(&self) -> Option<&'static str> {
        Some(match self {
            Command::Up { .. } => "up",
            Command::Down { .. } => "down",
            Command::Status { .. } => "status",
            Command::Publish { .. } => "publish",
            Command::Service { .. } => "service",
            Command::Conntrack { .. } => "conntrack",
            Command::Exec { .. } => "exec",
            Command::Trace(_) => "trace",
            Command::Metrics { .. } => "metrics",
            Command::Graph { file: None, .. } => "graph",
            Command::Graph { file: Some(_), .. }
            | Command::Completions { .. }
            | Command::Man { .. } => return None,
        })
    }

    pub fn execute(self) -> Result<ExitCode> {
        if let Some(name) = self.privileged() {
            sys::privileges::require(name)?;
        }
        match self {
            Command::Up {
                file,
                dual_stack,
                datapath,
                entry,
                force,
            } => up(file, dual_stack, datapath, entry, force),
            Command::Down { lab } => down(lab),
            Command::Status { lab, json } => show_status(lab, json),
            Command::Publish { lab, action } => publish(lab, action),
            Command::Service { lab, action } => service(lab, action),
            Command::Conntrack { lab, json } => show_conntrack(lab, json),
            Command::Exec {
                lab,
                namespace,
                command,
            } => run_exec(lab, &namespace, &command),
            Command::Trace(args) => run_trace(args),
            Command::Graph {
                file,
                lab,
                format,
                output,
            } => draw(file, lab, format, output),
            Command::Metrics { lab, listen } => serve_metrics(lab, listen),
            Command::Completions { shell } => {
                let mut out = Vec::new();
                completions(shell, &mut out);
                std::io::stdout().write_all(&out)?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Man { dir } => man(dir),
        }
    }
}

/// The completion script for `shell`, generated from the clap definition.
pub fn completions(shell: CompletionShell, out: &mut Vec<u8>) {
    clap_complete::generate(
        clap_complete::Shell::from(shell),
        &mut Cli::command(),
        "netlab",
        out,
    );
}

/// netlab's man page (roff), generated from the clap definition.
pub fn man_page() -> Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    Ok(out)
}

fn man(dir: Option<PathBuf>) -> Result<ExitCode> {
    match dir {
        None => std::io::stdout().write_all(&man_page()?)?,
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))?;
            eprintln!("netlab: man pages written to {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn draw(
    file: Option<PathBuf>,
    lab: Option<String>,
    format: GraphFormat,
    output: Option<PathBuf>,
) -> Result<ExitCode> {
    let record = match (&file, &lab) {
        (Some(_), _) => None,
        (None, Some(lab)) => Some(state::LabState::require(lab)?),
        // No lab named: the running one if exactly one is up, else the default lab.
        (None, None) => match state::labs().as_slice() {
            [] => None,
            _ => {
                let lab = state::resolve_lab(None)?;
                state::LabState::load(&lab)?
            }
        },
    };
    let (topo, published, live) = match (&file, record) {
        (Some(path), _) => (topology::load(Some(path))?, None, None),
        (None, Some(record)) => {
            let (topo, published, live) = graph::live(&record)?;
            (topo, Some(published), Some(live))
        }
        (None, None) => (topology::default_lab()?, None, None),
    };
    let mut picture = graph::Picture::of_topology(&topo);
    if let Some(published) = published {
        picture.published = published;
    }
    picture.live = live;
    let bytes = match format {
        GraphFormat::Dot => picture.render(graph::Format::Dot).into_bytes(),
        GraphFormat::Mermaid => picture.render(graph::Format::Mermaid).into_bytes(),
        GraphFormat::Svg => graph::svg(&picture.render(graph::Format::Dot))?,
    };
    match output {
        Some(path) => {
            std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout().write_all(&bytes)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn serve_metrics(lab: Option<String>, listen: SocketAddr) -> Result<ExitCode> {
    let lab = state::resolve_lab(lab.as_deref())?;
    metrics::serve(&lab, listen)?;
    Ok(ExitCode::SUCCESS)
}

fn run_trace(args: TraceArgs) -> Result<ExitCode> {
    if args.off {
        let lab = state::resolve_lab(args.lab.as_deref())?;
        trace::switch_off(&lab)?;
        outln!("tracing is off in lab {lab}");
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
        notices_json: args.notices_json,
    };
    let summary = trace::run(&options)?;
    if args.notices_json {
        eprintln!("{}", trace::Notice::Summary(summary).to_line());
        return Ok(ExitCode::SUCCESS);
    }
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

fn up(
    file: Option<PathBuf>,
    dual_stack: bool,
    datapath: Option<DatapathArg>,
    entry: Option<EntryArg>,
    force: bool,
) -> Result<ExitCode> {
    let (text, origin) = match &file {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("reading topology {}", path.display()))?,
            path.display().to_string(),
        ),
        None if dual_stack => (
            topology::DEFAULT_LAB_DUAL_STACK.to_owned(),
            topology::DEFAULT_LAB_DUAL_STACK_ORIGIN.to_owned(),
        ),
        None => (
            topology::DEFAULT_LAB.to_owned(),
            topology::DEFAULT_LAB_ORIGIN.to_owned(),
        ),
    };
    let mut topo = topology::parse(&text, &origin)?;
    if let Some(datapath) = datapath {
        topo.datapath = datapath.into();
    }
    if let Some(entry) = entry {
        topo.nat.entry = entry.into();
    }
    if topo.nat.entry == topology::Entry::Xdp {
        if topo.datapath.family() != topology::Family::Ebpf {
            bail!(
                "entry `xdp` is an entry of the eBPF datapaths, not of `{}`",
                topo.datapath
            );
        }
        if topo.uplink_end().is_none() {
            bail!("entry `xdp` runs on the uplink: the topology names none (nat.uplink)");
        }
    }
    let overlap = if force {
        lab::HostOverlap::Warn
    } else {
        lab::HostOverlap::Refuse
    };
    let report = lab::up(&topo, &origin, &text, overlap)?;
    outln!(
        "lab {} is up ({} datapath): {} created, {} already there",
        topo.name,
        topo.datapath,
        report.created.len(),
        report.kept.len()
    );
    for item in &report.created {
        outln!("  + {item}");
    }
    Ok(ExitCode::SUCCESS)
}

fn down(lab: Option<String>) -> Result<ExitCode> {
    let lab = match lab {
        Some(lab) => lab,
        None => match state::resolve_lab(None) {
            Ok(lab) => lab,
            Err(err) if state::labs().is_empty() => {
                outln!("{err}; nothing to remove");
                return Ok(ExitCode::SUCCESS);
            }
            Err(err) => return Err(err),
        },
    };
    let report = lab::down(&lab)?;
    outln!("lab {lab} is down: {} removed", report.removed.len());
    for item in &report.removed {
        outln!("  - {item}");
    }
    Ok(ExitCode::SUCCESS)
}

fn show_status(lab: Option<String>, json: bool) -> Result<ExitCode> {
    let lab = state::resolve_lab(lab.as_deref())?;
    let record = state::LabState::require(&lab)?;
    let status = status::collect(&record)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        out!("{}", status::render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

fn run_exec(lab: Option<String>, namespace: &str, command: &[String]) -> Result<ExitCode> {
    let lab = state::resolve_lab(lab.as_deref())?;
    let record = state::LabState::require(&lab)?;
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
                outln!("{}", serde_json::to_string(&outcome)?);
            } else {
                outln!("published {}", outcome.port);
            }
        }
        PublishAction::Rm { port, json } => {
            let outcome = publish::remove(&lab, &port)?;
            if json {
                outln!("{}", serde_json::to_string(&outcome)?);
            } else {
                outln!(
                    "unpublished {}/{}",
                    outcome.port.host_port,
                    outcome.port.proto
                );
            }
        }
        PublishAction::List { json } => {
            let ports = publish::list(&lab)?;
            if json {
                let records: Vec<_> = ports.iter().map(|(p, _)| p).collect();
                outln!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                for (port, backend) in &ports {
                    let backend = backend.map_or_else(|| "?".to_owned(), |a| a.to_string());
                    outln!("{port}  ({backend}:{})", port.port);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn service(lab: Option<String>, action: ServiceAction) -> Result<ExitCode> {
    let lab = state::resolve_lab(lab.as_deref())?;
    let (outcome, json) = match action {
        ServiceAction::Add {
            name,
            address,
            backends,
            node_port,
            affinity,
            json,
        } => {
            let spec = service::ServiceSpec {
                name,
                address,
                backends,
                node_port,
                affinity,
            };
            (service::add(&lab, &spec)?, json)
        }
        ServiceAction::Rm { name, json } => (service::remove(&lab, &name)?, json),
        ServiceAction::List { json } => {
            let services = service::list(&lab)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&services)?);
            } else {
                for s in &services {
                    let backends: Vec<String> =
                        s.backends.iter().map(ToString::to_string).collect();
                    let node_port = s
                        .node_port
                        .map(|p| format!("  node port {p}"))
                        .unwrap_or_default();
                    let affinity = if s.affinity {
                        "  affinity client_ip"
                    } else {
                        ""
                    };
                    outln!("{s}  -> {}{node_port}{affinity}", backends.join(" "));
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    if json {
        outln!("{}", serde_json::to_string(&outcome)?);
    } else {
        outln!(
            "{} {} ({} backends)",
            match outcome.action.as_str() {
                "rm" => "removed",
                "update" => "updated",
                _ => "added",
            },
            outcome.service,
            outcome.service.backends.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn show_conntrack(lab: Option<String>, json: bool) -> Result<ExitCode> {
    let lab = state::resolve_lab(lab.as_deref())?;
    let flows = conntrack::flows(&lab)?;
    if json {
        for flow in &flows {
            outln!("{}", serde_json::to_string(flow)?);
        }
    } else {
        out!("{}", conntrack::render(&flows));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_know_every_command() {
        for (shell, marker) in [
            (CompletionShell::Bash, "complete -F _netlab"),
            (CompletionShell::Zsh, "#compdef netlab"),
            (CompletionShell::Fish, "complete -c netlab"),
        ] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let script = String::from_utf8(out).unwrap();
            assert!(script.contains(marker), "{shell:?}: no {marker:?}");
            for command in ["up", "graph", "metrics", "completions", "trace"] {
                assert!(script.contains(command), "{shell:?} lacks {command}");
            }
            assert!(
                script.contains("mermaid"),
                "{shell:?} lacks graph's formats"
            );
        }
    }

    #[test]
    fn man_page_lists_the_commands() {
        let page = String::from_utf8(man_page().unwrap()).unwrap();
        assert!(page.contains(".TH netlab 1"), "{page}");
        for command in ["netlab\\-graph", "netlab\\-metrics", "netlab\\-completions"] {
            assert!(page.contains(command), "no {command} in:\n{page}");
        }
    }
}

//! Execution: finds the iptables binaries of a [`Variant`], reads the rule
//! set with `-save`, and applies [`super::plan`]'s output with `-restore`.

use std::{
    env, fmt,
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{
    naming::chains,
    plan::{self, SavedTable},
};
use crate::topology::{InForce, PublishedPort, Service, Topology};

/// Chooses the iptables variant: `nft` (the default) or `legacy`.
pub const VARIANT_ENV: &str = "NETLAB_IPTABLES";
/// `-w`: how long to wait for the xtables lock another iptables holds.
const LOCK_WAIT_SECONDS: &str = "10";

/// Which kernel interface the iptables binaries drive: iptables calls these
/// its backends, `iptables-nft` and `iptables-legacy` (`Variant` rather than
/// `Backend`, which names a published port's target).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// nf_tables, through `iptables-nft*` (Debian's default `iptables`).
    #[default]
    Nft,
    /// The x_tables interface, through `iptables-legacy*`.
    Legacy,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::Nft, Variant::Legacy];

    /// Reads [`VARIANT_ENV`]; unset or empty means [`Variant::Nft`].
    pub fn from_env() -> Result<Variant> {
        match env::var(VARIANT_ENV) {
            Ok(value) if !value.is_empty() => Variant::parse(&value),
            Ok(_) | Err(env::VarError::NotPresent) => Ok(Variant::Nft),
            Err(env::VarError::NotUnicode(_)) => {
                bail!("{VARIANT_ENV} is not valid UTF-8; set it to `nft` or `legacy`")
            }
        }
    }

    pub fn parse(name: &str) -> Result<Variant> {
        match name {
            "nft" => Ok(Variant::Nft),
            "legacy" => Ok(Variant::Legacy),
            other => {
                bail!("{VARIANT_ENV}=`{other}` is not an iptables backend; use `nft` or `legacy`")
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Nft => "nft",
            Variant::Legacy => "legacy",
        }
    }

    fn other(self) -> Variant {
        match self {
            Variant::Nft => Variant::Legacy,
            Variant::Legacy => Variant::Nft,
        }
    }

    /// `iptables-nft`, `iptables-legacy-restore`, ...
    fn binary_name(self, tool: Tool) -> String {
        format!("{}-{}{}", tool.family(), self.as_str(), tool.suffix())
    }

    /// The binary's path, when it is installed.
    fn find(self, tool: Tool) -> Option<PathBuf> {
        let name = self.binary_name(tool);
        // Root's PATH has the sbin directories, but not every caller's does.
        let path = env::var_os("PATH").unwrap_or_default();
        env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
            .map(|dir| dir.join(&name))
            .find(|candidate| candidate.is_file())
    }

    fn require(self, tool: Tool) -> Result<PathBuf> {
        self.find(tool).with_context(|| {
            format!(
                "{} is not installed: the iptables datapath with backend `{self}` needs it \
                 (Debian: `apt-get install iptables`; or choose the other backend with {VARIANT_ENV}=nft|legacy)",
                self.binary_name(tool)
            )
        })
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug)]
enum Tool {
    Iptables,
    Save,
    Restore,
    /// ip6tables, its save and its restore.
    Ip6tables,
    Save6,
    Restore6,
}

impl Tool {
    fn suffix(self) -> &'static str {
        match self {
            Tool::Iptables | Tool::Ip6tables => "",
            Tool::Save | Tool::Save6 => "-save",
            Tool::Restore | Tool::Restore6 => "-restore",
        }
    }

    fn family(self) -> &'static str {
        match self {
            Tool::Ip6tables | Tool::Save6 | Tool::Restore6 => "ip6tables",
            _ => "iptables",
        }
    }
}

/// Runs a tool of `backend`, feeding `input` on stdin; returns stdout.
fn run(variant: Variant, tool: Tool, args: &[&str], input: Option<&str>) -> Result<String> {
    let binary = variant.require(tool)?;
    let shown = || format!("{} {}", binary.display(), args.join(" "));
    let mut child = Command::new(&binary)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", shown()))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .with_context(|| format!("writing the rules to {}", shown()))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", shown()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let failed_line = input.and_then(|text| failed_input_line(&stderr, text));
        bail!(
            "{} failed ({}): {}{}",
            shown(),
            output.status,
            stderr.trim(),
            failed_line
                .map(|l| format!("\n  the failing input line: {l}"))
                .unwrap_or_default()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("{} printed non-UTF-8", shown()))
}

/// iptables-restore names the input line it rejected (`line 5 failed`).
fn failed_input_line<'a>(stderr: &str, input: &'a str) -> Option<&'a str> {
    let after = stderr.split("line ").nth(1)?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    let number: usize = digits.parse().ok()?;
    input.lines().nth(number.checked_sub(1)?)
}

fn save(variant: Variant) -> Result<Vec<SavedTable>> {
    // No `-t`: listing only the tables that exist creates none.
    Ok(plan::parse_save(&run(variant, Tool::Save, &[], None)?))
}

fn restore(variant: Variant, text: &str) -> Result<()> {
    restore_with(variant, Tool::Restore, text)
}

fn restore6(variant: Variant, text: &str) -> Result<()> {
    restore_with(variant, Tool::Restore6, text)
}

/// Feeds `text` to `tool` (iptables' or ip6tables' restore), leaving what
/// it does not name alone.
fn restore_with(variant: Variant, tool: Tool, text: &str) -> Result<()> {
    log::debug!("{}-{variant}-restore --noflush:\n{text}", tool.family());
    run(
        variant,
        tool,
        &["--noflush", "-w", LOCK_WAIT_SECONDS],
        Some(text),
    )
    .map(drop)
}

/// Installs (idempotently: rerunning converges, no duplicate rules) the lab's
/// chains and the jumps into them.
pub fn install(lab: &str, topo: &Topology, in_force: &InForce<'_>, variant: Variant) -> Result<()> {
    plan::check_published(topo, in_force.published)?;
    let ours = chains(lab);
    let other = variant.other();
    if other.find(Tool::Save).is_some() {
        let found = plan::present(&save(other)?, &ours);
        if !found.is_empty() {
            bail!(
                "lab `{lab}` already has iptables chains in the {other} backend ({}); \
                 run `netlab down --lab {lab}` first, or set {VARIANT_ENV}={other}",
                found.join(", ")
            );
        }
    }
    let saved = save(variant)?;
    let mut plans = plan::plan(lab, topo, in_force);
    for plan in &mut plans {
        plan.find_stale(&saved, &ours);
    }
    let edits = plan::jump_edits(&plans, &saved, &ours);
    restore(variant, &plan::render(&plans, &edits))
        .with_context(|| format!("installing lab `{lab}`'s iptables rules ({variant} backend)"))?;
    let saved6 = save6(variant)?;
    let plans6 = plan::plan6(lab, topo, in_force.published);
    let edits6 = plan::jump_edits(&plans6, &saved6, &ours);
    restore6(variant, &plan::render(&plans6, &edits6))
        .with_context(|| format!("installing lab `{lab}`'s ip6tables rules ({variant} backend)"))
}

fn save6(variant: Variant) -> Result<Vec<SavedTable>> {
    Ok(plan::parse_save(&run(variant, Tool::Save6, &[], None)?))
}

/// Replaces the DNAT rules so they are exactly `published` (with the hairpin
/// and forwarding rules that follow them), rewriting only the lab's chains.
pub fn sync_published(
    lab: &str,
    topo: &Topology,
    in_force: &InForce<'_>,
    variant: Variant,
) -> Result<()> {
    plan::check_published(topo, in_force.published)?;
    let ours = chains(lab);
    let saved = save(variant)?;
    let found = plan::present(&saved, &ours);
    let missing: Vec<&str> = ours
        .all()
        .into_iter()
        .map(|(_, chain)| chain)
        .filter(|chain| !found.contains(chain))
        .collect();
    if !missing.is_empty() {
        bail!(
            "lab `{lab}` has no iptables chain {} in the {variant} backend: is it up with \
             datapath `iptables` (and {VARIANT_ENV} as it was at `up`)? `netlab up` reinstalls them",
            missing.join(", ")
        );
    }
    let mut plans = plan::plan(lab, topo, in_force);
    for plan in &mut plans {
        plan.find_stale(&saved, &ours);
    }
    restore(variant, &plan::render(&plans, &[]))
        .with_context(|| format!("updating lab `{lab}`'s published ports ({variant} backend)"))?;
    if topo.nat.masquerade6.is_empty() {
        return Ok(());
    }
    restore6(
        variant,
        &plan::render(&plan::plan6(lab, topo, in_force.published), &[]),
    )
    .with_context(|| {
        format!("updating lab `{lab}`'s published ports over IPv6 ({variant} backend)")
    })
}

/// Cuts the kernel's conntrack entries that a removed published port's
/// DNAT made (`conntrack -D`, from conntrack-tools, for each of the lab's
/// host addresses), so a client that keeps sending is evaluated afresh, as
/// Docker and kube-proxy do. Without the `conntrack` binary the flows run
/// until they expire: said as a warning.
pub fn cut_flows(topo: &Topology, port: &PublishedPort) -> Result<()> {
    let Some(binary) = conntrack_binary() else {
        log::warn!(
            "conntrack (conntrack-tools) is not installed: flows already open to {}/{} keep \
             going until they expire (Debian: `apt-get install conntrack`)",
            port.host_port,
            port.proto
        );
        return Ok(());
    };
    let proto = port.proto.to_string();
    let host_port = port.host_port.to_string();
    let v4 = topo
        .host_addresses()
        .map(|(_, a)| ("ipv4", a.net.addr.to_string()));
    // A lab that masquerades IPv6 publishes its ports over IPv6 too.
    let v6 = topo
        .host_addresses6()
        .filter(|_| !topo.nat.masquerade6.is_empty())
        .map(|(_, a)| ("ipv6", a.net.addr.to_string()));
    for (family, addr) in v4.chain(v6) {
        // Exit status 1 when nothing matched: not an error.
        let status = Command::new(&binary)
            .args([
                "-D",
                "-f",
                family,
                "-p",
                &proto,
                "--orig-dst",
                &addr,
                "--orig-port-dst",
                &host_port,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("starting {}", binary.display()))?;
        log::debug!("conntrack -D {proto} {addr}:{host_port}: {status}");
    }
    Ok(())
}

/// Cuts the kernel's conntrack entries of `service`'s flows to `gone` (its
/// backends removed, or all of them), as kube-proxy does for UDP; here for
/// TCP too, as the eBPF datapath cuts every flow of a removed backend.
pub fn cut_service_flows(
    _topo: &Topology,
    service: &Service,
    gone: &[std::net::SocketAddrV4],
) -> Result<()> {
    let Some(binary) = conntrack_binary() else {
        log::warn!(
            "conntrack (conntrack-tools) is not installed: flows already open to service {service} \
             keep going until they expire (Debian: `apt-get install conntrack`)"
        );
        return Ok(());
    };
    let proto = service.proto.to_string();
    for backend in gone {
        let (addr, port) = (backend.ip().to_string(), backend.port().to_string());
        for (dst, dport) in [(service.vip.to_string(), service.port.to_string())]
            .into_iter()
            .chain(service.node_port.map(|p| (String::new(), p.to_string())))
        {
            let mut args = vec![
                "-D",
                "-p",
                &proto,
                "--reply-src",
                &addr,
                "--reply-port-src",
                &port,
            ];
            if !dst.is_empty() {
                args.extend(["--orig-dst", &dst]);
            }
            args.extend(["--orig-port-dst", &dport]);
            // Exit status 1 when nothing matched: not an error.
            let status = Command::new(&binary)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .with_context(|| format!("starting {}", binary.display()))?;
            log::debug!("conntrack {args:?}: {status}");
        }
    }
    Ok(())
}

/// The `conntrack` binary of conntrack-tools, if installed.
fn conntrack_binary() -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join("conntrack"))
        .find(|candidate| candidate.is_file())
}

/// Removes the jumps and the lab's chains from every variant whose binaries
/// are installed; fine if they are already gone (`down` after a crash).
pub fn remove(lab: &str) -> Result<()> {
    let ours = chains(lab);
    let mut errors = Vec::new();
    for variant in Variant::ALL {
        if variant.find(Tool::Save).is_none() || variant.find(Tool::Restore).is_none() {
            continue;
        }
        let result = save(variant).and_then(|saved| match plan::removal(&saved, &ours) {
            Some(text) => restore(variant, &text),
            None => Ok(()),
        });
        if let Err(e) = result {
            errors.push(format!("{variant} backend: {e:#}"));
        }
        if variant.find(Tool::Save6).is_none() || variant.find(Tool::Restore6).is_none() {
            continue;
        }
        let result6 = save6(variant).and_then(|saved| match plan::removal(&saved, &ours) {
            Some(text) => restore6(variant, &text),
            None => Ok(()),
        });
        if let Err(e) = result6 {
            errors.push(format!("{variant} backend (ip6tables): {e:#}"));
        }
    }
    if !errors.is_empty() {
        bail!(
            "removing lab `{lab}`'s iptables rules: {}",
            errors.join("; ")
        );
    }
    Ok(())
}

/// The lab's chains as `iptables -t TABLE -L CHAIN -v -n -x` lists them, with
/// packet and byte counters, one listing after another; then, after a line
/// `ip6tables:`, its ip6tables chains (their names are iptables' too).
pub fn rules(lab: &str, variant: Variant) -> Result<Vec<String>> {
    let ours = chains(lab);
    // Check first: listing a missing chain can create its table.
    let saved = save(variant)?;
    let found = plan::present(&saved, &ours);
    let mut lines = Vec::new();
    for (table, chain) in ours.all() {
        if !found.contains(&chain) {
            bail!(
                "lab `{lab}` has no iptables chain {chain} in the {variant} backend's {table} table: \
                 is it up with datapath `iptables` (and {VARIANT_ENV} as it was at `up`)?"
            );
        }
        lines.extend(listing(variant, Tool::Iptables, table, chain)?);
    }
    // Without ip6tables (another backend's binaries only), IPv4's alone.
    let Ok(saved6) = save6(variant) else {
        return Ok(lines);
    };
    let mut header = false;
    for (table, chain) in [
        ("filter", &ours.fwd6),
        ("nat", &ours.dnat),
        ("nat", &ours.post),
    ] {
        let present = plan::saved_table(&saved6, table).is_some_and(|t| t.chains.contains(chain));
        if !present {
            continue;
        }
        if !std::mem::replace(&mut header, true) {
            lines.push("ip6tables:".to_owned());
        }
        lines.extend(listing(variant, Tool::Ip6tables, table, chain)?);
    }
    Ok(lines)
}

/// One chain as `TOOL -t TABLE -L CHAIN -v -n -x` lists it, blank lines left out.
fn listing(variant: Variant, tool: Tool, table: &str, chain: &str) -> Result<Vec<String>> {
    let text = run(
        variant,
        tool,
        &[
            "-w",
            LOCK_WAIT_SECONDS,
            "-t",
            table,
            "-L",
            chain,
            "-v",
            "-n",
            "-x",
        ],
        None,
    )?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_parse() {
        assert_eq!(Variant::parse("nft").unwrap(), Variant::Nft);
        assert_eq!(Variant::parse("legacy").unwrap(), Variant::Legacy);
        let err = Variant::parse("nftables").unwrap_err().to_string();
        assert!(err.contains("use `nft` or `legacy`"), "{err}");
        assert_eq!(
            Variant::Legacy.binary_name(Tool::Restore),
            "iptables-legacy-restore"
        );
        assert_eq!(Variant::Nft.binary_name(Tool::Iptables), "iptables-nft");
    }

    #[test]
    fn failed_line_is_quoted_back() {
        let input = "*nat\n:X - [0:0]\n-A X -j BOGUS\nCOMMIT\n";
        assert_eq!(
            failed_input_line("iptables-restore: line 3 failed", input),
            Some("-A X -j BOGUS")
        );
        assert_eq!(failed_input_line("something else", input), None);
    }
}

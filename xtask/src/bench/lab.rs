//! `bench up` and `bench publish`: the cost of building a lab and of
//! changing its published ports.
//!
//! `bench up` times `netlab up` + `netlab down` against the tutorial's way,
//! a shell script of `ip` commands building the same lab, in one run,
//! interleaved (netlab, ip, netlab, ip, ...) after a warm-up, and prints
//! medians and min–max with the ratio. Everything happens inside a private
//! mount + network namespace (`unshare`), so the benchmark never touches the
//! host's network or a user's lab.

use std::{fmt::Write as _, fs, path::Path, process::ExitCode};

use anyhow::{Context, Result, bail};

use super::stats::median_min_max;
use crate::{build, process::Cmd};

/// A lab shape both renderers understand: namespaces on one bridge, plus
/// optionally an `outside` namespace on its own link (the default lab).
struct Shape {
    name: &'static str,
    lab: &'static str,
    bridge: &'static str,
    gateway: &'static str,
    prefix: u8,
    /// (namespace, inner veth name, host veth name, address)
    members: Vec<(String, String, String, String)>,
    outside: bool,
}

fn default_lab() -> Shape {
    Shape {
        name: "default lab (3 namespaces)",
        lab: "default",
        bridge: "v-net-0",
        gateway: "192.168.15.5",
        prefix: 24,
        members: vec![
            (
                "red".into(),
                "veth-red".into(),
                "veth-red-br".into(),
                "192.168.15.1".into(),
            ),
            (
                "blue".into(),
                "veth-blue".into(),
                "veth-blue-br".into(),
                "192.168.15.2".into(),
            ),
        ],
        outside: true,
    }
}

fn fifty() -> Shape {
    Shape {
        name: "50 namespaces on one bridge",
        lab: "bench50",
        bridge: "br-bench",
        gateway: "10.200.0.1",
        prefix: 16,
        members: (1..=50)
            .map(|i| {
                (
                    format!("ns{i}"),
                    format!("b{i}"),
                    format!("b{i}-br"),
                    format!("10.200.{}.{}", i / 250, i % 250 + 2),
                )
            })
            .collect(),
        outside: false,
    }
}

fn topology(shape: &Shape) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "name = \"{}\"\n", shape.lab);
    for (ns, _, _, _) in &shape.members {
        let _ = writeln!(t, "[[namespace]]\nname = \"{ns}\"\n");
    }
    if shape.outside {
        let _ = writeln!(t, "[[namespace]]\nname = \"outside\"\n");
    }
    let _ = writeln!(
        t,
        "[[bridge]]\nname = \"{}\"\naddresses = [\"{}/{}\"]\n",
        shape.bridge, shape.gateway, shape.prefix
    );
    for (ns, inner, host, addr) in &shape.members {
        let _ = writeln!(
            t,
            "[[veth]]\nname = \"{inner}\"\nnetns = \"{ns}\"\naddresses = [\"{addr}/{}\"]\npeer = {{ name = \"{host}\", bridge = \"{}\" }}\n",
            shape.prefix, shape.bridge
        );
        let _ = writeln!(
            t,
            "[[route]]\nnetns = \"{ns}\"\nto = \"default\"\nvia = \"{}\"\n",
            shape.gateway
        );
    }
    if shape.outside {
        t.push_str(
            "[[veth]]\nname = \"veth-outside\"\nnetns = \"outside\"\naddresses = [\"198.18.0.2/24\"]\n\
             peer = { name = \"nl-uplink\", addresses = [\"198.18.0.1/24\"] }\n",
        );
    }
    t
}

fn ip_up_script(shape: &Shape) -> String {
    let mut s = String::from("set -e\n");
    let b = shape.bridge;
    let _ = writeln!(s, "ip link add {b} type bridge");
    let _ = writeln!(s, "ip addr add {}/{} dev {b}", shape.gateway, shape.prefix);
    let _ = writeln!(s, "ip link set {b} up");
    let mut members: Vec<(&str, &str, &str, Option<String>)> = shape
        .members
        .iter()
        .map(|(ns, i, h, a)| {
            (
                ns.as_str(),
                i.as_str(),
                h.as_str(),
                Some(format!("{a}/{}", shape.prefix)),
            )
        })
        .collect();
    if shape.outside {
        members.push(("outside", "veth-outside", "nl-uplink", None));
    }
    for (ns, inner, host, addr) in members {
        let _ = writeln!(s, "ip netns add {ns}");
        let _ = writeln!(s, "ip -n {ns} link set lo up");
        let _ = writeln!(s, "ip link add {inner} type veth peer name {host}");
        let _ = writeln!(s, "ip link set {inner} netns {ns}");
        match addr {
            Some(addr) => {
                let _ = writeln!(s, "ip link set {host} master {b} up");
                let _ = writeln!(s, "ip -n {ns} addr add {addr} dev {inner}");
                let _ = writeln!(s, "ip -n {ns} link set {inner} up");
                let _ = writeln!(s, "ip -n {ns} route add default via {}", shape.gateway);
            }
            None => {
                let _ = writeln!(s, "ip addr add 198.18.0.1/24 dev {host}");
                let _ = writeln!(s, "ip link set {host} up");
                let _ = writeln!(s, "ip -n {ns} addr add 198.18.0.2/24 dev {inner}");
                let _ = writeln!(s, "ip -n {ns} link set {inner} up");
            }
        }
    }
    s
}

/// Deletes host-side veth ends explicitly, as netlab does: `ip netns del`
/// alone destroys a namespace's devices asynchronously, and the next `up`
/// would meet the leftovers.
fn ip_down_script(shape: &Shape) -> String {
    let mut s = String::from("set -e\n");
    for (ns, _, host, _) in &shape.members {
        let _ = writeln!(s, "ip link del {host}");
        let _ = writeln!(s, "ip netns del {ns}");
    }
    if shape.outside {
        s.push_str("ip link del nl-uplink\nip netns del outside\n");
    }
    let _ = writeln!(s, "ip link del {}", shape.bridge);
    s
}

const REPETITIONS: usize = 7;

/// The driver run inside the sandbox: one warm-up pair, then interleaved
/// pairs; prints `LABEL NANOS` per timed step.
fn driver(netlab: &Path, dir: &Path) -> String {
    format!(
        r#"set -e
mount -t tmpfs none /run
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
t() {{ local label=$1; shift; local a=$(date +%s%N); "$@" >/dev/null; local b=$(date +%s%N); echo "$label $((b - a))"; }}
for i in $(seq 0 {reps}); do
  t netlab-up {netlab} up -f {dir}/lab.toml
  t netlab-down {netlab} down
  t ip-up bash {dir}/up.sh
  t ip-down bash {dir}/down.sh
done
"#,
        reps = REPETITIONS,
        netlab = netlab.display(),
        dir = dir.display()
    )
}

pub fn bench_up(workspace: &Path) -> Result<ExitCode> {
    if !crate::process::is_root()? {
        bail!("bench up creates namespaces: run it as root");
    }
    let netlab = build::build(workspace, build::Profile::Release)?;
    let dir = workspace.join("target").join("bench-up");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut table = String::from(
        "| lab | step | netlab median (min–max) | ip script median (min–max) | netlab / ip |\n|---|---|---|---|---|\n",
    );
    for shape in [default_lab(), fifty()] {
        eprintln!(
            "xtask: bench up: {} ({} interleaved runs)",
            shape.name, REPETITIONS
        );
        fs::write(dir.join("lab.toml"), topology(&shape))?;
        fs::write(dir.join("up.sh"), ip_up_script(&shape))?;
        fs::write(dir.join("down.sh"), ip_down_script(&shape))?;
        let out = Cmd::new("unshare")
            .args(["--mount", "--net", "--propagation", "private", "bash", "-c"])
            .arg(driver(&netlab, &dir))
            .run_capturing_stdout()
            .context("running the benchmark in a private namespace")?;
        let mut samples: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
        for (n, line) in out.lines().enumerate() {
            let Some((label, nanos)) = line.split_once(' ') else {
                continue;
            };
            let label = match label {
                "netlab-up" => "netlab-up",
                "netlab-down" => "netlab-down",
                "ip-up" => "ip-up",
                "ip-down" => "ip-down",
                _ => continue,
            };
            // The first pair of each kind is the warm-up.
            if n < 4 {
                continue;
            }
            let ms = nanos.trim().parse::<f64>().unwrap_or(f64::NAN) / 1e6;
            samples.entry(label).or_default().push(ms);
        }
        for (step, nl, ip) in [
            ("up", "netlab-up", "ip-up"),
            ("down", "netlab-down", "ip-down"),
        ] {
            let (nm, nmin, nmax) = median_min_max(samples.get(nl).cloned().unwrap_or_default());
            let (im, imin, imax) = median_min_max(samples.get(ip).cloned().unwrap_or_default());
            let _ = writeln!(
                table,
                "| {} | {step} | {nm:.1} ms ({nmin:.1}–{nmax:.1}) | {im:.1} ms ({imin:.1}–{imax:.1}) | {:.2} |",
                shape.name,
                nm / im
            );
        }
    }
    println!("{table}");
    println!(
        "netlab up also loads, attaches and pins its eBPF programs (counters and NAT on every veth); \
         the ip script builds links, addresses and routes only."
    );
    Ok(ExitCode::SUCCESS)
}

/// Published ports installed before the timed add/remove.
const PRESENT_PORTS: u16 = 10_000;

/// The default lab with blue publishing `PRESENT_PORTS` ports (10000..).
fn crowded_lab() -> String {
    let ports: Vec<String> = (0..PRESENT_PORTS)
        .map(|i| format!("\"{}:80/tcp\"", 10_000 + i))
        .collect();
    let mut text = topology(&default_lab());
    text = text.replacen(
        "[[namespace]]\nname = \"blue\"\n",
        &format!(
            "[[namespace]]\nname = \"blue\"\npublish = [{}]\n",
            ports.join(", ")
        ),
        1,
    );
    text.push_str("\n[nat]\nmasquerade = [\"192.168.15.0/24\"]\nuplink = \"nl-uplink\"\n");
    text
}

/// Inside the sandbox, for each round and datapath: `up` (timed: installs
/// all ports), then interleaved add/remove of one more port, then `down`.
fn publish_driver(netlab: &Path, dir: &Path) -> String {
    format!(
        r#"set -e
mount -t tmpfs none /run
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
t() {{ local label=$1; shift; local a=$(date +%s%N); "$@" >/dev/null 2>{dir}/log; local b=$(date +%s%N); echo "$label $((b - a)) $(grep -o 'updated in [0-9]*' {dir}/log | grep -o '[0-9]*$' || echo -)"; }}
for round in 1 2; do
  for dp in bridge iptables; do
    t $dp-up {netlab} up -f {dir}/crowded.toml --datapath $dp
    for i in $(seq 1 {reps}); do
      t $dp-add {netlab} -v publish add blue 30000:80/tcp
      t $dp-rm {netlab} -v publish rm 30000/tcp
    done
    {netlab} down >/dev/null
  done
done
"#,
        netlab = netlab.display(),
        dir = dir.display(),
        reps = REPETITIONS,
    )
}

pub fn bench_publish(workspace: &Path) -> Result<ExitCode> {
    if !crate::process::is_root()? {
        bail!("bench publish creates namespaces: run it as root");
    }
    let netlab = build::build(workspace, build::Profile::Release)?;
    let dir = workspace.join("target").join("bench-publish");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(dir.join("crowded.toml"), crowded_lab())?;
    eprintln!(
        "xtask: bench publish: {PRESENT_PORTS} published ports, add/remove one more, {REPETITIONS}× per round, 2 rounds"
    );
    let out = Cmd::new("unshare")
        .args(["--mount", "--net", "--propagation", "private", "bash", "-c"])
        .arg(publish_driver(&netlab, &dir))
        .run_capturing_stdout()
        .context("running the benchmark in a private namespace")?;
    let mut whole: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let mut datapath: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for line in out.lines() {
        let mut fields = line.split_whitespace();
        let (Some(label), Some(nanos), Some(update)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if let Ok(nanos) = nanos.parse::<f64>() {
            whole.entry(label.to_owned()).or_default().push(nanos / 1e6);
        }
        if let Ok(us) = update.parse::<f64>() {
            datapath.entry(label.to_owned()).or_default().push(us);
        }
    }
    let mut table = String::from(
        "| datapath | operation | whole command, median (min–max) | datapath update alone, median (min–max) |\n|---|---|---|---|\n",
    );
    for dp in ["bridge", "iptables"] {
        for (op, what) in [
            ("up", "up with 10,000 ports"),
            ("add", "add 1 port"),
            ("rm", "remove 1 port"),
        ] {
            let label = format!("{dp}-{op}");
            let (m, lo, hi) = median_min_max(whole.get(&label).cloned().unwrap_or_default());
            let update = match datapath.get(&label) {
                Some(v) if !v.is_empty() => {
                    let (m, lo, hi) = median_min_max(v.clone());
                    format!("{m:.0} µs ({lo:.0}–{hi:.0})")
                }
                _ => "-".to_owned(),
            };
            let name = if dp == "bridge" {
                "netlab eBPF (bridge)"
            } else {
                "iptables (nft)"
            };
            let _ = writeln!(
                table,
                "| {name} | {what} | {m:.1} ms ({lo:.1}–{hi:.1}) | {update} |"
            );
        }
    }
    println!("{table}");
    println!(
        "The whole command includes process start and reading/writing the lab record; \
         \"datapath update\" is the map update (eBPF) or the iptables-restore of the DNAT chain."
    );
    Ok(ExitCode::SUCCESS)
}

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
/// optionally an `outside` namespace on its own link (the uplink).
struct Shape {
    name: String,
    lab: &'static str,
    bridge: &'static str,
    gateway: &'static str,
    prefix: u8,
    /// (namespace, inner veth name, host veth name, address)
    members: Vec<(String, String, String, String)>,
    outside: bool,
    /// Written for netlab as one `[[namespace_group]]` with published ports
    /// and masquerade (the ip script builds the same links, without NAT).
    group: bool,
    /// Timed runs (after one warm-up when `warm_up`).
    runs: usize,
    warm_up: bool,
}

fn default_lab() -> Shape {
    Shape {
        name: "default lab (3 namespaces)".into(),
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
        group: false,
        runs: REPETITIONS,
        warm_up: true,
    }
}

/// `count` namespaces from one `[[namespace_group]]` on one bridge, with
/// the uplink, published ports and masquerade on.
fn scale(count: u32) -> Shape {
    let (runs, warm_up) = match count {
        0..=50 => (5, true),
        51..=250 => (2, false),
        _ => (1, false),
    };
    Shape {
        name: format!("{count} namespaces (group)"),
        lab: "scale",
        bridge: "br-scale",
        gateway: "10.200.0.1",
        prefix: 16,
        members: (1..=count)
            .map(|i| {
                let addr = std::net::Ipv4Addr::from(u32::from_be_bytes([10, 200, 0, 1]) + i);
                (
                    format!("s{i}"),
                    "eth0".to_owned(),
                    format!("s{i}-br"),
                    addr.to_string(),
                )
            })
            .collect(),
        outside: true,
        group: true,
        runs,
        warm_up,
    }
}

fn topology(shape: &Shape) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "name = \"{}\"\n", shape.lab);
    if !shape.group {
        for (ns, _, _, _) in &shape.members {
            let _ = writeln!(t, "[[namespace]]\nname = \"{ns}\"\n");
        }
    }
    if shape.outside {
        let _ = writeln!(t, "[[namespace]]\nname = \"outside\"\n");
    }
    let _ = writeln!(
        t,
        "[[bridge]]\nname = \"{}\"\naddresses = [\"{}/{}\"]\n",
        shape.bridge, shape.gateway, shape.prefix
    );
    if shape.group {
        let first = shape.members.first().map_or("", |m| m.3.as_str());
        let _ = writeln!(
            t,
            "[[namespace_group]]\nname = \"s{{n}}\"\ncount = {}\nhost_veth = \"s{{n}}-br\"\n\
             bridge = \"{}\"\naddress = \"{first}/{}\"\ndefault_via = \"{}\"\npublish = [\"20000:80/tcp\"]\n",
            shape.members.len(),
            shape.bridge,
            shape.prefix,
            shape.gateway
        );
    } else {
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
    }
    if shape.outside {
        t.push_str(
            "[[veth]]\nname = \"veth-outside\"\nnetns = \"outside\"\naddresses = [\"198.18.0.2/24\"]\n\
             peer = { name = \"nl-uplink\", addresses = [\"198.18.0.1/24\"] }\n",
        );
    }
    if shape.group {
        let _ = writeln!(
            t,
            "\n[nat]\nmasquerade = [\"{}/{}\"]\nuplink = \"nl-uplink\"",
            shape.gateway.replace(".0.1", ".0.0"),
            shape.prefix
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
        let _ = writeln!(
            s,
            "ip link add {host} type veth peer name {inner} netns {ns}"
        );
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

/// Removes the namespaces first (their veths go with them, the host ends
/// included, in the kernel's batched cleanup), then the bridge, as netlab
/// does; waits for the host ends to be gone, so the next `up` never meets
/// leftovers.
fn ip_down_script(shape: &Shape) -> String {
    let mut s = String::from("set -e\n");
    for (ns, _, _, _) in &shape.members {
        let _ = writeln!(s, "ip netns del {ns}");
    }
    if shape.outside {
        s.push_str("ip netns del outside\n");
    }
    let _ = writeln!(s, "ip link del {}", shape.bridge);
    s.push_str(
        "for i in $(seq 500); do ip -o link show type veth | grep -q . || break; sleep 0.01; done\n",
    );
    s
}

const REPETITIONS: usize = 7;

/// The driver run inside the sandbox: optionally one warm-up pair, then
/// interleaved pairs; prints `LABEL NANOS PEAK_RSS_KB` per timed step.
fn driver(netlab: &Path, dir: &Path, lab: &str, runs: usize, warm_up: bool) -> String {
    format!(
        r#"set -e
mount -t tmpfs none /run
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
t() {{ local label=$1; shift; local a=$(date +%s%N); /usr/bin/time -f %M -o {dir}/rss "$@" >/dev/null; local b=$(date +%s%N); echo "$label $((b - a)) $(tail -1 {dir}/rss)"; }}
for i in $(seq {first} {runs}); do
  t netlab-up {netlab} up -f {dir}/lab.toml
  t netlab-up-again {netlab} up -f {dir}/lab.toml
  t netlab-down {netlab} down --lab {lab}
  t ip-up bash {dir}/up.sh
  t ip-down bash {dir}/down.sh
done
"#,
        first = if warm_up { 0 } else { 1 },
        netlab = netlab.display(),
        dir = dir.display()
    )
}

/// The namespace counts of the scale rows when none are given.
pub const SCALE_COUNTS: [u32; 4] = [1, 50, 250, 1000];

pub fn bench_up(workspace: &Path, counts: &[u32]) -> Result<ExitCode> {
    if !crate::process::is_root()? {
        bail!("bench up creates namespaces: run it as root");
    }
    if !Path::new("/usr/bin/time").exists() {
        bail!("bench up measures peak memory with GNU time: install the Debian package `time`");
    }
    let netlab = build::build(workspace, build::Profile::Release)?;
    let dir = workspace.join("target").join("bench-up");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut table = String::from(
        "| lab | step | netlab median (min–max) | per namespace | ip script median (min–max) | per namespace | netlab / ip | netlab peak RSS |\n|---|---|---|---|---|---|---|---|\n",
    );
    let shapes = std::iter::once(default_lab()).chain(counts.iter().map(|&n| scale(n)));
    for shape in shapes {
        eprintln!(
            "xtask: bench up: {} ({} interleaved runs{})",
            shape.name,
            shape.runs,
            if shape.warm_up {
                " after a warm-up"
            } else {
                ""
            }
        );
        fs::write(dir.join("lab.toml"), topology(&shape))?;
        fs::write(dir.join("up.sh"), ip_up_script(&shape))?;
        fs::write(dir.join("down.sh"), ip_down_script(&shape))?;
        let out = Cmd::new("unshare")
            .args(["--mount", "--net", "--propagation", "private", "bash", "-c"])
            .arg(driver(&netlab, &dir, shape.lab, shape.runs, shape.warm_up))
            .run_capturing_stdout()
            .context("running the benchmark in a private namespace")?;
        let mut samples: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
        let mut rss: std::collections::BTreeMap<String, f64> = Default::default();
        let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
        for line in out.lines() {
            let mut fields = line.split_whitespace();
            let (Some(label), Some(nanos)) = (fields.next(), fields.next()) else {
                continue;
            };
            let n = seen.entry(label.to_owned()).or_default();
            *n += 1;
            if shape.warm_up && *n == 1 {
                continue;
            }
            let ms = nanos.parse::<f64>().unwrap_or(f64::NAN) / 1e6;
            samples.entry(label.to_owned()).or_default().push(ms);
            if let Some(kb) = fields.next().and_then(|f| f.parse::<f64>().ok()) {
                let peak = rss.entry(label.to_owned()).or_default();
                *peak = peak.max(kb);
            }
        }
        // The namespaces the lab has: the members, and `outside`.
        let namespaces = (shape.members.len() + usize::from(shape.outside)) as f64;
        for (step, nl, ip) in [
            ("up", "netlab-up", Some("ip-up")),
            ("up again", "netlab-up-again", None),
            ("down", "netlab-down", Some("ip-down")),
        ] {
            let (nm, nmin, nmax) = median_min_max(samples.get(nl).cloned().unwrap_or_default());
            let rss = rss
                .get(nl)
                .map_or("-".to_owned(), |kb| format!("{:.1} MB", kb / 1024.0));
            let (ip_cells, ratio) = match ip {
                Some(ip) => {
                    let (im, imin, imax) =
                        median_min_max(samples.get(ip).cloned().unwrap_or_default());
                    (
                        format!(
                            "{im:.1} ms ({imin:.1}–{imax:.1}) | {:.2} ms",
                            im / namespaces
                        ),
                        format!("{:.2}", nm / im),
                    )
                }
                None => ("- | -".to_owned(), "-".to_owned()),
            };
            let _ = writeln!(
                table,
                "| {} | {step} | {nm:.1} ms ({nmin:.1}–{nmax:.1}) | {:.2} ms | {ip_cells} | {ratio} | {rss} |",
                shape.name,
                nm / namespaces,
            );
        }
    }
    println!("{table}");
    println!(
        "netlab up also loads, attaches and pins its eBPF programs (the NAT programs on the host \
         side of every veth, as tc filters; the cgroup programs) and, for the groups, configures \
         published ports and masquerade; the ip script builds the links, addresses and routes \
         only. \"up again\" is a second `up` on the lab that is up. Peak RSS is GNU time's \
         maximum resident set size of the netlab process.\n"
    );
    println!("{}", verifier_table(workspace)?);
    Ok(ExitCode::SUCCESS)
}

/// How many times `verifier_table` loads each program.
const VERIFY_RUNS: usize = 5;

/// The verifier's work on each TC program, loaded one at a time in a
/// private bpffs and network namespace (`netlab up` verifies the two NAT
/// programs at once, on two threads, while it builds the links; `netlab
/// trace` the trace programs).
fn verifier_table(workspace: &Path) -> Result<String> {
    let loadgen = super::build_loadgen(workspace, build::Profile::Release)?;
    let object = crate::ebpf::object_path(workspace);
    let script = format!(
        "set -e\nmount -t bpf bpf /sys/fs/bpf\nfor i in $(seq {VERIFY_RUNS}); do {} verify {} --dir /sys/fs/bpf/verify; done\n",
        loadgen.display(),
        object.display()
    );
    let out = Cmd::new("unshare")
        .args(["--mount", "--net", "--propagation", "private", "bash", "-c"])
        .arg(script)
        .run_capturing_stdout()
        .context("loading the programs in a private bpffs")?;
    let mut runs: std::collections::BTreeMap<String, (f64, Vec<f64>)> = Default::default();
    let mut order = Vec::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(insns), Some(ms)) = (
            v["program"].as_str(),
            v["verified_insns"].as_f64(),
            v["load_ms"].as_f64(),
        ) else {
            continue;
        };
        if !runs.contains_key(name) {
            order.push(name.to_owned());
        }
        let entry = runs.entry(name.to_owned()).or_default();
        entry.0 = insns;
        entry.1.push(ms);
    }
    let mut table = format!(
        "| program | instructions the verifier processed | BPF_PROG_LOAD, median of {VERIFY_RUNS} (min–max) |\n|---|---|---|\n"
    );
    for name in order {
        let (insns, times) = runs.remove(&name).unwrap_or_default();
        let (m, lo, hi) = median_min_max(times);
        let _ = writeln!(
            table,
            "| `{name}` | {insns:.0} | {m:.1} ms ({lo:.1}–{hi:.1}) |"
        );
    }
    Ok(table)
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

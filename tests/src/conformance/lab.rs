//! One datapath's run of a conformance case: a [`Sandbox`] with a lab up,
//! checksum offload off, ICMP rate limits off (both families), a capture
//! on every observation point and a frame sender in every namespace that
//! sends crafted traffic.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use super::{
    observe::{Classes, Record, describe, lab_addresses, register_crafted},
    packet::{CRAFTED_TTL, IpView, L4, parse_frame},
    scripts,
};
use crate::{Background, Output, Sandbox};

/// The default lab's addresses (netlab/src/topology/default.toml).
pub const RED: &str = "192.168.15.1";
pub const BLUE: &str = "192.168.15.2";
pub const GATEWAY: &str = "192.168.15.5";
pub const UPLINK: &str = "198.18.0.1";
pub const OUTSIDE: &str = "198.18.0.2";

/// The dual-stack lab's IPv6 addresses (netlab/src/topology/default-dual-stack.toml).
pub const RED6: &str = "fd00:15::1";
pub const BLUE6: &str = "fd00:15::2";
pub const GATEWAY6: &str = "fd00:15::5";
pub const UPLINK6: &str = "2001:2::1";
pub const OUTSIDE6: &str = "2001:2::2";

pub const DEFAULT_TOPOLOGY: &str = netlab::topology::DEFAULT_LAB;

/// Where the harness writes files inside a sandbox.
pub const SCRATCH: &str = "/run/netlab-conformance";

/// How long a background helper may live, whatever happens.
pub const LIFETIME: Duration = Duration::from_secs(300);

/// How long to wait for a helper to get ready or answer.
const SETTLE: Duration = Duration::from_secs(10);

/// After traffic, how long the capture must stay quiet before a step ends,
/// and how long a step may wait for that.
const QUIET: Duration = Duration::from_millis(150);
const QUIET_MAX: Duration = Duration::from_secs(2);

/// Where the lab's namespaces receive: (point name, namespace, interface).
pub const POINTS: [(&str, &str, &str); 3] = [
    ("red", "red", "veth-red"),
    ("blue", "blue", "veth-blue"),
    ("outside", "outside", "veth-outside"),
];

pub use crate::default_lab::in_ns;

/// `python3 -c SCRIPT ARGS...` in `netns` (None: the root namespace).
pub fn python<'a>(netns: Option<&'a str>, script: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut argv = in_ns(netns, &["python3", "-u", "-c", script]);
    argv.extend_from_slice(args);
    argv
}

struct Capture {
    point: &'static str,
    process: Background,
    /// Bytes of its output already turned into observations.
    consumed: usize,
    classes: Classes,
}

/// A lab on one datapath, observed.
pub struct ConfLab {
    pub sb: Sandbox,
    pub datapath: String,
    captures: Vec<Capture>,
    senders: BTreeMap<String, Background>,
    marks: u64,
    pub record: Record,
    /// Frames parsed so far at every point.
    pub frames: u64,
    /// Crafted packets `outside` received from the uplink's address (either
    /// family), by IP id (IPv6: flow label): (protocol, source port,
    /// destination port). How the fuzzer learns
    /// which port masquerade gave a flow, to send ICMP errors about it.
    pub at_outside: HashMap<u16, (u8, u16, u16)>,
}

impl ConfLab {
    /// The default lab on `datapath`.
    pub fn up(datapath: &str) -> Result<Self> {
        Self::up_with(datapath, None)
    }

    /// The dual-stack lab with its IPv6 subnet bridged
    /// ([`crate::default_lab::dual_stack_bridged`]) on `datapath`, on a host
    /// that routes IPv6 (as a Docker host with IPv6 does): only the
    /// datapath keeps the lab's IPv6 closed.
    pub fn up_dual_stack(datapath: &str) -> Result<Self> {
        let lab = Self::up_with(datapath, Some(&crate::default_lab::dual_stack_bridged()))?;
        lab.sb
            .ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        Ok(lab)
    }

    /// The lab of `topology` (None: the default lab) on `datapath`. Fails
    /// if `netlab up` does; see [`Self::try_up`] for a refusal that is an
    /// answer.
    pub fn up_with(datapath: &str, topology: Option<&str>) -> Result<Self> {
        match Self::try_up(datapath, topology)? {
            Ok(lab) => Ok(lab),
            Err(refused) => bail!("`netlab up` failed: {refused}"),
        }
    }

    /// As [`Self::up_with`], but a failed `netlab up` is returned as its
    /// output (with the sandbox dropped).
    pub fn try_up(datapath: &str, topology: Option<&str>) -> Result<Result<Self, Output>> {
        let sb = Sandbox::new()?;
        let out = match topology {
            None => sb.netlab(&["up", "--datapath", datapath])?,
            Some(toml) => {
                let path = format!("{SCRATCH}/topology.toml");
                sb.write_file(&path, toml)?;
                sb.netlab(&["up", "-f", &path, "--datapath", datapath])?
            }
        };
        if !out.success() {
            return Ok(Err(out));
        }
        let mut lab = Self {
            sb,
            datapath: datapath.to_owned(),
            captures: Vec::new(),
            senders: BTreeMap::new(),
            marks: 0,
            record: Record::default(),
            frames: 0,
            at_outside: HashMap::new(),
        };
        lab.prepare()?;
        Ok(Ok(lab))
    }

    fn prepare(&mut self) -> Result<()> {
        crate::default_lab::offload_off(&self.sb)?;
        // Every kernel answers every packet: a rate-limited ICMP error would
        // depend on timing, not on the datapath. (ICMPv6's limit is per
        // namespace too; its message count is IPv4's sysctl.)
        let mut places = vec![None];
        places.extend(POINTS.iter().map(|(_, netns, _)| Some(*netns)));
        for netns in places {
            self.sb.ok(&in_ns(
                netns,
                &[
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.icmp_ratelimit=0",
                    "net.ipv4.icmp_msgs_per_sec=100000",
                    "net.ipv4.icmp_msgs_burst=100000",
                    "net.ipv6.icmp.ratelimit=0",
                ],
            ))?;
        }
        for (point, netns, iface) in POINTS {
            let process = self
                .sb
                .spawn(&python(Some(netns), scripts::CAPTURE, &[iface]), LIFETIME)?;
            self.captures.push(Capture {
                point,
                process,
                consumed: 0,
                classes: Classes::default(),
            });
            let sender = self.sb.spawn(
                &python(Some(netns), scripts::SEND_FRAMES, &[iface]),
                LIFETIME,
            )?;
            self.senders.insert(netns.to_owned(), sender);
        }
        for capture in &mut self.captures {
            capture.process.wait_for("ready", SETTLE)?;
        }
        for sender in self.senders.values_mut() {
            sender.wait_for("ready", SETTLE)?;
        }
        Ok(())
    }

    /// The MAC address of `link` in `netns` (None: the root namespace).
    pub fn mac(&self, netns: Option<&str>, link: &str) -> Result<String> {
        let out = self
            .sb
            .ok(&in_ns(netns, &["ip", "-j", "link", "show", link]))?;
        let links: Value = serde_json::from_str(&out.stdout)?;
        links[0]["address"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no MAC address for {link}: {}", out.stdout))
    }

    /// Sends IP `packets` out of `netns`'s observation interface in frames
    /// to `dst_mac`, in order, and waits until they are sent.
    pub fn send(&mut self, netns: &str, dst_mac: &str, packets: &[Vec<u8>]) -> Result<()> {
        let sender = self
            .senders
            .get_mut(netns)
            .with_context(|| format!("no frame sender in `{netns}`"))?;
        for packet in packets {
            let mut hex = String::with_capacity(packet.len() * 2);
            for b in packet {
                let _ = write!(hex, "{b:02x}");
            }
            sender.send_line(&format!("send {dst_mac} {hex}"))?;
        }
        self.marks += 1;
        let mark = self.marks;
        sender.send_line(&format!("sync {mark}"))?;
        sender.wait_for(&format!("synced {mark}\n"), SETTLE)?;
        let errors: Vec<String> = sender
            .stdout()
            .lines()
            .filter(|l| l.starts_with("error"))
            .map(str::to_owned)
            .collect();
        ensure!(errors.is_empty(), "sending from {netns}: {errors:?}");
        Ok(())
    }

    /// Ends a step: waits until no point receives anything for a moment,
    /// then files what every point received since the last step under
    /// `step`. A lab address at `outside` is a violation.
    pub fn observe(&mut self, step: &str) -> Result<()> {
        let start = Instant::now();
        let mut sizes: Vec<usize> = Vec::new();
        loop {
            thread::sleep(QUIET);
            let now: Vec<usize> = self
                .captures
                .iter()
                .map(|c| c.process.stdout().len())
                .collect();
            if now == sizes || start.elapsed() > QUIET_MAX {
                break;
            }
            sizes = now;
        }
        self.marks += 1;
        let mark = format!("mark {}", self.marks);
        for capture in &mut self.captures {
            capture.process.send_line(&mark)?;
        }
        for capture in &mut self.captures {
            capture
                .process
                .wait_for(&format!("{mark}\n"), SETTLE)
                .with_context(|| format!("capture at {}", capture.point))?;
            let all = capture.process.stdout();
            let end = all[capture.consumed..]
                .find(&format!("{mark}\n"))
                .map(|at| capture.consumed + at)
                .context("mark vanished")?;
            capture.classes = Classes::default();
            let lines = self
                .record
                .seen
                .entry((step.to_owned(), capture.point.to_owned()))
                .or_default();
            // Crafted frames' flows are named first (see `register_crafted`).
            for line in all[capture.consumed..end].lines() {
                if let Some(view) = line
                    .split_once(' ')
                    .and_then(|(_, hex)| unhex(hex))
                    .as_deref()
                    .and_then(parse_frame)
                {
                    register_crafted(&view, &mut capture.classes);
                }
            }
            for line in all[capture.consumed..end].lines() {
                let Some((pkttype, hex)) = line.split_once(' ') else {
                    continue;
                };
                let (Ok(pkttype), Some(frame)) = (pkttype.parse::<u8>(), unhex(hex)) else {
                    continue;
                };
                let Some(view) = parse_frame(&frame).filter(|v| !v.is_housekeeping()) else {
                    continue;
                };
                self.frames += 1;
                let described = describe(&view, &mut capture.classes, pkttype);
                if capture.point == "outside" {
                    note_translated(&view, &mut self.at_outside);
                    for (field, addr) in lab_addresses(&view) {
                        let violation = format!(
                            "step `{step}`: outside received a packet with lab address {addr} \
                             in its {field}: {described}"
                        );
                        // A retransmission is the same leak, reported once.
                        if !self.record.violations.contains(&violation) {
                            self.record.violations.push(violation);
                        }
                    }
                }
                lines.insert(described);
            }
            capture.consumed = end + mark.len() + 1;
        }
        Ok(())
    }

    /// Files an outcome to compare between datapaths.
    pub fn note(&mut self, name: &str, value: impl Into<String>) {
        self.record.notes.insert(name.to_owned(), value.into());
    }

    /// Records a broken absolute expectation (checked on every datapath).
    pub fn require(&mut self, holds: bool, what: impl Into<String>) {
        if !holds {
            self.record.violations.push(what.into());
        }
    }

    /// Runs a Python script in `netns` (None: the root namespace).
    pub fn py(&self, netns: Option<&str>, script: &str, args: &[&str]) -> Result<Output> {
        self.sb.run(&python(netns, script, args))
    }

    /// Starts a Python server in `netns` and waits for its "ready".
    pub fn server(&self, netns: &str, script: &str, args: &[&str]) -> Result<Background> {
        let mut server = self
            .sb
            .spawn(&python(Some(netns), script, args), LIFETIME)?;
        server.wait_for("ready", SETTLE)?;
        Ok(server)
    }

    /// Output lines of a background helper starting with `prefix`.
    pub fn lines_of(process: &Background, prefix: &str) -> Vec<String> {
        process
            .stdout()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }
}

fn note_translated(view: &IpView, into: &mut HashMap<u16, (u8, u16, u16)>) {
    let src = view.src.to_string();
    if view.ttl != CRAFTED_TTL - 1 || (src != UPLINK && src != UPLINK6) {
        return;
    }
    match view.l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => {
            into.insert(view.id, (view.proto, sport, dport));
        }
        _ => {}
    }
}

fn unhex(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.trim();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

//! The record of what a lab created, under `/run/netlab/`.
//!
//! `up` writes intent *before* it creates a namespace, so `down` can finish
//! the job after `up` was killed half way. Links need no record: netlab tags
//! each link it creates with its owner (see [`crate::netlink::owner_tag`]).
//! The record also keeps the topology text, so later commands (`status`,
//! `exec`, `publish`) see the lab exactly as it was built, and what `up`
//! chose: the datapath and, for iptables, its variant.
//!
//! `/run` is a tmpfs: after a reboot the record is gone, and so is everything
//! it described.

use std::{
    collections::BTreeSet,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::iptables::Variant,
    topology::{self, Datapath, InForce, Pod, PublishedPort, Service, Topology},
};

pub const STATE_DIR: &str = "/run/netlab";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabState {
    pub lab: String,
    /// Where the topology came from (file path or `<default lab>`).
    pub origin: String,
    /// The topology text as given, re-parsed by later commands.
    pub topology: String,
    /// The datapath `up` built, which may differ from the topology's
    /// (`up --datapath`).
    pub datapath: Datapath,
    /// Namespaces this lab created (or was about to create).
    pub namespaces: Vec<String>,
    /// Set once `up` finished; a record without it is a half-built lab.
    pub complete: bool,
    /// Published ports in force: the topology's at first `up`, then as
    /// changed by `netlab publish add|rm`.
    #[serde(default)]
    pub published: Vec<PublishedPort>,
    /// Services in force: the topology's at first `up`, then as changed by
    /// `netlab service add|rm`, with their datapath ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// `net.ipv4.ip_forward` before this lab switched it on, restored by `down`.
    #[serde(default)]
    pub ip_forward_was: Option<String>,
    /// `net.ipv6.conf.all.forwarding` before this lab switched it on (a lab
    /// that masquerades IPv6), restored by `down`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6_forward_was: Option<String>,
    /// The iptables variant (`nft` or `legacy`) of an `iptables` lab.
    #[serde(default, rename = "iptables_backend")]
    pub iptables: Option<Variant>,
    /// Pods the CNI plugin attached (`[pod_network]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<Pod>,
    /// The highest ifindex of the lab's places after `up`. The datapath and
    /// the tracer key interfaces by ifindex lab-wide, so a pod's host end
    /// is made above it (0 in a record from before: ADD reads the places).
    #[serde(default)]
    pub ifindex_ceiling: u32,
    /// The last address handed to a pod: the next search starts after it,
    /// so a freed address is not reused at once (as host-local does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_last: Option<std::net::Ipv4Addr>,
}

/// Why a Service cannot be put in force when its ids run out.
const NO_ID: &str =
    "every Service id is taken: a lab holds at most 65,535 Service tables and backends";

/// Every id `service` holds (0s included).
fn service_ids(service: &Service) -> impl Iterator<Item = u16> + '_ {
    [service.ids.cluster, service.ids.node]
        .into_iter()
        .chain(service.ids.backends.iter().copied())
}

pub fn path(lab: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{lab}.json"))
}

/// The lock file of [`LabLock`].
pub fn lock_path(lab: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{lab}.lock"))
}

/// A command for a lab that is not up.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("lab `{0}` is not up")]
pub struct NotUp(pub String);

impl LabState {
    /// The lab's record; [`NotUp`] when there is none.
    pub fn require(lab: &str) -> Result<LabState> {
        LabState::load(lab)?.ok_or_else(|| NotUp(lab.to_owned()).into())
    }

    pub fn load(lab: &str) -> Result<Option<LabState>> {
        let path = path(lab);
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("reading lab record {}", path.display()))
                .map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading lab record {}", path.display())),
        }
    }

    /// Writes atomically (temp file + rename), so a crash never leaves half a record.
    pub fn save(&self) -> Result<()> {
        fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
        let path = path(&self.lab);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)?;
        let mut file = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    pub fn remove(lab: &str) -> Result<()> {
        match fs::remove_file(path(lab)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("removing the lab record"),
        }
    }

    /// Puts the topology's `services` in force (a lab's first `up`), with
    /// ids handed out in one pass.
    pub fn put_services(&mut self, services: &[Service]) -> Result<()> {
        let mut used: BTreeSet<u16> = self.services.iter().flat_map(service_ids).collect();
        let mut cursor = 1u16;
        let mut next = || -> Result<u16> {
            while used.contains(&cursor) {
                cursor = cursor.checked_add(1).context(NO_ID)?;
            }
            used.insert(cursor);
            Ok(cursor)
        };
        for service in services {
            let mut service = service.clone();
            service.ids.cluster = next()?;
            service.ids.node = if service.node_port.is_some() {
                next()?
            } else {
                0
            };
            service.ids.backends = service
                .backends
                .iter()
                .map(|_| next())
                .collect::<Result<_>>()?;
            self.services.push(service);
        }
        Ok(())
    }

    /// Puts `service` in force, replacing the Service of its name if there
    /// is one (returned), with the datapath's ids: what it keeps of the
    /// one it replaces (its tables, and each backend it still has) keeps
    /// its id, so the flows of the backends it keeps go on.
    pub fn put_service(&mut self, mut service: Service) -> Result<Option<Service>> {
        let at = self.services.iter().position(|s| s.name == service.name);
        let old = at.map(|at| self.services.remove(at));
        // The ids of every Service, the replaced one's included: an id it
        // drops is not handed out in the same change, or a new backend
        // would take a removed one's id (and its flows).
        let mut used: BTreeSet<u16> = self
            .services
            .iter()
            .chain(old.as_ref())
            .flat_map(|s| {
                [s.ids.cluster, s.ids.node]
                    .into_iter()
                    .chain(s.ids.backends.iter().copied())
            })
            .collect();
        let kept = |addr: &std::net::SocketAddrV4| {
            old.as_ref().and_then(|old| {
                old.backends
                    .iter()
                    .position(|b| b == addr)
                    .and_then(|i| old.ids.backends.get(i).copied())
            })
        };
        // What is kept first, so no new id takes a kept one.
        let keep_cluster = old.as_ref().map(|o| o.ids.cluster);
        let keep_node = old
            .as_ref()
            .filter(|_| service.node_port.is_some())
            .map(|o| o.ids.node);
        let keep_backends: Vec<Option<u16>> = service.backends.iter().map(kept).collect();
        used.extend(
            [keep_cluster, keep_node]
                .iter()
                .chain(&keep_backends)
                .flatten()
                .filter(|id| **id != 0),
        );
        let mut next = |keep: Option<u16>| -> Result<u16> {
            if let Some(id) = keep.filter(|id| *id != 0) {
                return Ok(id);
            }
            let id = (1..=u16::MAX)
                .find(|id| !used.contains(id))
                .context(NO_ID)?;
            used.insert(id);
            Ok(id)
        };
        service.ids.cluster = next(keep_cluster)?;
        service.ids.node = match service.node_port {
            Some(_) => next(keep_node)?,
            None => 0,
        };
        service.ids.backends = keep_backends
            .into_iter()
            .map(&mut next)
            .collect::<Result<_>>()?;
        match at {
            Some(at) => self.services.insert(at, service),
            None => self.services.push(service),
        }
        Ok(old)
    }

    /// The published ports and Services in force.
    pub fn in_force(&self) -> InForce<'_> {
        InForce {
            published: &self.published,
            services: &self.services,
        }
    }

    /// The lab's topology as it was built (the recorded text, with the
    /// datapath `up --datapath` chose).
    pub fn topology(&self) -> Result<Topology> {
        let mut topo = topology::parse(&self.topology, &self.origin)?;
        topo.datapath = self.datapath;
        Ok(topo)
    }

    /// Records a namespace before it is created.
    pub fn note_namespace(&mut self, name: &str) -> Result<()> {
        if !self.namespaces.iter().any(|n| n == name) {
            self.namespaces.push(name.to_owned());
            self.save()?;
        }
        Ok(())
    }
}

/// Labs that have a record on this host.
pub fn labs() -> Vec<String> {
    let Ok(entries) = fs::read_dir(STATE_DIR) else {
        return Vec::new();
    };
    let mut labs: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".json").map(str::to_owned)
        })
        .collect();
    labs.sort();
    labs
}

/// Picks the lab a command is about: the one named, else the only one up.
pub fn resolve_lab(requested: Option<&str>) -> Result<String> {
    if let Some(lab) = requested {
        return Ok(lab.to_owned());
    }
    match labs().as_slice() {
        [] => bail!("no lab is up (run `netlab up` first)"),
        [only] => Ok(only.clone()),
        many => bail!(
            "{} labs are up ({}); say which with --lab NAME",
            many.len(),
            many.join(", ")
        ),
    }
}

/// An exclusive lock on one lab, so `up`, `down` and `publish` never interleave.
pub struct LabLock {
    _file: File,
}

impl LabLock {
    pub fn acquire(lab: &str) -> Result<LabLock> {
        fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
        let path = lock_path(lab);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: plain syscall on an fd we own; released when the file closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        Ok(LabLock { _file: file })
    }
}

/// The one `netlab trace` session of a lab: held while it runs, so a second
/// one is refused with a clear error instead of silently taking the
/// first's slot (whose events would then stop, with no loss counted).
pub struct TraceLock {
    _file: File,
}

/// Another session holds the trace lock of the lab.
#[derive(Debug, thiserror::Error)]
#[error(
    "lab `{lab}` is already being traced by another `netlab trace` (pid {pid}): a lab has one \
     trace session at a time, with its own filter and ring; stop that one first, or give it \
     a filter that covers both (`or`), or read its --json output with several readers"
)]
pub struct AlreadyTraced {
    pub lab: String,
    pub pid: String,
}

/// How long [`TraceLock::acquire`] waits for a holder that is exiting.
const EXITING_HOLDER_WAIT: Duration = Duration::from_secs(2);

/// Whether process `pid` (as the lock file holds it) is on its way out:
/// gone, a zombie, or exiting (`PF_EXITING`, set once a fatal signal is
/// taken, before its files are closed).
fn exiting(pid: &str) -> bool {
    const PF_EXITING: u64 = 0x4;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // After the command name, in parentheses that may hold anything: the
    // state, then ppid, pgrp, session, tty_nr, tpgid and flags.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let dead = matches!(fields.first(), Some(&("Z" | "X" | "x")));
    let flags = fields.get(6).and_then(|f| f.parse::<u64>().ok());
    dead || flags.is_some_and(|f| f & PF_EXITING != 0)
}

impl TraceLock {
    /// Takes the lock, or says which process holds it (after waiting a
    /// moment for one that is exiting).
    pub fn acquire(lab: &str) -> Result<TraceLock> {
        fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
        let path = Path::new(STATE_DIR).join(format!("{lab}.trace.lock"));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // A session killed a moment ago still holds the lock until its
        // exit has closed its files: worth waiting for, a live one is not.
        let deadline = Instant::now() + EXITING_HOLDER_WAIT;
        // SAFETY: plain syscall on an fd we own; released when the file
        // closes, also when the process dies.
        while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::WouldBlock {
                return Err(err).with_context(|| format!("locking {}", path.display()));
            }
            let pid = fs::read_to_string(&path).unwrap_or_default();
            let pid = pid.trim();
            if !(exiting(pid) && Instant::now() < deadline) {
                return Err(AlreadyTraced {
                    lab: lab.to_owned(),
                    pid: pid.to_owned(),
                }
                .into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        file.set_len(0)?;
        file.write_all(std::process::id().to_string().as_bytes())?;
        Ok(TraceLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Proto;

    fn web(backends: &[&str], node_port: Option<u16>) -> Service {
        Service {
            name: "web".into(),
            vip: "10.96.0.10".parse().unwrap(),
            port: 80,
            proto: Proto::Tcp,
            backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
            node_port,
            affinity: false,
            ids: topology::ServiceIds::default(),
        }
    }

    #[test]
    fn a_running_process_is_not_exiting_and_a_gone_one_is() {
        assert!(!exiting(&std::process::id().to_string()));
        // Beyond pid_max (at most 2^22): no such process.
        assert!(exiting("99999999"));
        assert!(!exiting(""));
        assert!(!exiting("../1"));
    }

    #[test]
    fn a_service_keeps_the_ids_of_what_it_keeps() {
        let mut state = LabState::default();
        assert!(
            state
                .put_service(web(&["10.0.0.1:80", "10.0.0.2:80"], None))
                .unwrap()
                .is_none()
        );
        let first = state.services[0].ids.clone();
        assert_eq!(first.node, 0, "no node port, no node table");
        let all = [first.cluster, first.backends[0], first.backends[1]];
        assert!(all.iter().all(|id| *id != 0));
        assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), 3, "{all:?}");

        // One backend kept, one replaced, a node port added.
        let old = state
            .put_service(web(&["10.0.0.3:80", "10.0.0.2:80"], Some(30080)))
            .unwrap()
            .unwrap();
        assert_eq!(old.ids, first);
        let ids = state.services[0].ids.clone();
        assert_eq!(ids.cluster, first.cluster);
        assert_eq!(ids.backends[1], first.backends[1], "the kept backend's id");
        // New ids are none of the old Service's: a new backend taking a
        // dropped one's id would keep the dropped one's flows alive.
        for new in [ids.backends[0], ids.node] {
            assert!(
                new != 0 && !all.contains(&new),
                "{new} was the old Service's: {all:?}"
            );
        }
        assert_eq!(state.services.len(), 1);

        // Another Service takes none of these ids.
        let mut other = web(&["10.0.0.2:80"], None);
        other.name = "other".into();
        state.put_service(other).unwrap();
        let taken: BTreeSet<u16> = [ids.cluster, ids.node]
            .into_iter()
            .chain(ids.backends.iter().copied())
            .collect();
        let second = &state.services[1].ids;
        assert!(!taken.contains(&second.cluster) && !taken.contains(&second.backends[0]));
    }

    /// A record as an older netlab wrote it (strings throughout) still reads.
    #[test]
    fn reads_the_string_record() {
        let text = r#"{
            "lab": "default", "origin": "<default lab>", "topology": "",
            "datapath": "iptables", "namespaces": ["red"], "complete": true,
            "published": [{"host_port": 8080, "proto": "tcp", "namespace": "blue", "port": 80}],
            "ip_forward_was": "0", "iptables_backend": "legacy"
        }"#;
        let state: LabState = serde_json::from_str(text).unwrap();
        assert_eq!(state.datapath, Datapath::Iptables);
        assert_eq!(state.iptables, Some(Variant::Legacy));
        assert_eq!(state.published[0].proto, Proto::Tcp);
        let back: LabState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(back, state);
        assert!(
            serde_json::to_string(&state)
                .unwrap()
                .contains(r#""iptables_backend":"legacy""#)
        );
    }
}

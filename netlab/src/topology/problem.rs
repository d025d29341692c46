//! What is wrong with a topology: one [`Problem`] per broken rule, its
//! [`ProblemKind`], and the [`TopologyError`] that carries them. Both phases
//! (the parser and the rules) report through these.

use std::{fmt, path::PathBuf};

use super::model::Pos;

/// The class of a [`Problem`], one per rule, so callers and tests can tell
/// them apart without matching on text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProblemKind {
    /// The text is not TOML.
    Syntax,
    /// A key netlab does not know (every table denies unknown keys).
    UnknownKey,
    /// A required key is missing, a value has the wrong type, or a word is not
    /// one of the allowed ones (`datapath`).
    Schema,
    /// The lab `name` is not 1..=32 characters of `a-z`, `0-9`, `-`, `_`.
    LabName,
    /// A namespace name is empty, too long, has characters outside
    /// `A-Za-z0-9._-`, or is the reserved word `host`.
    NamespaceName,
    /// An interface name Linux would refuse (length, `/`, `:`, whitespace,
    /// `.`/`..`) or that clashes with the loopback `lo`.
    InterfaceName,
    /// Two namespaces, or two interfaces in the same namespace (bridges and
    /// host-side veth ends share the host's), with one name.
    DuplicateName,
    /// Two routes for the same destination in the same namespace.
    DuplicateRoute,
    /// A host port and protocol published twice.
    DuplicatePort,
    /// A malformed CIDR, prefix 0, or an address that is its subnet's network
    /// or broadcast address.
    Address,
    /// One IPv4 address on two interfaces.
    DuplicateAddress,
    /// Subnets of two different L2 segments overlap.
    SubnetOverlap,
    /// A malformed route destination or gateway, or a destination with host
    /// bits set.
    Route,
    /// A route's gateway is not inside any subnet of its namespace.
    Gateway,
    /// A veth end or route names a namespace that is not declared.
    UnknownNamespace,
    /// A veth end names a bridge that is not declared.
    UnknownBridge,
    /// A veth end in a namespace names a bridge (bridges are host-only).
    BridgeInNetns,
    /// `nat.uplink` is not a host-side veth end or bridge of the lab.
    UnknownUplink,
    /// Another `[nat]` setting is malformed or out of range.
    NatSetting,
    /// A published port is malformed or 0.
    Publish,
    /// A namespace publishes ports but has no address to forward them to.
    NoBackend,
    /// A lab subnet overlaps a route or address the host already has.
    HostOverlap,
    /// A `[[namespace_group]]` whose count, patterns or ranges cannot make
    /// its members (count out of range, a pattern without `{n}`, addresses
    /// or host ports that run out).
    NamespaceGroup,
    /// `[pod_network]` names no bridge with an address, a range outside
    /// its subnet, or a datapath that cannot take pods.
    PodNetwork,
    /// A `[[service]]` that is malformed, outside `[nat] service_range`,
    /// or clashes with another Service or a published port.
    Service,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Syntax => "syntax",
            ProblemKind::UnknownKey => "unknown-key",
            ProblemKind::Schema => "schema",
            ProblemKind::LabName => "lab-name",
            ProblemKind::NamespaceName => "namespace-name",
            ProblemKind::InterfaceName => "interface-name",
            ProblemKind::DuplicateName => "duplicate-name",
            ProblemKind::DuplicateRoute => "duplicate-route",
            ProblemKind::DuplicatePort => "duplicate-port",
            ProblemKind::Address => "address",
            ProblemKind::DuplicateAddress => "duplicate-address",
            ProblemKind::SubnetOverlap => "subnet-overlap",
            ProblemKind::Route => "route",
            ProblemKind::Gateway => "gateway",
            ProblemKind::UnknownNamespace => "unknown-namespace",
            ProblemKind::UnknownBridge => "unknown-bridge",
            ProblemKind::BridgeInNetns => "bridge-in-netns",
            ProblemKind::UnknownUplink => "unknown-uplink",
            ProblemKind::NatSetting => "nat-setting",
            ProblemKind::Publish => "publish",
            ProblemKind::NoBackend => "no-backend",
            ProblemKind::HostOverlap => "host-overlap",
            ProblemKind::NamespaceGroup => "namespace-group",
            ProblemKind::PodNetwork => "pod-network",
            ProblemKind::Service => "service",
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing wrong with a topology. `message` is complete: it names the
/// item, the rule and the position (`... (lab.toml:12:9)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    /// Where the offending item is (also inside `message`).
    pub at: Pos,
    pub message: String,
}

impl Problem {
    /// A problem whose message ends with its position: `TEXT (POS)`.
    pub(super) fn new(kind: ProblemKind, at: &Pos, text: impl fmt::Display) -> Problem {
        Problem {
            kind,
            at: at.clone(),
            message: format!("{text} ({at})"),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The topology file could not be read.
    #[error("cannot read topology file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The topology is invalid (or clashes with the host): one line per
    /// problem, in file order.
    #[error("{}", ProblemLines(problems))]
    Invalid { problems: Vec<Problem> },
}

impl TopologyError {
    /// Every problem found; empty for [`TopologyError::Read`].
    pub fn problems(&self) -> &[Problem] {
        match self {
            TopologyError::Read { .. } => &[],
            TopologyError::Invalid { problems } => problems,
        }
    }

    /// The kinds of [`Self::problems`], in the same order.
    pub fn kinds(&self) -> Vec<ProblemKind> {
        self.problems().iter().map(|p| p.kind).collect()
    }

    pub fn has(&self, kind: ProblemKind) -> bool {
        self.problems().iter().any(|p| p.kind == kind)
    }
}

struct ProblemLines<'a>(&'a [Problem]);

impl fmt::Display for ProblemLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&problem.message)?;
        }
        Ok(())
    }
}

pub(super) const CONNTRACK_MIN: u32 = 1024;
pub(super) const CONNTRACK_MAX: u32 = 16 * 1024 * 1024;

/// The message for a `conntrack_size` outside its range (also used by the
/// parser for values that do not even fit a u32).
pub(super) fn conntrack_size_text(value: impl fmt::Display) -> String {
    format!("nat.conntrack_size {value} is outside {CONNTRACK_MIN}..={CONNTRACK_MAX}")
}

/// File order: by line and column (problems without a position first),
/// keeping the rule order for problems at the same place.
pub(super) fn sort(problems: &mut [Problem]) {
    problems.sort_by_key(|p| (p.at.line, p.at.column));
}

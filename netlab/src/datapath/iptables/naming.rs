//! The lab's chain names (see the [module doc](super) for the rule on long names).

/// iptables' limit on a chain name.
pub const MAX_CHAIN_NAME: usize = 28;

/// The lab's own chains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chains {
    /// `nat`: published ports.
    pub dnat: String,
    /// `nat`: masquerade and hairpin.
    pub post: String,
    /// `filter`: forwarding for the lab.
    pub fwd: String,
    /// ip6tables' `filter`: the lab closed for IPv6 (ip6tables' `nat`
    /// reuses `dnat` and `post`).
    pub fwd6: String,
    /// `nat`: the Services' ClusterIPs (kube-proxy's `KUBE-SERVICES`).
    pub svc: String,
    /// What the chains of one Service table and one backend start with
    /// (kube-proxy's `KUBE-SVC-*` and `KUBE-SEP-*`): see
    /// [`Chains::table`] and [`Chains::backend`].
    base: String,
}

impl Chains {
    pub(super) fn all(&self) -> [(&'static str, &str); 4] {
        [
            ("nat", self.dnat.as_str()),
            ("nat", self.post.as_str()),
            ("filter", self.fwd.as_str()),
            ("nat", self.svc.as_str()),
        ]
    }

    /// The chain choosing among the backends of Service table `id`.
    pub fn table(&self, id: u16) -> String {
        format!("{}-S{id}", self.base)
    }

    /// The chain sending to Service backend `id`.
    pub fn backend(&self, id: u16) -> String {
        format!("{}-E{id}", self.base)
    }

    /// Whether `chain` is one of the lab's, in iptables or ip6tables: a
    /// fixed one, or a Service table's or backend's.
    pub(super) fn contains(&self, chain: &str) -> bool {
        self.all().iter().any(|(_, c)| *c == chain)
            || chain == self.fwd6
            || self.is_service_chain(chain)
    }

    /// Whether `chain` is a Service table's or backend's chain of the lab.
    pub(super) fn is_service_chain(&self, chain: &str) -> bool {
        chain
            .strip_prefix(self.base.as_str())
            .and_then(|rest| rest.strip_prefix("-S").or_else(|| rest.strip_prefix("-E")))
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
    }
}

/// The lab's chain names (see the module doc for the rule on long names).
pub fn chains(lab: &str) -> Chains {
    const PREFIX: &str = "NL-";
    // A Service backend's chain (`-E` and a 16-bit id) is the longest.
    const LONGEST_SUFFIX: &str = "-E65535";
    const KEPT: usize = 9;
    let plain_fits = PREFIX.len() + lab.len() + LONGEST_SUFFIX.len() <= MAX_CHAIN_NAME;
    let plain_chars = !lab.is_empty()
        && lab
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    let base = if plain_fits && plain_chars {
        format!("{PREFIX}{lab}")
    } else {
        let kept: String = lab
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(KEPT)
            .collect();
        format!("{PREFIX}{kept}.{:08x}", fnv1a(lab))
    };
    Chains {
        dnat: format!("{base}-DNAT"),
        post: format!("{base}-POST"),
        fwd: format!("{base}-FWD"),
        fwd6: format!("{base}-FWD6"),
        svc: format!("{base}-SVC"),
        base,
    }
}

/// 32-bit FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |hash: u32, b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_fit_and_stay_distinct() {
        let long = "abcdefghijklmnopqrstuvwxyz012345";
        assert_eq!(long.len(), 32);
        for lab in [
            long,
            "a",
            "default",
            "abcdefghijklmnopqr",
            "abcdefghijklmnopqrs",
        ] {
            let c = chains(lab);
            let (table, backend) = (c.table(u16::MAX), c.backend(u16::MAX));
            for name in [&c.dnat, &c.post, &c.fwd, &c.fwd6, &c.svc, &table, &backend] {
                assert!(
                    name.len() <= MAX_CHAIN_NAME,
                    "{name} is {} bytes",
                    name.len()
                );
            }
        }
        assert_eq!(chains("default").dnat, "NL-default-DNAT");
        assert_eq!(
            chains("abcdefghijklmnopqr").fwd,
            "NL-abcdefghijklmnopqr-FWD"
        );
        let hashed = chains(long);
        assert!(hashed.dnat.starts_with("NL-abcdefghi."), "{}", hashed.dnat);
        assert_eq!(hashed, chains(long), "names are stable");
        let sibling = chains("abcdefghijklmnopqrstuvwxyz012346");
        assert_ne!(hashed.dnat, sibling.dnat);
        // A hashed name cannot be mistaken for a short lab's.
        assert!(hashed.dnat.contains('.') && !chains("abcdefghi").dnat.contains('.'));
        // Service chains are told from the fixed ones and other labs'.
        let c = chains("default");
        assert!(c.contains("NL-default-S12") && c.contains("NL-default-E7"));
        assert!(!c.contains("NL-default-S") && !c.contains("NL-defaultx-S1"));
        assert!(!chains("default-S1").contains("NL-default-S1-DNAT"));
    }
}

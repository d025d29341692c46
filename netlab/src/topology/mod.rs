//! The lab topology: a TOML file (or the embedded default lab) turned into a
//! validated [`Topology`].
//!
//! [`parse`] runs in two phases. First the text is read into raw structs
//! (TOML syntax, unknown keys, types, then every string that stands for a
//! value: CIDRs, gateways, published ports, the NAT port range). If anything
//! there is malformed, those problems are reported and nothing else, since the
//! rules would only trip over the holes. Otherwise every rule of
//! [`validate`] runs and all of their problems are reported together, one line
//! each, in file order, so that one edit-run cycle fixes a whole file.
//!
//! [`check_host`] is separate: it needs what the host already has (read over
//! netlink by the caller) and refuses lab subnets that would collide with it.

mod host;
pub mod model;
mod parse;
mod problem;
mod spans;
mod validate;

pub use host::{AddressInUse, HostAddress, HostAddress6, HostNetwork, HostRoute, HostRoute6};
pub use model::*;
pub use parse::service_backend;
pub use problem::{Problem, ProblemKind, TopologyError};
pub use validate::service_problems;

use std::path::Path;

/// The tutorial lab, used when no topology file is given.
pub const DEFAULT_LAB: &str = include_str!("default.toml");

/// The origin shown in error positions for [`DEFAULT_LAB`].
pub const DEFAULT_LAB_ORIGIN: &str = "<default lab>";

/// The tutorial lab with IPv6 beside IPv4 (`up --dual-stack`): the IPv4 of
/// [`DEFAULT_LAB`], a unique local IPv6 subnet masqueraded to the world's
/// `2001:2::/64`, on the `iptables` datapath (the one that translates
/// IPv6 so far).
pub const DEFAULT_LAB_DUAL_STACK: &str = include_str!("default-dual-stack.toml");

/// The origin shown in error positions for [`DEFAULT_LAB_DUAL_STACK`].
pub const DEFAULT_LAB_DUAL_STACK_ORIGIN: &str = "<default dual-stack lab>";

/// Parse and validate; `origin` is the file name shown in errors
/// (`"<default lab>"` for the embedded one).
pub fn parse(text: &str, origin: &str) -> Result<Topology, TopologyError> {
    let (topo, spans) = parse::parse(text, origin).map_err(|mut problems| {
        problem::sort(&mut problems);
        TopologyError::Invalid { problems }
    })?;
    let problems = collapse(validate::validate(&topo, &spans));
    if problems.is_empty() {
        Ok(topo)
    } else {
        Err(TopologyError::Invalid { problems })
    }
}

/// One line for a rule broken by every member of a `[[namespace_group]]`:
/// problems of one kind at one position (the group's pattern) are kept once,
/// with how many more there were. Problems come sorted by position.
fn collapse(problems: Vec<Problem>) -> Vec<Problem> {
    let mut out: Vec<(Problem, usize)> = Vec::new();
    for problem in problems {
        match out
            .iter_mut()
            .rev()
            .take_while(|(p, _)| p.at == problem.at)
            .find(|(p, _)| p.kind == problem.kind)
        {
            Some((_, more)) => *more += 1,
            None => out.push((problem, 0)),
        }
    }
    out.into_iter()
        .map(|(mut problem, more)| {
            if more > 0 {
                problem.message = format!(
                    "{} [and {more} more like it, from the same pattern]",
                    problem.message
                );
            }
            problem
        })
        .collect()
}

/// The embedded default lab, parsed and validated.
pub fn default_lab() -> Result<Topology, TopologyError> {
    parse(DEFAULT_LAB, DEFAULT_LAB_ORIGIN)
}

/// Read and validate a topology file; `None` gives the default lab.
pub fn load(path: Option<&Path>) -> Result<Topology, TopologyError> {
    let Some(path) = path else {
        return default_lab();
    };
    let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Refuse a lab subnet that overlaps a host route or host address.
///
/// Routes and addresses whose `dev` is one of `own_links` (interfaces this
/// same lab created on an earlier `up`) are ignored, and so are default routes
/// (prefix 0), so a second `up` converges.
pub fn check_host(
    topo: &Topology,
    host: &HostNetwork,
    own_links: &[String],
) -> Result<(), TopologyError> {
    let problems = validate::check_host(topo, host, own_links);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(TopologyError::Invalid { problems })
    }
}

/// Helpers shared by the unit tests of this module and its children.
#[cfg(test)]
mod testutil {
    use super::{Problem, ProblemKind};

    /// `lab.toml:LINE:COL` of a byte offset, counted here independently of
    /// the parser's own position code.
    fn pos_of(text: &str, offset: usize) -> String {
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap().chars().count() + 1;
        format!("lab.toml:{line}:{column}")
    }

    fn offset_of(text: &str, needle: &str, n: usize) -> usize {
        text.match_indices(needle)
            .nth(n)
            .unwrap_or_else(|| panic!("`{needle}` #{n} not in the fixture"))
            .0
    }

    /// Position of the first `needle` in `text`.
    pub fn at(text: &str, needle: &str) -> String {
        at_nth(text, needle, 0)
    }

    /// Position of the `n`th (0-based) `needle` in `text`.
    pub fn at_nth(text: &str, needle: &str, n: usize) -> String {
        pos_of(text, offset_of(text, needle, n))
    }

    /// Position of the quoted value in the `n`th (0-based) `key_value`, such
    /// as `name = "red"`: where the parser places the item.
    pub fn value_at(text: &str, key_value: &str, n: usize) -> String {
        let quote = key_value.find('"').unwrap();
        pos_of(text, offset_of(text, key_value, n) + quote)
    }

    /// The single problem of `text` (parsed as `lab.toml`), checked for
    /// `kind` and for mentioning every one of `needles`.
    pub fn only_problem(text: &str, kind: ProblemKind, needles: &[&str]) -> Problem {
        let err = super::parse(text, "lab.toml").unwrap_err();
        assert_eq!(err.kinds(), [kind], "{err}");
        let problem = err.problems()[0].clone();
        for needle in needles {
            assert!(
                problem.message.contains(needle),
                "`{}` lacks `{needle}`",
                problem.message
            );
        }
        problem
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// README's topology example is a lab `up` would take.
    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let section = &readme[readme.find("## Topology files").expect("the section")..];
        let start = section.find("```toml\n").expect("a TOML block") + "```toml\n".len();
        let end = start + section[start..].find("```").expect("its end");
        let topo = parse(&section[start..end], "README.md").unwrap_or_else(|e| panic!("{e}"));
        assert!(topo.pod_network.is_some());
        assert_eq!(topo.nat.uplink.as_deref(), Some("up0"));
    }

    fn net(s: &str) -> Ipv4Net {
        let (a, p) = s.split_once('/').unwrap();
        Ipv4Net {
            addr: a.parse().unwrap(),
            prefix_len: p.parse().unwrap(),
        }
    }

    #[test]
    fn backends_and_uplink_come_from_the_topology() {
        let topo = default_lab().unwrap();
        assert_eq!(
            topo.backend_addr("blue"),
            Some(Ipv4Addr::new(192, 168, 15, 2))
        );
        assert_eq!(topo.backend_addr("nosuch"), None);
        assert_eq!(topo.uplink_addr(), Some(Ipv4Addr::new(198, 18, 0, 1)));
        let declared: Vec<String> = topo
            .published_ports()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(declared, ["8080/tcp -> blue:80"]);
    }

    fn end<'t>(topo: &'t Topology, name: &str) -> &'t VethEnd {
        topo.veth_ends().find(|e| e.name == name).unwrap()
    }

    fn nets(addresses: &[Address]) -> Vec<Ipv4Net> {
        addresses.iter().map(|a| a.net).collect()
    }

    /// The dual-stack lab is the default lab plus IPv6: same names, same
    /// IPv4, same published port, same datapath; only its IPv6 differs.
    #[test]
    fn the_dual_stack_lab_is_the_default_lab_plus_ipv6() {
        let dual = parse(DEFAULT_LAB_DUAL_STACK, DEFAULT_LAB_DUAL_STACK_ORIGIN).unwrap();
        let v4 = default_lab().unwrap();
        assert_eq!(dual.datapath, v4.datapath);
        assert_eq!(dual.name, v4.name);
        let names =
            |t: &Topology| -> Vec<String> { t.namespaces.iter().map(|n| n.name.clone()).collect() };
        assert_eq!(names(&dual), names(&v4));
        let shape = |t: &Topology| {
            let bridges: Vec<(String, Vec<Ipv4Net>)> = t
                .bridges
                .iter()
                .map(|b| (b.name.clone(), b.addresses.iter().map(|a| a.net).collect()))
                .collect();
            let ends: Vec<(String, Place, Vec<Ipv4Net>)> = t
                .veth_ends()
                .map(|e| {
                    (
                        e.name.clone(),
                        e.place.clone(),
                        e.addresses.iter().map(|a| a.net).collect(),
                    )
                })
                .collect();
            let routes: Vec<(Place, Ipv4Net, std::net::Ipv4Addr)> = t
                .routes
                .iter()
                .map(|r| (r.place.clone(), r.to, r.via))
                .collect();
            (
                bridges,
                ends,
                routes,
                t.published_ports(),
                t.nat.masquerade.clone(),
            )
        };
        assert_eq!(shape(&dual), shape(&v4));
        assert_eq!(dual.nat.uplink, v4.nat.uplink);
        assert_eq!(dual.nat.masquerade6, dual.internal_subnets6());
        assert_eq!(dual.routes6.len(), 2);
    }

    #[test]
    fn default_lab_parses() {
        let topo = default_lab().unwrap();
        assert_eq!(topo.name, "default");
        assert_eq!(topo.datapath, Datapath::Bridge);
        let names: Vec<_> = topo.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["red", "blue", "outside"]);
        let published: Vec<_> = topo
            .namespaces
            .iter()
            .flat_map(|n| {
                n.publish
                    .iter()
                    .map(move |p| (n.name.as_str(), p.host_port, p.port, p.proto))
            })
            .collect();
        assert_eq!(published, [("blue", 8080, 80, Proto::Tcp)]);

        assert_eq!(topo.bridges.len(), 1);
        assert_eq!(topo.bridges[0].name, "v-net-0");
        assert_eq!(nets(&topo.bridges[0].addresses), [net("192.168.15.5/24")]);

        assert_eq!(topo.veths.len(), 3);
        let red = end(&topo, "veth-red");
        assert_eq!(red.place, Place::Netns("red".into()));
        assert_eq!(red.bridge, None);
        assert_eq!(nets(&red.addresses), [net("192.168.15.1/24")]);
        let red_br = end(&topo, "veth-red-br");
        assert_eq!(red_br.place, Place::Host);
        assert_eq!(red_br.bridge.as_deref(), Some("v-net-0"));
        assert!(red_br.addresses.is_empty());
        assert_eq!(topo.veths[0].a.name, "veth-red");
        assert_eq!(topo.veths[0].b.name, "veth-red-br");

        let blue = end(&topo, "veth-blue");
        assert_eq!(blue.place, Place::Netns("blue".into()));
        assert_eq!(nets(&blue.addresses), [net("192.168.15.2/24")]);
        assert_eq!(
            end(&topo, "veth-blue-br").bridge.as_deref(),
            Some("v-net-0")
        );

        let outside = end(&topo, "veth-outside");
        assert_eq!(outside.place, Place::Netns("outside".into()));
        assert_eq!(nets(&outside.addresses), [net("198.18.0.2/24")]);
        let uplink = end(&topo, "nl-uplink");
        assert_eq!(uplink.place, Place::Host);
        assert_eq!(uplink.bridge, None);
        assert_eq!(nets(&uplink.addresses), [net("198.18.0.1/24")]);

        assert_eq!(topo.routes.len(), 2);
        for (route, ns) in topo.routes.iter().zip(["red", "blue"]) {
            assert_eq!(route.place, Place::Netns(ns.into()));
            assert_eq!(route.to, Ipv4Net::DEFAULT);
            assert_eq!(route.via, Ipv4Addr::new(192, 168, 15, 5));
        }

        assert_eq!(topo.nat.masquerade, [net("192.168.15.0/24")]);
        assert_eq!(topo.nat.uplink.as_deref(), Some("nl-uplink"));
        assert_eq!(topo.nat.port_range, (32768, 60999));
        assert_eq!(topo.nat.conntrack_size, 65536);
    }

    #[test]
    fn default_lab_positions() {
        let topo = default_lab().unwrap();
        let red = &topo.namespaces[0];
        assert_eq!(red.at.origin, "<default lab>");
        // `name = "red"` under the first [[namespace]]; the position is the value.
        let line = DEFAULT_LAB
            .lines()
            .position(|l| l == "name = \"red\"")
            .unwrap();
        assert_eq!((red.at.line, red.at.column), (line + 1, 8));
        assert_eq!(red.at.to_string(), format!("<default lab>:{}:8", line + 1));
        // The peer name inside an inline table.
        let red_br = end(&topo, "veth-red-br");
        let line = DEFAULT_LAB
            .lines()
            .position(|l| l.starts_with("peer = { name = \"veth-red-br\""))
            .unwrap();
        assert_eq!((red_br.at.line, red_br.at.column), (line + 1, 17));
    }

    #[test]
    fn load_none_is_the_default_lab() {
        assert_eq!(load(None).unwrap(), default_lab().unwrap());
    }

    #[test]
    fn load_reads_a_file_and_names_it_in_errors() {
        let dir = std::env::temp_dir().join(format!("netlab-topology-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, DEFAULT_LAB).unwrap();
        let topo = load(Some(&good)).unwrap();
        assert_eq!(topo.namespaces[0].at.origin, good.display().to_string());

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "name = \"x\"\nbogus = 1\n").unwrap();
        let err = load(Some(&bad)).unwrap_err();
        assert_eq!(err.kinds(), [ProblemKind::UnknownKey]);
        assert!(
            err.to_string().contains(&format!("{}:2:1", bad.display())),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_missing_file_names_the_path() {
        let path = Path::new("/nonexistent/netlab/lab.toml");
        let err = load(Some(path)).unwrap_err();
        assert!(matches!(err, TopologyError::Read { .. }), "{err:?}");
        assert!(err.problems().is_empty());
        let text = err.to_string();
        assert!(text.contains("/nonexistent/netlab/lab.toml"), "{text}");
    }

    #[test]
    fn error_prints_one_line_per_problem() {
        let err = TopologyError::Invalid {
            problems: vec![
                Problem::new(ProblemKind::Address, &Pos::default(), "first"),
                Problem::new(ProblemKind::Gateway, &Pos::default(), "second"),
            ],
        };
        assert_eq!(err.to_string(), "first ()\nsecond ()");
        assert_eq!(err.kinds(), [ProblemKind::Address, ProblemKind::Gateway]);
        assert!(err.has(ProblemKind::Gateway));
        assert!(!err.has(ProblemKind::Syntax));
    }
}

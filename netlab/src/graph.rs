//! `netlab graph`: the lab as a picture.
//!
//! [`Picture`] is pure data (a topology, the published ports in force and,
//! for a running lab, its counters) and renders itself as Graphviz DOT or as
//! a Mermaid flowchart, so every drawing rule is unit-tested without
//! privileges. The layout is never ours: SVG comes from Graphviz's `dot`,
//! run as a process ([`svg`]); Mermaid lays itself out where it is shown.
//!
//! What is drawn: one cluster per place (the host, each namespace, with its
//! routes), bridges and veth ends with their addresses, each veth pair as a
//! solid edge, bridge ports as dashed edges, the uplink with what it
//! masquerades, and each published port as an arrow from where it answers
//! to the interface it forwards to. Live, the title names the datapath in
//! use and each veth edge carries the packets each end sent.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{self, Write as _},
    process::{Command, Stdio},
};

use anyhow::Result;

use crate::{
    netlink::{self, LinkCounters},
    state::LabState,
    topology::{Datapath, Iface, Place, PublishedPort, Topology, VethEnd},
};

/// The text formats; SVG is DOT through Graphviz.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Dot,
    Mermaid,
}

/// What a running lab adds to the picture.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// The datapath `up` built (it may differ from the topology file's).
    pub datapath: Datapath,
    /// The kernel's counters of the lab's interfaces (an end missing here is gone).
    pub counters: BTreeMap<Iface, LinkCounters>,
}

/// Everything drawn.
#[derive(Clone, Debug)]
pub struct Picture<'a> {
    pub topo: &'a Topology,
    pub published: Vec<PublishedPort>,
    pub live: Option<Live>,
}

impl<'a> Picture<'a> {
    /// The topology as declared: its own published ports, no counters.
    pub fn of_topology(topo: &'a Topology) -> Picture<'a> {
        Picture {
            topo,
            published: topo.published_ports(),
            live: None,
        }
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Dot => self.dot(),
            Format::Mermaid => self.mermaid(),
        }
    }

    fn title(&self) -> String {
        match &self.live {
            Some(live) => format!(
                "lab {}: {} datapath (live; packets sent by each veth end)",
                self.topo.name, live.datapath
            ),
            None => format!("lab {}: {} datapath", self.topo.name, self.topo.datapath),
        }
    }

    /// The places in drawing order: the host, then the namespaces as declared.
    fn places(&self) -> Vec<Place> {
        std::iter::once(Place::Host)
            .chain(
                self.topo
                    .namespaces
                    .iter()
                    .map(|n| Place::Netns(n.name.clone())),
            )
            .collect()
    }

    fn place_label(&self, place: &Place) -> Vec<String> {
        let mut lines = vec![match place {
            Place::Host => "host (root namespace)".to_owned(),
            Place::Netns(name) => format!("netns {name}"),
            Place::Path(path) => format!("netns {}", path.display()),
        }];
        let shown = |to: String, prefix_len: u8| {
            if prefix_len == 0 {
                "default".to_owned()
            } else {
                to
            }
        };
        for route in self.topo.routes.iter().filter(|r| &r.place == place) {
            let to = shown(route.to.to_string(), route.to.prefix_len);
            lines.push(format!("route {to} via {}", route.via));
        }
        for route in self.topo.routes6.iter().filter(|r| &r.place == place) {
            let to = shown(route.to.to_string(), route.to.prefix_len);
            lines.push(format!("route {to} via {}", route.via));
        }
        lines
    }

    /// The nodes of one place: bridges first, then veth ends, each with its
    /// label lines and whether it is a bridge.
    fn nodes(&self, place: &Place) -> Vec<Node> {
        let mut nodes = Vec::new();
        if *place == Place::Host {
            for bridge in &self.topo.bridges {
                let mut label = vec![bridge.name.clone(), "bridge".to_owned()];
                label.extend(bridge.addresses.iter().map(|a| a.net.to_string()));
                label.extend(bridge.addresses6.iter().map(|a| a.net.to_string()));
                nodes.push(Node {
                    iface: iface(place, &bridge.name),
                    label,
                    kind: NodeKind::Bridge,
                });
            }
        }
        for end in self.topo.veth_ends().filter(|e| &e.place == place) {
            let mut label = vec![end.name.clone()];
            label.extend(end.addresses.iter().map(|a| a.net.to_string()));
            label.extend(end.addresses6.iter().map(|a| a.net.to_string()));
            let uplink = *place == Place::Host && self.topo.nat.uplink.as_ref() == Some(&end.name);
            if uplink {
                label.push("uplink".to_owned());
                for net in &self.topo.nat.masquerade {
                    label.push(format!("masquerade {net}"));
                }
                for net in &self.topo.nat.masquerade6 {
                    label.push(format!("masquerade {net}"));
                }
            }
            nodes.push(Node {
                iface: iface(place, &end.name),
                label,
                kind: if uplink {
                    NodeKind::Uplink
                } else {
                    NodeKind::Veth
                },
            });
        }
        nodes
    }

    /// The veth pairs, host end first: both layouts rank an edge's first
    /// node above its second, which puts the host on top.
    fn pairs(&self) -> impl Iterator<Item = (&VethEnd, &VethEnd)> {
        self.topo.veths.iter().map(|v| {
            if v.b.place == Place::Host && v.a.place != Place::Host {
                (&v.b, &v.a)
            } else {
                (&v.a, &v.b)
            }
        })
    }

    /// A veth pair's label: `veth`, and live, what each end sent.
    fn veth_label(&self, a: &VethEnd, b: &VethEnd) -> Vec<String> {
        let mut label = vec!["veth".to_owned()];
        if let Some(live) = &self.live {
            for end in [a, b] {
                let sent = live
                    .counters
                    .get(&iface(&end.place, &end.name))
                    .map_or(0, |c| c.egress.packets);
                label.push(format!("{} sent {sent} pkts", end.name));
            }
        }
        label
    }

    /// Published ports: (from, to, label). They answer on the uplink when
    /// there is one, else on the host's lab addresses (drawn from the
    /// host cluster's first bridge or veth end).
    fn publish_edges(&self) -> Vec<(Iface, Iface, String)> {
        let from = match &self.topo.nat.uplink {
            Some(uplink) => Some(iface(&Place::Host, uplink)),
            None => self.nodes(&Place::Host).first().map(|n| n.iface.clone()),
        };
        let Some(from) = from else {
            return Vec::new();
        };
        self.published
            .iter()
            .filter_map(|port| {
                let to = self
                    .topo
                    .veth_ends()
                    .find(|e| e.place.netns() == Some(port.namespace.as_str()))?;
                let backend = self
                    .topo
                    .backend_addr(&port.namespace)
                    .map_or_else(|| port.namespace.clone(), |a| a.to_string());
                Some((
                    from.clone(),
                    iface(&to.place, &to.name),
                    format!(
                        "publish {}/{} → {backend}:{}",
                        port.host_port, port.proto, port.port
                    ),
                ))
            })
            .collect()
    }

    /// Graphviz DOT: an undirected graph, one cluster per place. Node ids
    /// are `place/iface`, which the SVG keeps in its `<title>` elements.
    fn dot(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "graph {} {{",
            dot_str(&format!("netlab {}", self.topo.name))
        );
        let _ = writeln!(
            out,
            "  graph [label={}, labelloc=t, fontname=\"Helvetica\", fontsize=14, rankdir=TB, newrank=true];",
            dot_str(&self.title())
        );
        out.push_str("  node [fontname=\"Helvetica\", fontsize=10, shape=box, style=\"rounded,filled\", fillcolor=\"#ffffff\"];\n");
        out.push_str("  edge [fontname=\"Helvetica\", fontsize=9];\n");
        for place in self.places() {
            let _ = writeln!(
                out,
                "  subgraph {} {{",
                dot_str(&format!("cluster_{place}"))
            );
            let _ = writeln!(
                out,
                "    label={}; style=\"rounded,filled\"; fillcolor=\"{}\"; color=\"#888888\";",
                dot_str(&self.place_label(&place).join("\n")),
                if place == Place::Host {
                    "#f4f4f4"
                } else {
                    "#eaf2fb"
                }
            );
            let nodes = self.nodes(&place);
            if nodes.is_empty() {
                // An empty cluster is not drawn: keep the namespace visible.
                let _ = writeln!(
                    out,
                    "    {} [label=\"(no interfaces)\", shape=plaintext, style=\"\"];",
                    dot_str(&format!("{place}/"))
                );
            }
            for node in nodes {
                let fill = match node.kind {
                    NodeKind::Bridge => "#cfe2f3",
                    NodeKind::Uplink => "#fce5cd",
                    NodeKind::Veth => "#ffffff",
                };
                let _ = writeln!(
                    out,
                    "    {} [label={}, fillcolor=\"{fill}\"{}];",
                    dot_str(&node.iface.to_string()),
                    dot_str(&node.label.join("\n")),
                    if node.kind == NodeKind::Bridge {
                        ", penwidth=2"
                    } else {
                        ""
                    }
                );
            }
            out.push_str("  }\n");
        }
        for (a, b) in self.pairs() {
            let _ = writeln!(
                out,
                "  {} -- {} [label={}, penwidth=2];",
                dot_str(&iface(&a.place, &a.name).to_string()),
                dot_str(&iface(&b.place, &b.name).to_string()),
                dot_str(&self.veth_label(a, b).join("\n"))
            );
        }
        for end in self.topo.veth_ends() {
            if let Some(bridge) = &end.bridge {
                let _ = writeln!(
                    out,
                    "  {} -- {} [style=dashed, color=\"#666666\"];",
                    dot_str(&iface(&Place::Host, bridge).to_string()),
                    dot_str(&iface(&end.place, &end.name).to_string())
                );
            }
        }
        for (from, to, label) in self.publish_edges() {
            let _ = writeln!(
                out,
                "  {} -- {} [label={}, dir=forward, style=dotted, color=\"#38761d\", fontcolor=\"#38761d\", constraint=false];",
                dot_str(&from.to_string()),
                dot_str(&to.to_string()),
                dot_str(&label)
            );
        }
        out.push_str("}\n");
        out
    }

    /// A Mermaid flowchart in a fenced block, ready for a Markdown file.
    fn mermaid(&self) -> String {
        let mut ids: BTreeMap<Iface, String> = BTreeMap::new();
        let mut out = String::from("```mermaid\nflowchart TB\n");
        let _ = writeln!(out, "  %% {}", self.title());
        for (p, place) in self.places().iter().enumerate() {
            let _ = writeln!(
                out,
                "  subgraph p{p}[\"{}\"]",
                mermaid_text(&self.place_label(place))
            );
            let nodes = self.nodes(place);
            if nodes.is_empty() {
                let _ = writeln!(out, "    p{p}_empty[\"(no interfaces)\"]");
            }
            for node in nodes {
                let id = format!("n{}", ids.len());
                let text = mermaid_text(&node.label);
                let _ = match node.kind {
                    NodeKind::Bridge => writeln!(out, "    {id}[[\"{text}\"]]"),
                    NodeKind::Uplink => writeln!(out, "    {id}{{{{\"{text}\"}}}}"),
                    NodeKind::Veth => writeln!(out, "    {id}([\"{text}\"])"),
                };
                ids.insert(node.iface, id);
            }
            out.push_str("  end\n");
        }
        let id = |i: &Iface| ids.get(i).cloned().unwrap_or_else(|| "missing".to_owned());
        for (a, b) in self.pairs() {
            let _ = writeln!(
                out,
                "  {} ===|\"{}\"| {}",
                id(&iface(&a.place, &a.name)),
                mermaid_text(&self.veth_label(a, b)),
                id(&iface(&b.place, &b.name))
            );
        }
        for end in self.topo.veth_ends() {
            if let Some(bridge) = &end.bridge {
                let _ = writeln!(
                    out,
                    "  {} -.- {}",
                    id(&iface(&Place::Host, bridge)),
                    id(&iface(&end.place, &end.name))
                );
            }
        }
        for (from, to, label) in self.publish_edges() {
            let _ = writeln!(
                out,
                "  {} -.->|\"{}\"| {}",
                id(&from),
                mermaid_text(&[label]),
                id(&to)
            );
        }
        out.push_str("```\n");
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeKind {
    Bridge,
    Veth,
    Uplink,
}

struct Node {
    iface: Iface,
    label: Vec<String>,
    kind: NodeKind,
}

fn iface(place: &Place, name: &str) -> Iface {
    Iface {
        place: place.clone(),
        name: name.to_owned(),
    }
}

/// A DOT quoted string; newlines become DOT's centred line breaks.
fn dot_str(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Mermaid label text: lines joined with `<br/>`, quotes as entity codes.
fn mermaid_text(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| {
            l.replace('"', "#quot;")
                .replace('<', "#lt;")
                .replace('>', "#gt;")
        })
        .collect::<Vec<_>>()
        .join("<br/>")
}

/// The picture of a running lab: its topology as built, the published
/// ports in force, and its counters.
pub fn live(state: &LabState) -> Result<(Topology, Vec<PublishedPort>, Live)> {
    let topo = state.topology()?;
    let counters = netlink::lab_counters(&topo)?;
    Ok((
        topo,
        state.published.clone(),
        Live {
            datapath: state.datapath,
            counters,
        },
    ))
}

/// Why Graphviz could not make the SVG.
#[derive(Debug, thiserror::Error)]
pub enum SvgError {
    #[error(
        "Graphviz `dot` is not installed (it lays out the SVG); install it with \
         `apt-get install graphviz`, or use `--format dot` or `--format mermaid`"
    )]
    DotMissing,
    #[error("running Graphviz `dot`: {0}")]
    Io(#[from] io::Error),
    #[error("Graphviz `dot -Tsvg` failed ({status}): {stderr}")]
    DotFailed { status: String, stderr: String },
}

/// Lays the DOT text out as SVG with Graphviz's `dot`.
pub fn svg(dot: &str) -> Result<Vec<u8>, SvgError> {
    let mut child = match Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SvgError::DotMissing),
        Err(e) => return Err(e.into()),
    };
    // dot reads all of its input before it writes: write, close, then read.
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(dot.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        return Err(SvgError::DotFailed {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {

    use crate::netlink::{Counter, LinkCounters};

    use super::*;
    use crate::topology;

    fn default_lab() -> Topology {
        topology::default_lab().unwrap()
    }

    #[test]
    fn dot_has_every_place_iface_and_link() {
        let topo = default_lab();
        let dot = Picture::of_topology(&topo).render(Format::Dot);
        for place in ["host", "red", "blue", "outside"] {
            assert!(
                dot.contains(&format!("subgraph \"cluster_{place}\"")),
                "{dot}"
            );
        }
        for link in [
            "\"host/veth-red-br\" -- \"red/veth-red\"",
            "\"host/veth-blue-br\" -- \"blue/veth-blue\"",
            "\"host/nl-uplink\" -- \"outside/veth-outside\"",
            "\"host/v-net-0\" -- \"host/veth-red-br\"",
            "\"host/v-net-0\" -- \"host/veth-blue-br\"",
        ] {
            assert!(dot.contains(link), "{link} missing:\n{dot}");
        }
        for text in [
            "192.168.15.5/24",
            "192.168.15.1/24",
            "198.18.0.1/24",
            "masquerade 192.168.15.0/24",
            "route default via 192.168.15.5",
            "bridge datapath",
        ] {
            assert!(dot.contains(text), "{text} missing:\n{dot}");
        }
        assert!(
            dot.contains(
                "\"host/nl-uplink\" -- \"blue/veth-blue\" [label=\"publish 8080/tcp → 192.168.15.2:80\""
            ),
            "{dot}"
        );
        assert!(!dot.contains("pkts"), "no counters without a live lab");
    }

    #[test]
    fn dot_shows_ipv6_beside_ipv4() {
        let topo = topology::parse(topology::DEFAULT_LAB_DUAL_STACK, "dual.toml").unwrap();
        let dot = Picture::of_topology(&topo).render(Format::Dot);
        for text in [
            "192.168.15.5/24",
            "fd00:15::5/64",
            "fd00:15::1/64",
            "2001:2::1/64",
            "masquerade 192.168.15.0/24",
            "masquerade fd00:15::/64",
            "route default via 192.168.15.5",
            "route default via fd00:15::5",
        ] {
            assert!(dot.contains(text), "{text} missing:\n{dot}");
        }
    }

    #[test]
    fn live_adds_the_datapath_and_counters() {
        let topo = default_lab();
        let mut counters = BTreeMap::new();
        counters.insert(
            iface(&Place::Netns("red".into()), "veth-red"),
            LinkCounters {
                ingress: Counter::default(),
                egress: Counter {
                    packets: 42,
                    bytes: 4200,
                },
            },
        );
        let picture = Picture {
            topo: &topo,
            published: Vec::new(),
            live: Some(Live {
                datapath: Datapath::Redirect,
                counters,
            }),
        };
        let dot = picture.render(Format::Dot);
        assert!(dot.contains("redirect datapath (live"), "{dot}");
        assert!(
            dot.contains("label=\"veth\\nveth-red-br sent 0 pkts\\nveth-red sent 42 pkts\""),
            "{dot}"
        );
        assert!(
            !dot.contains("publish"),
            "published ports come from the record"
        );
        let mermaid = picture.render(Format::Mermaid);
        assert!(mermaid.contains("veth-red sent 42 pkts"), "{mermaid}");
    }

    #[test]
    fn mermaid_is_a_fenced_flowchart_with_every_link() {
        let topo = default_lab();
        let text = Picture::of_topology(&topo).render(Format::Mermaid);
        assert!(text.starts_with("```mermaid\nflowchart TB\n"), "{text}");
        assert!(text.ends_with("```\n"));
        // 3 veth pairs, 2 bridge ports, 1 published port.
        assert_eq!(text.matches(" ===|").count(), 3, "{text}");
        assert_eq!(text.matches(" -.- ").count(), 2, "{text}");
        assert_eq!(text.matches(" -.->|").count(), 1, "{text}");
        assert_eq!(text.matches("  subgraph ").count(), 4, "{text}");
        assert!(!text.contains("missing"), "{text}");
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(dot_str("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
        assert_eq!(
            mermaid_text(&["a\"b".to_owned(), "<c>".to_owned()]),
            "a#quot;b<br/>#lt;c#gt;"
        );
    }
}

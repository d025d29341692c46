//! netlab's userspace: builds labs over netlink and drives the datapaths.
//!
//! The modules form layers; each imports only from the layers below it
//! (see ARCHITECTURE.md):
//!
//! 1. [`topology`]: the lab as validated data, and the questions asked of
//!    it (pure, unit-tested).
//! 2. Kernel adapters: [`sys`] (sysctls, mounts, clocks), [`netns`],
//!    [`netlink`], and [`pins`], the one place that knows the bpffs layout.
//! 3. [`datapath`]: the eBPF datapath (loader, typed maps, configuration)
//!    and the iptables one (naming, planning, execution), behind one seam.
//! 4. [`state`]: the record under `/run/netlab/` that survives a crash.
//! 5. Commands, none importing another: [`lab`] (up/down), [`status`],
//!    [`publish`], [`conntrack`], [`trace`], [`exec`], [`graph`],
//!    [`metrics`], and [`cni`] (the CNI plugin, another front end).
//! 6. [`cli`]: flags, dispatch and printing.

pub mod cli;
pub mod cni;
pub mod conntrack;
pub mod datapath;
pub mod exec;
pub mod graph;
pub mod lab;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod pins;
pub mod publish;
pub mod service;
pub mod state;
pub mod status;
pub mod sys;
pub mod topology;
pub mod trace;

/// The import rule of ARCHITECTURE.md, checked on the sources: every
/// `crate::` path names a module of the same layer or a lower one, and no
/// command names another command.
#[cfg(test)]
mod layers {

    use std::{
        collections::{BTreeMap, BTreeSet},
        fs,
        path::Path,
    };

    /// Each top-level module with its layer (lower imports nothing higher).
    const LAYERS: [(&str, u8); 19] = [
        ("topology", 1),
        ("sys", 2),
        ("netns", 2),
        ("netlink", 2),
        ("pins", 2),
        ("datapath", 3),
        ("state", 4),
        ("lab", 5),
        ("status", 5),
        ("publish", 5),
        ("service", 5),
        ("conntrack", 5),
        ("trace", 5),
        ("exec", 5),
        ("graph", 5),
        ("metrics", 5),
        ("cni", 5),
        ("cli", 6),
        ("main", 7),
    ];
    const COMMANDS: u8 = 5;

    fn layer(module: &str) -> u8 {
        LAYERS
            .iter()
            .find(|(name, _)| *name == module)
            .map(|(_, layer)| *layer)
            .unwrap_or_else(|| panic!("module `{module}` has no layer in LAYERS"))
    }

    /// The top-level modules a source file names through `crate::`,
    /// including those inside `use crate::{a, b::c}` groups.
    fn imports(text: &str) -> Vec<String> {
        let mut found = Vec::new();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 1;
                let mut word = String::new();
                let mut start_of_item = true;
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 {
                        break;
                    }
                    if depth == 1 && c == ',' {
                        start_of_item = true;
                        continue;
                    }
                    if start_of_item && depth == 1 {
                        if c.is_alphanumeric() || c == '_' {
                            word.push(c);
                        } else if !word.is_empty() {
                            found.push(std::mem::take(&mut word));
                            start_of_item = false;
                        }
                    }
                }
                if !word.is_empty() {
                    found.push(word);
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.push(name);
            }
        }
        found
    }

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Every source file of this crate but `lib.rs`: its path below
    /// `src/`, the top-level module it belongs to, and its text.
    fn module_files() -> Vec<(String, String, String)> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        files
            .iter()
            .filter_map(|file| {
                let relative = file.strip_prefix(&src).unwrap();
                let first = relative.components().next().unwrap();
                let module = first.as_os_str().to_str().unwrap().trim_end_matches(".rs");
                (module != "lib").then(|| {
                    (
                        relative.display().to_string(),
                        module.to_owned(),
                        fs::read_to_string(file).unwrap(),
                    )
                })
            })
            .collect()
    }

    #[test]
    fn modules_import_only_downward() {
        let mut wrong = Vec::new();
        for (relative, module, text) in module_files() {
            for import in imports(&text) {
                let (from, to) = (layer(&module), layer(&import));
                let sibling_command = from == COMMANDS && to == COMMANDS && import != module;
                if to > from || sibling_command {
                    wrong.push(format!("{relative} imports crate::{import}"));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "imports against the layers:\n{}",
            wrong.join("\n")
        );
    }

    /// A file's code: `//` comments (docs included) removed, and cut at its
    /// first `#[cfg(test)]` (tests may reach anything).
    fn code(text: &str) -> String {
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        text.lines()
            .map(|line| line.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The items of a use tree, `{`/`}` groups expanded to full paths:
    /// `a::{self, b::{c, d}}, e` gives `a::self`, `a::b::c`, `a::b::d`, `e`.
    fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
        let mut depth = 0;
        let mut start = 0;
        let mut items = Vec::new();
        for (i, c) in tree.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&tree[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        items.push(&tree[start..]);
        for item in items {
            let item: String = item.chars().filter(|c| !c.is_whitespace()).collect();
            if item.is_empty() {
                continue;
            }
            match item.find("::{") {
                Some(at) if item.ends_with('}') => {
                    let head = &item[..at];
                    expand(
                        &format!("{prefix}{head}::"),
                        &item[at + 3..item.len() - 1],
                        out,
                    );
                }
                _ => out.push(format!("{prefix}{item}")),
            }
        }
    }

    /// Every path a file's code names after `anchor` (`crate::`, `super::`),
    /// groups expanded: `use crate::{datapath::{self, ebpf::maps}}` gives
    /// `datapath::self` and `datapath::ebpf::maps`.
    fn paths(code: &str, anchor: &str) -> Vec<String> {
        let mut found = Vec::new();
        for (at, _) in code.match_indices(anchor) {
            // `super::super::x` is read from its first `super::`.
            if anchor == "super::" && code[..at].ends_with("super::") {
                continue;
            }
            let rest = &code[at + anchor.len()..];
            let mut depth = 0;
            let mut end = rest.len();
            for (i, c) in rest.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth > 0 => depth -= 1,
                    c if depth == 0 && !(c.is_alphanumeric() || c == '_' || c == ':') => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
                if depth == 0 && c == '}' {
                    end = i + 1;
                    break;
                }
            }
            let tree = rest[..end].trim_end_matches("::");
            match tree.strip_prefix('{') {
                Some(group) => expand("", group.strip_suffix('}').unwrap_or(group), &mut found),
                None => expand("", tree, &mut found),
            }
        }
        found
    }

    /// What only the datapath seam may name: the families' own code, and
    /// what tells datapaths apart.
    const FAMILY_PATHS: [&str; 2] = ["datapath::ebpf", "datapath::iptables"];
    const VARIANTS: [&str; 4] = [
        "Datapath::",
        "Family::",
        "Running::Ebpf",
        "Running::Iptables",
    ];

    #[test]
    fn commands_reach_the_datapath_through_the_seam() {
        let mut wrong = Vec::new();
        for (relative, module, text) in module_files() {
            if layer(&module) != COMMANDS {
                continue;
            }
            let code = code(&text);
            for path in paths(&code, "crate::") {
                if FAMILY_PATHS.iter().any(|f| path.starts_with(f)) {
                    wrong.push(format!("{relative} names crate::{path}"));
                }
            }
            for variant in VARIANTS {
                if code.contains(variant) {
                    wrong.push(format!("{relative} matches on {variant}"));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "commands that know which datapath runs:\n{}",
            wrong.join("\n")
        );
    }

    /// The module a source file is (`topology::parse` for
    /// `topology/parse.rs`, `pkt` for `pkt/mod.rs`); `None` for the crate root.
    fn module_of(src: &Path, file: &Path) -> Option<String> {
        let relative = file.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_str().unwrap().to_owned())
            .collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        let module = parts.join("::");
        (!matches!(module.as_str(), "lib" | "main" | "")).then_some(module)
    }

    /// The longest prefix of `path` that is a module, else `fallback`.
    fn resolve(path: &str, modules: &BTreeSet<String>, fallback: &str) -> String {
        let parts: Vec<&str> = path.split("::").collect();
        (1..=parts.len())
            .rev()
            .map(|n| parts[..n].join("::"))
            .find(|m| modules.contains(m))
            .unwrap_or_else(|| fallback.to_owned())
    }

    /// The modules a module's code names: `crate::` and `super::` paths,
    /// and its child modules by name (`mod parse;` ... `parse::parse(..)`).
    fn edges(module: &str, code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
        let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
        let mut out = BTreeSet::new();
        for path in paths(code, "crate::") {
            out.insert(resolve(&path, modules, ""));
        }
        for path in paths(code, "super::") {
            let full = if parent.is_empty() {
                path
            } else {
                format!("{parent}::{path}")
            };
            out.insert(resolve(&full, modules, parent));
        }
        for line in code.lines() {
            let Some(child) = line
                .trim()
                .trim_start_matches("pub ")
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'))
            else {
                continue;
            };
            let named = code.match_indices(&format!("{child}::")).any(|(at, _)| {
                !code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')
            });
            if named {
                out.insert(format!("{module}::{child}"));
            }
        }
        out.remove("");
        out.remove(module);
        out
    }

    #[test]
    fn no_two_modules_import_each_other() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        // netlab-ebpf cannot run `cargo test` (a no_std BPF binary): its
        // sources are checked here.
        for src in [manifest.join("src"), manifest.join("../netlab-ebpf/src")] {
            let mut files = Vec::new();
            sources(&src, &mut files);
            let modules: BTreeSet<String> =
                files.iter().filter_map(|f| module_of(&src, f)).collect();
            let mut graph = BTreeMap::new();
            for file in &files {
                let Some(module) = module_of(&src, file) else {
                    continue;
                };
                let code = code(&fs::read_to_string(file).unwrap());
                graph.insert(module.clone(), edges(&module, &code, &modules));
            }
            let mut both_ways = Vec::new();
            for (a, targets) in &graph {
                for b in targets {
                    if a < b && graph.get(b).is_some_and(|t| t.contains(a)) {
                        both_ways.push(format!("{a} <-> {b}"));
                    }
                }
            }
            assert!(
                both_ways.is_empty(),
                "modules of {} that import each other:\n{}",
                src.display(),
                both_ways.join("\n")
            );
        }
    }

    #[test]
    fn paths_and_edges_are_read() {
        assert_eq!(
            paths("use crate::{datapath::{self, ebpf::maps}, sys};", "crate::"),
            ["datapath::self", "datapath::ebpf::maps", "sys"]
        );
        assert_eq!(
            paths("let x = crate::topology::parse(a);", "crate::"),
            ["topology::parse"]
        );
        let modules: BTreeSet<String> = [
            "topology",
            "topology::parse",
            "topology::problem",
            "pkt",
            "pkt::ctx",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            edges(
                "topology::parse",
                "use super::{Problem, problem::Kind};",
                &modules
            ),
            ["topology", "topology::problem"].map(String::from).into()
        );
        assert_eq!(
            edges(
                "topology",
                "mod parse;\nfn f() { parse::parse(); }",
                &modules
            ),
            ["topology::parse"].map(String::from).into()
        );
        assert_eq!(
            edges("x", "let v = crate::pkt::ctx::value(c);", &modules),
            ["pkt::ctx"].map(String::from).into()
        );
    }

    #[test]
    fn groups_are_read() {
        assert_eq!(
            imports(
                "use crate::{\n    datapath::{self, Running},\n    netlink::{self, run_in},\n    sys,\n};"
            ),
            ["datapath", "netlink", "sys"]
        );
        assert_eq!(imports("let x = crate::topology::parse(a);"), ["topology"]);
    }
}

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
//!    [`metrics`].
//! 6. [`cli`]: flags, dispatch and printing.

pub mod cli;
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
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::{fs, path::Path};

    /// Each top-level module with its layer (lower imports nothing higher).
    const LAYERS: [(&str, u8); 17] = [
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
        ("conntrack", 5),
        ("trace", 5),
        ("exec", 5),
        ("graph", 5),
        ("metrics", 5),
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

    #[test]
    fn modules_import_only_downward() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut wrong = Vec::new();
        for file in &files {
            let relative = file.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap();
            let module = first.as_os_str().to_str().unwrap().trim_end_matches(".rs");
            if module == "lib" {
                continue;
            }
            let text = fs::read_to_string(file).unwrap();
            for import in imports(&text) {
                let (from, to) = (layer(module), layer(&import));
                let sibling_command = from == COMMANDS && to == COMMANDS && import != module;
                if to > from || sibling_command {
                    wrong.push(format!("{} imports crate::{import}", relative.display()));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "imports against the layers:\n{}",
            wrong.join("\n")
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

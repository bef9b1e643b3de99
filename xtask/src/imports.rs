//! Import cycles among the modules of one crate: the part of the map Cargo cannot enforce.
//!
//! Each file belongs to a top-level module of its crate (`src/model/scan.rs` to `model`; the
//! crate root's own items, in `lib.rs` or `main.rs`, to `(root)`). A module imports another when
//! its code names it: `crate::other`, `super::other` from a top-level file, or, in the root,
//! `other::`. Unit tests (from the first `#[cfg(test)]` of a file, and `tests` directories) may
//! reach anywhere and are left out. A cycle is a strongly connected group of two or more
//! modules.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::Context as _;

const ROOT: &str = "(root)";

/// Each import cycle among the top-level modules under `src`, as `a -> b -> a`.
pub fn cycles(src: &Path) -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    collect(src, &mut files)?;
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|file| top_level_module(src, file))
        .filter(|module| module != ROOT)
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = top_level_module(src, file) else {
            continue;
        };
        let relative = file.strip_prefix(src).unwrap_or(file);
        if relative
            .components()
            .any(|part| part.as_os_str() == "tests")
            || relative.file_name().is_some_and(|name| name == "tests.rs")
        {
            continue;
        }
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let top_level_file = relative.components().count() == 1
            || relative.file_name().is_some_and(|name| name == "mod.rs")
                && relative.components().count() == 2;
        for target in references(code, module == ROOT, top_level_file, &modules) {
            if target != module {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    Ok(strongly_connected(&edges)
        .into_iter()
        .filter(|group| group.len() > 1)
        .map(|group| describe(&group, &edges))
        .collect())
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, files)?;
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files.sort();
    Ok(())
}

fn top_level_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    if relative.components().count() == 1 {
        let stem = first.strip_suffix(".rs")?;
        return Some(if stem == "lib" || stem == "main" {
            ROOT.to_owned()
        } else {
            stem.to_owned()
        });
    }
    Some(first.to_owned())
}

/// The top-level modules (or the root) that `code` names.
fn references(
    code: &str,
    in_root: bool,
    top_level_file: bool,
    modules: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let code: String = code
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut prefixes = vec!["crate::"];
    if top_level_file && !in_root {
        prefixes.push("super::");
    }
    for prefix in prefixes {
        for (at, _) in code.match_indices(prefix) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &code[at + prefix.len()..];
            for name in first_segments(rest) {
                if modules.contains(&name) {
                    found.insert(name);
                } else if name != "self" && name != "super" {
                    found.insert(ROOT.to_owned());
                }
            }
        }
    }
    if in_root {
        for module in modules {
            let pattern = format!("{module}::");
            let named = code.match_indices(&pattern).any(|(at, _)| {
                let before = code[..at].chars().next_back();
                !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
                    || code[..at].ends_with("self::")
            });
            if named {
                found.insert(module.clone());
            }
        }
    }
    found
}

/// The first path segments after `crate::`: one name, or each item of a `{...}` group.
fn first_segments(rest: &str) -> Vec<String> {
    let name = |text: &str| -> String {
        text.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = rest.strip_prefix('{') else {
        return vec![name(rest)];
    };
    let mut depth = 0;
    let mut items = Vec::new();
    let mut start = 0;
    for (index, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..index]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    items
        .into_iter()
        .map(name)
        .filter(|name| !name.is_empty())
        .collect()
}

/// Tarjan's strongly connected components.
fn strongly_connected(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        groups: Vec<Vec<String>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a str) {
        let next = state.index.len();
        state.index.insert(node, next);
        state.low.insert(node, next);
        state.stack.push(node);
        state.on_stack.insert(node);
        for target in state.edges.get(node).into_iter().flatten() {
            let target = target.as_str();
            if !state.index.contains_key(target) {
                visit(state, target);
                let low = state.low[node].min(state.low[target]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(target) {
                let low = state.low[node].min(state.index[target]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut group = Vec::new();
            while let Some(member) = state.stack.pop() {
                state.on_stack.remove(member);
                group.push(member.to_owned());
                if member == node {
                    break;
                }
            }
            group.sort();
            state.groups.push(group);
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        groups: Vec::new(),
    };
    for node in edges.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    state.groups
}

/// A cycle through a group, as `a -> b -> a` (and who imports whom within it).
fn describe(group: &[String], edges: &BTreeMap<String, BTreeSet<String>>) -> String {
    let members: BTreeSet<&String> = group.iter().collect();
    let inside: Vec<String> = group
        .iter()
        .flat_map(|from| {
            edges
                .get(from)
                .into_iter()
                .flatten()
                .filter(|to| members.contains(to))
                .map(move |to| format!("{from} -> {to}"))
        })
        .collect();
    format!("among {}: {}", group.join(", "), inside.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges(pairs: &[(&str, &str)]) -> BTreeMap<String, BTreeSet<String>> {
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in pairs {
            edges
                .entry((*from).to_owned())
                .or_default()
                .insert((*to).to_owned());
        }
        edges
    }

    #[test]
    fn a_loop_is_one_group_and_a_chain_is_none() {
        let groups = strongly_connected(&edges(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]));
        let big: Vec<_> = groups.into_iter().filter(|g| g.len() > 1).collect();
        assert_eq!(
            big,
            vec![vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]]
        );
        let chain = strongly_connected(&edges(&[("a", "b"), ("b", "c")]));
        assert!(chain.iter().all(|group| group.len() == 1));
    }

    #[test]
    fn references_read_crate_paths_groups_and_the_roots_own_paths() {
        let modules = BTreeSet::from(["model".to_owned(), "paths".to_owned(), "view".to_owned()]);
        let code = "use crate::{model::Update, paths::{self, PathKey}, Thing};\n\
                    // crate::view is only a comment\nfn f() { crate::view::rows(); }";
        assert_eq!(
            references(code, false, true, &modules),
            BTreeSet::from([
                ROOT.to_owned(),
                "model".to_owned(),
                "paths".to_owned(),
                "view".to_owned()
            ])
        );
        assert_eq!(
            references("use super::paths::PathKey;", false, false, &modules),
            BTreeSet::new(),
            "super:: below the top level stays inside its module"
        );
        assert_eq!(
            references("fn main() { model::run(); }", true, true, &modules),
            BTreeSet::from(["model".to_owned()])
        );
    }

    #[test]
    fn this_crates_own_source_has_no_cycle() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        assert_eq!(cycles(&src).unwrap(), Vec::<String>::new());
    }
}

//! `cargo xtask layers`: holds the workspace to the crate map of docs/architecture.md.
//!
//! The map's table (between `<!-- layers` and `<!-- /layers -->`) says, for each crate, which
//! workspace crates it may depend on and which crates it must never pull in, even through
//! another. This reads the resolved dependency graph from `cargo metadata` and fails on any
//! dependency the table does not allow, on a workspace crate missing from the table, and on an
//! import cycle among the modules of a crate (see `imports`).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::imports;

/// One row of the map.
#[derive(Debug, PartialEq, Eq)]
struct Layer {
    crate_name: String,
    directory: String,
    may_depend_on: BTreeSet<String>,
    never_pulls_in: BTreeSet<String>,
}

pub fn check(root: &Path) -> anyhow::Result<()> {
    let map_file = root.join("docs/architecture.md");
    let map = std::fs::read_to_string(&map_file)
        .with_context(|| format!("reading {}", map_file.display()))?;
    let layers =
        parse_map(&map).with_context(|| format!("the crate map of {}", map_file.display()))?;
    let metadata = metadata(root)?;
    let mut problems = dependency_problems(&layers, &metadata);
    for layer in &layers {
        let src = root.join(&layer.directory).join("src");
        if src.is_dir() {
            problems.extend(
                imports::cycles(&src)?
                    .into_iter()
                    .map(|cycle| format!("{}: import cycle {cycle}", layer.crate_name)),
            );
        }
    }
    if !problems.is_empty() {
        bail!(
            "the workspace does not follow docs/architecture.md:\n  {}",
            problems.join("\n  ")
        );
    }
    eprintln!(
        "xtask: layers: {} crates follow the map, no import cycles",
        layers.len()
    );
    Ok(())
}

fn parse_map(text: &str) -> anyhow::Result<Vec<Layer>> {
    let start = text
        .find("<!-- layers")
        .context("no `<!-- layers` marker")?;
    let end = text
        .find("<!-- /layers -->")
        .context("no `<!-- /layers -->` marker")?;
    let names = |cell: &str| -> BTreeSet<String> {
        cell.split(',')
            .map(|name| name.trim().trim_matches('`').to_owned())
            .filter(|name| !name.is_empty())
            .collect()
    };
    let mut layers = Vec::new();
    for line in text[start..end].lines().skip(1) {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        if cells.len() < 4 || cells[0].trim() == "crate" || cells[0].trim().starts_with("---") {
            continue;
        }
        layers.push(Layer {
            crate_name: cells[0].trim().trim_matches('`').to_owned(),
            directory: cells[1]
                .trim()
                .trim_matches('`')
                .trim_end_matches('/')
                .to_owned(),
            may_depend_on: names(cells[2]),
            never_pulls_in: names(cells[3]),
        });
    }
    if layers.is_empty() {
        bail!("the table between the markers has no rows");
    }
    Ok(layers)
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
    workspace_members: Vec<String>,
    resolve: Resolve,
}

#[derive(Deserialize)]
struct Package {
    id: String,
    name: String,
}

#[derive(Deserialize)]
struct Resolve {
    nodes: Vec<Node>,
}

#[derive(Deserialize)]
struct Node {
    id: String,
    deps: Vec<NodeDep>,
}

#[derive(Deserialize)]
struct NodeDep {
    pkg: String,
    dep_kinds: Vec<DepKind>,
}

#[derive(Deserialize)]
struct DepKind {
    kind: Option<String>,
}

fn metadata(root: &Path) -> anyhow::Result<Metadata> {
    let output = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("reading cargo metadata's answer")
}

/// Every dependency the map does not allow, as sentences.
fn dependency_problems(layers: &[Layer], metadata: &Metadata) -> Vec<String> {
    let name_of: BTreeMap<&str, &str> = metadata
        .packages
        .iter()
        .map(|package| (package.id.as_str(), package.name.as_str()))
        .collect();
    // What each package builds with (normal and build dependencies; tests' own are free).
    let built_with: BTreeMap<&str, Vec<&str>> = metadata
        .resolve
        .nodes
        .iter()
        .map(|node| {
            let deps = node
                .deps
                .iter()
                .filter(|dep| {
                    dep.dep_kinds
                        .iter()
                        .any(|kind| kind.kind.as_deref() != Some("dev"))
                })
                .map(|dep| dep.pkg.as_str())
                .collect();
            (node.id.as_str(), deps)
        })
        .collect();
    let members: BTreeSet<&str> = metadata
        .workspace_members
        .iter()
        .map(String::as_str)
        .collect();
    let member_names: BTreeSet<&str> = members
        .iter()
        .filter_map(|id| name_of.get(id).copied())
        .collect();
    let by_name: BTreeMap<&str, &Layer> = layers
        .iter()
        .map(|layer| (layer.crate_name.as_str(), layer))
        .collect();
    let mut problems = Vec::new();
    for &member in &members {
        let name = name_of.get(member).copied().unwrap_or(member);
        let Some(layer) = by_name.get(name) else {
            problems.push(format!("{name} is a workspace crate the map does not list"));
            continue;
        };
        for &dep in built_with.get(member).into_iter().flatten() {
            let dep_name = name_of.get(dep).copied().unwrap_or(dep);
            if member_names.contains(dep_name) && !layer.may_depend_on.contains(dep_name) {
                problems.push(format!(
                    "{name} depends on {dep_name}, which its row of the map does not allow"
                ));
            }
        }
        // Everything it pulls in, through any crate.
        let mut seen = BTreeSet::new();
        let mut stack = vec![(member, vec![name])];
        while let Some((package, via)) = stack.pop() {
            for &dep in built_with.get(package).into_iter().flatten() {
                if !seen.insert(dep) {
                    continue;
                }
                let dep_name = name_of.get(dep).copied().unwrap_or(dep);
                let mut chain = via.clone();
                chain.push(dep_name);
                if layer.never_pulls_in.contains(dep_name) {
                    problems.push(format!(
                        "{name} pulls in {dep_name}, which its row forbids ({})",
                        chain.join(" -> ")
                    ));
                }
                stack.push((dep, chain));
            }
        }
    }
    for layer in layers {
        if !member_names.contains(layer.crate_name.as_str()) {
            problems.push(format!(
                "the map lists {}, which is not a workspace crate",
                layer.crate_name
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_parses_into_rows() {
        let text = "intro\n<!-- layers: x -->\n| crate | directory | may depend on | never pulls in | owns |\n\
                    | --- | --- | --- | --- | --- |\n\
                    | `a` | `agent/` | `b`, `c` | `tokio` | the top |\n\
                    | `b` | `b/` | | | below |\n<!-- /layers -->\n";
        let layers = parse_map(text).unwrap();
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[0].crate_name, "a");
        assert_eq!(layers[0].directory, "agent");
        assert_eq!(
            layers[0].may_depend_on,
            BTreeSet::from(["b".to_owned(), "c".to_owned()])
        );
        assert_eq!(
            layers[0].never_pulls_in,
            BTreeSet::from(["tokio".to_owned()])
        );
        assert!(layers[1].may_depend_on.is_empty());
    }

    #[test]
    fn a_wrong_way_dependency_and_a_forbidden_crate_are_reported() {
        let layers = parse_map(
            "<!-- layers -->\n| `top` | `t/` | `low` | | |\n| `low` | `l/` | | `tokio` | |\n<!-- /layers -->",
        )
        .unwrap();
        let package = |id: &str| Package {
            id: id.to_owned(),
            name: id.to_owned(),
        };
        let node = |id: &str, deps: &[(&str, Option<&str>)]| Node {
            id: id.to_owned(),
            deps: deps
                .iter()
                .map(|(pkg, kind)| NodeDep {
                    pkg: (*pkg).to_owned(),
                    dep_kinds: vec![DepKind {
                        kind: kind.map(str::to_owned),
                    }],
                })
                .collect(),
        };
        let metadata = Metadata {
            packages: vec![
                package("top"),
                package("low"),
                package("mio"),
                package("tokio"),
            ],
            workspace_members: vec!["top".into(), "low".into()],
            resolve: Resolve {
                nodes: vec![
                    node("top", &[("low", None), ("tokio", None)]),
                    // low -> top runs up the map; low -> mio -> tokio pulls in what it must not;
                    // a dev-dependency on tokio is free.
                    node(
                        "low",
                        &[("top", None), ("mio", None), ("tokio", Some("dev"))],
                    ),
                    node("mio", &[("tokio", None)]),
                    node("tokio", &[]),
                ],
            },
        };
        let problems = dependency_problems(&layers, &metadata);
        assert_eq!(
            problems,
            vec![
                "low depends on top, which its row of the map does not allow".to_owned(),
                "low pulls in tokio, which its row forbids (low -> mio -> tokio)".to_owned(),
            ],
            "{problems:#?}"
        );
    }
}

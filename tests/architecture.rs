//! The crate's layering, checked from its source: the core modules import each other without
//! cycles, and none of them imports HTTP or tower (the edges translate; the core decides).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The core and the modules it is built on, each a file or a folder under `src/`.
const CORE: &[&str] = &[
    "alerts",
    "amount",
    "analytics",
    "audit",
    "blocking",
    "clock",
    "config",
    "deny",
    "gate",
    "json_errors",
    "key",
    "meter",
    "oauth",
    "pricing",
    "quota",
    "ratelimit",
    "store",
];

/// Every source text of module `name` (a file, or all files of its folder).
fn sources(name: &str) -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let file = src.join(format!("{name}.rs"));
    let mut out = Vec::new();
    if file.is_file() {
        out.push((
            file.display().to_string(),
            std::fs::read_to_string(&file).unwrap(),
        ));
    }
    let dir = src.join(name);
    if dir.is_dir() {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push((
                        path.display().to_string(),
                        std::fs::read_to_string(&path).unwrap(),
                    ));
                }
            }
        }
    }
    assert!(!out.is_empty(), "module {name} has no source under src/");
    out
}

/// The core modules `text` refers to as `crate::<module>`.
fn core_refs(text: &str) -> BTreeSet<&'static str> {
    CORE.iter()
        .copied()
        .filter(|m| {
            let needle = format!("crate::{m}");
            text.match_indices(&needle).any(|(at, _)| {
                // `crate::key::` or `crate::key;` but not `crate::keyring`.
                text[at + needle.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
            })
        })
        .collect()
}

fn graph() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    CORE.iter()
        .map(|&m| {
            let mut deps = BTreeSet::new();
            for (_, text) in sources(m) {
                deps.extend(core_refs(&text));
            }
            deps.remove(m);
            (m, deps)
        })
        .collect()
}

/// A cycle through the graph, if there is one.
fn find_cycle(g: &BTreeMap<&'static str, BTreeSet<&'static str>>) -> Option<Vec<&'static str>> {
    fn visit(
        g: &BTreeMap<&'static str, BTreeSet<&'static str>>,
        node: &'static str,
        path: &mut Vec<&'static str>,
        done: &mut BTreeSet<&'static str>,
    ) -> Option<Vec<&'static str>> {
        if let Some(at) = path.iter().position(|&n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node);
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node);
        for &next in &g[node] {
            if let Some(c) = visit(g, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    for &m in g.keys() {
        if let Some(c) = visit(g, m, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn core_modules_import_each_other_without_cycles() {
    let g = graph();
    assert_eq!(find_cycle(&g), None, "import graph: {g:#?}");
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut g = BTreeMap::new();
    g.insert("a", BTreeSet::from(["b"]));
    g.insert("b", BTreeSet::from(["c"]));
    g.insert("c", BTreeSet::from(["a"]));
    assert_eq!(find_cycle(&g), Some(vec!["a", "b", "c", "a"]));
    g.insert("c", BTreeSet::new());
    assert_eq!(find_cycle(&g), None);
}

#[test]
fn core_modules_import_no_http_or_tower() {
    let mut offenders = Vec::new();
    for &m in CORE {
        for (path, text) in sources(m) {
            for line in text.lines() {
                let code = line.trim_start();
                let imports_edge = [
                    "use http",
                    "use tower",
                    "use hyper",
                    "use axum",
                    "http::",
                    "tower::",
                ]
                .iter()
                .any(|p| code.starts_with(p) || code.contains(&format!(" {p}")));
                if imports_edge && !code.starts_with("//") {
                    offenders.push(format!("{path}: {line}"));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "HTTP or tower in the core:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_protocol_code_knows_no_policy() {
    // JSON-RPC parsing and framing may measure JSON (pricing's `compact_json_len`), nothing
    // else of the core: denials are written at the edge, from the gate's decision.
    for (path, text) in sources("jsonrpc") {
        let refs = core_refs(&text);
        assert!(
            refs.iter().all(|&m| m == "pricing"),
            "{path} reaches into the core: {refs:?}"
        );
    }
}

#[test]
fn the_edges_do_not_reach_into_each_other() {
    // The upstreams read the layers' parse through the protocol module (`ParsedRequest`),
    // and the admin API shares what it needs of a connection through `edge`, never through
    // the layers themselves.
    for module in ["upstream", "admin"] {
        for (path, text) in sources(module) {
            assert!(
                !text.contains("crate::layer"),
                "{path} reaches into the layers"
            );
        }
    }
}

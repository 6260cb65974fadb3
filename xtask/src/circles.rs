//! `cargo xtask circles [CRATE_DIR ...]`: the import circles between the modules (files)
//! of the workspace's crates, read from their own text: every `crate::` and `super::`
//! path outside comments and test modules is an arrow from the file that writes it to
//! the file of the module it names (a folder's `mod.rs` that only re-exports a child's
//! item points on to that child). Prints each circle with the names that tie it;
//! exits 1 when there is one. A test keeps the crates it lists free of them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every crate folder of the workspace with a `src/`.
pub const CRATES: &[&str] = &["archive", "cas", "certs", "client", "mock-server", "proto", "tests", "units", "xtask"];

/// One crate's modules: module path (`jobs::spool`) to file, and the arrows between
/// files with the names each takes.
#[derive(Debug, Default)]
pub struct Graph {
    pub files: BTreeMap<String, PathBuf>,
    pub arrows: BTreeMap<PathBuf, BTreeMap<PathBuf, BTreeSet<String>>>,
}

/// The module path of `file` below `src` (`lib.rs`, `main.rs`: the root, "").
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts.join("::")
}

/// The text that counts: comments and `#[cfg(test)]` modules left out.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines().map(|line| line.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// Every `crate::a::b` / `super::a` path in `code`, made absolute from `module`, with
/// the braces of a `use` group expanded one level (`crate::a::{b, c::d}`).
fn paths_in(code: &str, module: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut at = 0;
    while at < code.len() {
        let rest = &code[at..];
        let at_root = rest.starts_with("crate::") || rest.starts_with("super::");
        let start = at_root && (at == 0 || !is_ident(bytes[at - 1]) && bytes[at - 1] != b':');
        if !start {
            at += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        }
        let mut base: Vec<String> = Vec::new();
        let mut i = at;
        if rest.starts_with("crate::") {
            i += "crate::".len();
        } else {
            base = module.split("::").filter(|p| !p.is_empty()).map(String::from).collect();
            while code[i..].starts_with("super::") {
                base.pop();
                i += "super::".len();
            }
        }
        let mut path = base;
        if code[i..].starts_with('{') {
            // `crate::{a::X, b}`: a group right after the root.
            i -= 2;
        }
        loop {
            let ident_end = code[i..].bytes().position(|c| !is_ident(c)).map_or(code.len(), |n| i + n);
            if ident_end == i && !code[i..].starts_with("::{") {
                break;
            }
            if ident_end > i {
                path.push(code[i..ident_end].to_string());
            }
            i = ident_end;
            if code[i..].starts_with("::{") {
                let close = code[i..].find('}').map_or(code.len(), |n| i + n);
                for item in code[i + 3..close].split(',') {
                    let mut full = path.clone();
                    full.extend(item.trim().split("::").map(|p| p.split_whitespace().next().unwrap_or("").to_string()));
                    found.push(full);
                }
                i = close;
                path.clear();
                break;
            }
            if !code[i..].starts_with("::") {
                break;
            }
            i += 2;
        }
        if !path.is_empty() {
            found.push(path);
        }
        at = i.max(at + 1);
    }
    found
}

/// `pub use child::{A, B}` / `pub use child::A` in a module's code: name -> child.
fn reexports(code: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for statement in code.split(';') {
        let statement = statement.trim();
        let Some(rest) = statement.strip_prefix("pub use ") else { continue };
        let rest = rest.strip_prefix("self::").unwrap_or(rest);
        let Some((child, items)) = rest.split_once("::") else { continue };
        let items = items.trim().trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',') {
            let item = item.trim();
            let name = item.rsplit(" as ").next().unwrap_or(item).rsplit("::").next().unwrap_or(item).trim();
            if !name.is_empty() {
                names.insert(name.to_string(), child.to_string());
            }
        }
    }
    names
}

/// Reads one crate's `src/`.
pub fn graph_of(crate_dir: &Path) -> std::io::Result<Graph> {
    let src = crate_dir.join("src");
    let mut graph = Graph::default();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("src/main.rs") {
                graph.files.insert(module_of(&src, &path), path);
            } else if path.ends_with("src/main.rs") && !src.join("lib.rs").exists() {
                graph.files.insert(String::new(), path);
            }
        }
    }
    let codes: BTreeMap<String, String> = graph
        .files
        .iter()
        .map(|(module, file)| Ok((module.clone(), code_of(&std::fs::read_to_string(file)?))))
        .collect::<std::io::Result<_>>()?;
    for (module, file) in &graph.files {
        for path in paths_in(&codes[module], module) {
            // The longest module path the reference names.
            let mut target = None;
            for len in (0..=path.len()).rev() {
                let candidate = path[..len].join("::");
                if graph.files.contains_key(&candidate) {
                    target = Some((candidate, path.get(len).cloned().unwrap_or_default()));
                    break;
                }
            }
            let Some((mut target, mut name)) = target else { continue };
            // A folder's re-export points on to the child that defines the name.
            while let Some(child) = reexports(&codes[&target]).get(&name).cloned() {
                let next = if target.is_empty() { child } else { format!("{target}::{child}") };
                if !graph.files.contains_key(&next) || next == *module {
                    break;
                }
                target = next;
                let rest = path.iter().skip_while(|p| **p != name).nth(1).cloned();
                name = rest.unwrap_or(name);
            }
            if target == *module || target.is_empty() || module.starts_with(&format!("{target}::")) {
                continue; // itself, the crate root, or its own parent (which declares it)
            }
            let to = graph.files[&target].clone();
            graph.arrows.entry(file.clone()).or_default().entry(to).or_default().insert(name);
        }
    }
    Ok(graph)
}

/// The circles: strongly connected groups of more than one file (Tarjan).
pub fn circles(graph: &Graph) -> Vec<Vec<PathBuf>> {
    struct Walk<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g PathBuf, usize>,
        low: BTreeMap<&'g PathBuf, usize>,
        stack: Vec<&'g PathBuf>,
        on_stack: BTreeSet<&'g PathBuf>,
        found: Vec<Vec<PathBuf>>,
    }
    fn visit<'g>(walk: &mut Walk<'g>, node: &'g PathBuf) {
        let n = walk.index.len();
        walk.index.insert(node, n);
        walk.low.insert(node, n);
        walk.stack.push(node);
        walk.on_stack.insert(node);
        if let Some(targets) = walk.graph.arrows.get(node) {
            for next in targets.keys() {
                if !walk.index.contains_key(next) {
                    visit(walk, next);
                    let low = walk.low[next].min(walk.low[node]);
                    walk.low.insert(node, low);
                } else if walk.on_stack.contains(next) {
                    let low = walk.index[next].min(walk.low[node]);
                    walk.low.insert(node, low);
                }
            }
        }
        if walk.low[node] == walk.index[node] {
            let mut group = Vec::new();
            while let Some(top) = walk.stack.pop() {
                walk.on_stack.remove(top);
                group.push(top.clone());
                if top == node {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                walk.found.push(group);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for file in graph.files.values() {
        if !walk.index.contains_key(file) {
            visit(&mut walk, file);
        }
    }
    walk.found
}

/// `cargo xtask circles`: prints the circles of `crates` (all when empty); an error
/// when there is one.
pub fn run(root: &Path, crates: &[String]) -> anyhow::Result<()> {
    let crates: Vec<String> = match crates.is_empty() {
        true => CRATES.iter().map(|c| c.to_string()).collect(),
        false => crates.to_vec(),
    };
    let mut total = 0;
    for name in &crates {
        let graph = graph_of(&root.join(name))?;
        let found = circles(&graph);
        for group in &found {
            total += 1;
            println!("circle in {name}:");
            for file in group {
                for (to, names) in graph.arrows.get(file).into_iter().flatten().filter(|(to, _)| group.contains(to)) {
                    let shown = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    println!("  {} -> {}: {}", shown(file), shown(to), names.join(", "));
                }
            }
        }
        if found.is_empty() {
            println!("{name}: no circle between its {} modules", graph.files.len());
        }
    }
    anyhow::ensure!(total == 0, "{total} import circle(s)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The crates (folders) whose modules must form no circle.
    const ACYCLIC: &[&str] = &["archive", "cas", "certs", "client", "mock-server", "proto", "tests", "units", "xtask"];

    #[test]
    fn the_acyclic_crates_have_no_import_circle() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for name in ACYCLIC {
            let graph = graph_of(&root.join(name)).unwrap();
            assert!(!graph.files.is_empty(), "{name}'s modules were read");
            if *name == "mock-server" {
                assert!(graph.arrows.values().map(BTreeMap::len).sum::<usize>() > 20, "and their imports");
            }
            let found = circles(&graph);
            assert!(found.is_empty(), "{name} has import circles (`cargo xtask circles {name}`): {found:?}");
        }
    }

    #[test]
    fn a_circle_is_found_through_paths_groups_and_super() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("a")).unwrap();
        std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
        std::fs::write(src.join("a/mod.rs"), "mod c;\npub use c::Thing;\n").unwrap();
        std::fs::write(src.join("a/c.rs"), "use crate::{b::Other, x};\npub struct Thing;\n").unwrap();
        std::fs::write(src.join("b.rs"), "// crate::nothing\nuse crate::a::Thing;\npub struct Other;\n").unwrap();
        let graph = graph_of(dir.path()).unwrap();
        let found = circles(&graph);
        assert_eq!(found, vec![vec![src.join("a/c.rs"), src.join("b.rs")]], "{:?}", graph.arrows);
        std::fs::write(src.join("b.rs"), "pub struct Other;\n#[cfg(test)]\nmod tests {\n    use crate::a::Thing;\n}\n")
            .unwrap();
        assert!(circles(&graph_of(dir.path()).unwrap()).is_empty(), "a test module's imports do not count");
    }
}

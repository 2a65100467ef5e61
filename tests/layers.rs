//! The module layers of docs/design.md ("Modules and layers"), checked on
//! the source: shipped code imports only from its own layer or below, and
//! no units import each other around a cycle. Code that is not shipped —
//! `#[cfg(test)]` items and modules, `#[cfg(feature = "fuzzing")]` items —
//! may reach up to wire cores together and is ignored.
//!
//! A unit is a row's module or, where a module spans layers, the submodule
//! the table names (`rtmp::proto` is a unit of layer 2, the rest of `rtmp`
//! one of layer 5). References are `use crate::…` and `crate::…` paths,
//! `super::…` and paths through a child module, resolved to the deepest
//! module they name. Pure Rust: a small lexer, no parser crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// docs/design.md's table, bottom to top. `layer_table_matches_the_design`
/// keeps the two the same.
const LAYERS: &[(&str, u8)] = &[
    ("config", 1),
    ("media", 1),
    ("telemetry", 1),
    ("stream::path", 1),
    ("flv", 2),
    ("ts", 2),
    ("rtmp::amf0", 2),
    ("rtmp::proto", 2),
    ("srt::streamid", 2),
    ("srt::guard", 2),
    ("auth", 2),
    ("rtmp::config", 2),
    ("srt::config", 2),
    ("transcode::config", 2),
    ("record::config", 2),
    ("cluster::config", 2),
    ("stream", 3),
    ("gpu", 4),
    ("srt", 5),
    ("rtmp", 5),
    ("transcode", 5),
    ("record", 5),
    ("cluster", 5),
    ("http", 6),
    ("server", 7),
    ("main", 7),
];

/// Imports allowed against the rules until the work that removes them
/// lands: (from module, to module, why). Each must still be needed.
const EXCEPTIONS: &[(&str, &str, &str)] = &[];

#[test]
fn shipped_code_imports_only_from_its_layer_or_below_and_without_cycles() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let scan = scan_crate(&root.join("src"));
    let mut problems = Vec::new();

    // Every module has a layer; every row names a module.
    for m in &scan.modules {
        if !m.is_empty() && unit_of(m).is_none() {
            problems.push(format!(
                "module `{m}` has no layer: add it to docs/design.md's table and to LAYERS in tests/layers.rs"
            ));
        }
    }
    for (name, _) in LAYERS {
        if !scan.modules.contains(*name) {
            problems.push(format!(
                "LAYERS names `{name}`, which is not a module in src/"
            ));
        }
    }

    let mut used_exceptions = BTreeSet::new();
    let mut up = Vec::new();
    // unit → unit → where
    let mut edges: BTreeMap<&str, BTreeMap<&str, Vec<&Ref>>> = BTreeMap::new();
    for r in &scan.refs {
        let (Some((from, lf)), Some((to, lt))) = (unit_of(&r.from), unit_of(&r.to)) else {
            continue;
        };
        if from == to {
            continue;
        }
        if let Some(e) = EXCEPTIONS
            .iter()
            .find(|(f, t, _)| r.from == *f && is_within(&r.to, t))
        {
            used_exceptions.insert(e.0.to_string() + " -> " + e.1);
            continue;
        }
        if lt > lf {
            up.push(format!(
                "  {}: `{}` (layer {lf}) uses `{}`: `{to}` is layer {lt}",
                r.at, r.from, r.path
            ));
        }
        edges
            .entry(from)
            .or_default()
            .entry(to)
            .or_default()
            .push(r);
    }
    if !up.is_empty() {
        problems.push(format!(
            "imports into a higher layer (docs/design.md, \"Modules and layers\"):\n{}",
            up.join("\n")
        ));
    }
    for cycle in cycles(&edges) {
        let mut lines = Vec::new();
        for a in &cycle {
            for (b, refs) in &edges[a] {
                if cycle.contains(b) {
                    let at: Vec<String> = refs
                        .iter()
                        .take(3)
                        .map(|r| format!("{} `{}`", r.at, r.path))
                        .collect();
                    lines.push(format!("  `{a}` -> `{b}`: {}", at.join(", ")));
                }
            }
        }
        problems.push(format!(
            "import cycle between {}:\n{}",
            cycle
                .iter()
                .map(|u| format!("`{u}`"))
                .collect::<Vec<_>>()
                .join(", "),
            lines.join("\n")
        ));
    }
    for (f, t, _) in EXCEPTIONS {
        let e = format!("{f} -> {t}");
        if !used_exceptions.contains(&e) {
            problems.push(format!(
                "EXCEPTIONS lists `{e}`, which no longer happens: remove it"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the module layers are broken:\n\n{}\n",
        problems.join("\n\n")
    );
}

#[test]
fn layer_table_matches_the_design() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let design = std::fs::read_to_string(root.join("docs/design.md")).unwrap();
    let section = design
        .split("\n## ")
        .find(|s| s.starts_with("Modules and layers"))
        .expect("docs/design.md has a \"Modules and layers\" section");
    let mut doc = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Ok(layer) = cells[1].parse::<u8>() else {
            continue;
        };
        for name in cells[2].split('`').skip(1).step_by(2) {
            doc.insert((name.to_string(), layer));
        }
    }
    let ours: BTreeSet<(String, u8)> = LAYERS.iter().map(|(m, l)| (m.to_string(), *l)).collect();
    assert_eq!(
        ours, doc,
        "LAYERS in tests/layers.rs and the table in docs/design.md differ"
    );
}

/// The scanner on small sources: what counts as shipped and how paths resolve.
#[test]
fn scanner_skips_test_code_and_resolves_paths() {
    let src = r#"
        //! Docs mention crate::http::Foo, which is not an import.
        mod child;
        #[cfg(test)]
        mod tests;
        use crate::config::{self, ConfigError};
        use crate::{media::Frame as F, ts::{mux::Muxer, TsChunk}};
        use super::sibling::X;
        use child::Y;
        pub(crate) fn f() -> u8 {
            let s = "crate::http::AppState";
            let c = '"';
            crate::telemetry::trim();
            super::super::gpu::probe::<u8>();
            0
        }
        #[cfg(test)]
        mod inline_tests { use crate::server::Config; }
        #[cfg(feature = "fuzzing")]
        pub fn fuzz() { crate::srt::fuzz::run(); }
        #[cfg(any(test, feature = "fuzzing"))]
        impl<A, B> Foo<A, B> { fn g() { crate::http::x(); } }
        #[cfg(not(test))]
        fn shipped() { crate::auth::check(); }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        unsafe { crate::flv::x(); }
        mod inline { use super::child::Z; fn h() { crate::rtmp::proto::Limits::default(); } }
        fn late<'a>(x: &'a str) -> &'a str { crate::stream::path::f(); x }
    "#;
    let mut scan = Scan::default();
    scan_source(&mut scan, "stream::config", src, "x.rs");
    let skipped: Vec<&str> = scan.skipped.iter().map(String::as_str).collect();
    assert_eq!(
        skipped,
        ["stream::config::inline_tests", "stream::config::tests"]
    );
    let got: BTreeSet<(String, String)> = scan
        .refs
        .iter()
        .map(|r| (r.from.clone(), r.path.clone()))
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("stream::config", "crate::config"),
        ("stream::config", "crate::config::ConfigError"),
        ("stream::config", "crate::media::Frame"),
        ("stream::config", "crate::ts::mux::Muxer"),
        ("stream::config", "crate::ts::TsChunk"),
        ("stream::config", "crate::stream::sibling::X"),
        ("stream::config", "crate::stream::config::child::Y"),
        ("stream::config", "crate::telemetry::trim"),
        ("stream::config", "crate::gpu::probe"),
        ("stream::config", "crate::auth::check"),
        ("stream::config", "crate::flv::x"),
        ("stream::config::inline", "crate::stream::config::child::Z"),
        (
            "stream::config::inline",
            "crate::rtmp::proto::Limits::default",
        ),
        ("stream::config", "crate::stream::path::f"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------

/// `module` is `unit` or inside it (`stream::config` is within `stream`).
fn is_within(module: &str, unit: &str) -> bool {
    module == unit
        || module
            .strip_prefix(unit)
            .is_some_and(|rest| rest.starts_with("::"))
}

/// The unit a module belongs to (the deepest row that contains it) and its
/// layer. `None` for the crate root and for modules no row covers.
fn unit_of(module: &str) -> Option<(&'static str, u8)> {
    LAYERS
        .iter()
        .filter(|(u, _)| is_within(module, u))
        .max_by_key(|(u, _)| u.len())
        .copied()
}

/// Every set of units that import each other around a cycle (strongly
/// connected components with more than one unit).
fn cycles<'a>(edges: &BTreeMap<&'a str, BTreeMap<&'a str, Vec<&Ref>>>) -> Vec<Vec<&'a str>> {
    let units: BTreeSet<&str> = edges
        .iter()
        .flat_map(|(a, bs)| std::iter::once(*a).chain(bs.keys().copied()))
        .collect();
    let reach = |from: &'a str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from];
        while let Some(u) = todo.pop() {
            for next in edges.get(u).into_iter().flat_map(|bs| bs.keys()) {
                if seen.insert(*next) {
                    todo.push(*next);
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&str, BTreeSet<&str>> = units.iter().map(|u| (*u, reach(u))).collect();
    let mut out: Vec<Vec<&str>> = Vec::new();
    for u in &units {
        let scc: Vec<&str> = units
            .iter()
            .filter(|v| reachable[u].contains(*v) && reachable[*v].contains(u))
            .copied()
            .collect();
        if scc.len() > 1 && !out.contains(&scc) {
            out.push(scc);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Scanning the source
// ---------------------------------------------------------------------------

/// One reference from a module to a path in the crate.
#[derive(Debug)]
struct Ref {
    /// The module the reference is in.
    from: String,
    /// The deepest module the path names (filled in after every file is read).
    to: String,
    /// The path as written, made absolute: `crate::stream::config::Apps`.
    path: String,
    /// `src/x.rs:LINE`.
    at: String,
}

#[derive(Default)]
struct Scan {
    /// Every module: files and inline `mod x { … }`, shipped or not.
    modules: BTreeSet<String>,
    /// Modules that are not shipped (`#[cfg(test)] mod tests;`), and so
    /// neither is any module inside them.
    skipped: BTreeSet<String>,
    refs: Vec<Ref>,
}

fn scan_crate(src: &Path) -> Scan {
    let mut files = Vec::new();
    collect_files(src, &mut files);
    let mut scan = Scan::default();
    for file in &files {
        let rel = file
            .strip_prefix(src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let module = module_of_file(&rel);
        let text = std::fs::read_to_string(file).unwrap();
        scan.modules.insert(module.clone());
        scan_source(&mut scan, &module, &text, &format!("src/{rel}"));
    }
    let skipped = scan.skipped.clone();
    let shipped = |m: &str| !skipped.iter().any(|s| is_within(m, s));
    scan.modules.retain(|m| shipped(m));
    scan.refs.retain(|r| shipped(&r.from));
    let modules = scan.modules.clone();
    for r in &mut scan.refs {
        // The deepest known module the path names: `crate::stream::config::Apps`
        // names `stream::config`.
        let segments: Vec<&str> = r.path.split("::").skip(1).collect();
        r.to = (0..=segments.len())
            .rev()
            .map(|n| segments[..n].join("::"))
            .find(|m| modules.contains(m))
            .unwrap_or_default();
    }
    scan
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `lib.rs` → the crate root (""), `main.rs` → `main`, `a/mod.rs` → `a`,
/// `a/b.rs` → `a::b`.
fn module_of_file(rel: &str) -> String {
    match rel {
        "lib.rs" => String::new(),
        "main.rs" => "main".into(),
        _ => {
            let path = rel.strip_suffix(".rs").unwrap();
            let path = path.strip_suffix("/mod").unwrap_or(path);
            path.replace('/', "::")
        }
    }
}

fn scan_source(scan: &mut Scan, module: &str, text: &str, file: &str) {
    let tokens = lex(text);
    // The binary reaches the library as `sluice::`.
    let root = if module == "main" { "sluice" } else { "crate" };
    let mut cx = Cx {
        scan,
        tokens: &tokens,
        file,
        root,
    };
    cx.items(0, tokens.len(), module);
}

struct Cx<'a> {
    scan: &'a mut Scan,
    tokens: &'a [Token],
    file: &'a str,
    root: &'a str,
}

impl Cx<'_> {
    fn ident(&self, i: usize) -> Option<&str> {
        match self.tokens.get(i).map(|t| &t.tok) {
            Some(Tok::Ident(s)) => Some(s),
            _ => None,
        }
    }

    fn punct(&self, i: usize, c: char) -> bool {
        matches!(self.tokens.get(i).map(|t| &t.tok), Some(Tok::Punct(p)) if *p == c)
    }

    fn path_sep(&self, i: usize) -> bool {
        self.punct(i, ':') && self.punct(i + 1, ':')
    }

    /// The index just past the group opened at `i` (`(`, `[` or `{`).
    fn close(&self, i: usize) -> usize {
        let mut depth = 0usize;
        for j in i..self.tokens.len() {
            match &self.tokens[j].tok {
                Tok::Punct('(' | '[' | '{') => depth += 1,
                Tok::Punct(')' | ']' | '}') => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                _ => {}
            }
        }
        self.tokens.len()
    }

    /// The index just past the item (or field, variant, statement) at `i`.
    fn item_end(&self, mut i: usize, end: usize) -> usize {
        const ITEM: &[&str] = &[
            "pub",
            "fn",
            "impl",
            "struct",
            "enum",
            "mod",
            "use",
            "const",
            "static",
            "type",
            "trait",
            "async",
            "extern",
            "macro_rules",
            "union",
        ];
        let item = self.ident(i).is_some_and(|w| ITEM.contains(&w));
        while i < end {
            match &self.tokens[i].tok {
                Tok::Punct(';') => return i + 1,
                Tok::Punct(',') if !item => return i,
                Tok::Punct('(' | '[') => i = self.close(i),
                Tok::Punct('{') => {
                    i = self.close(i);
                    if self.punct(i, ';') {
                        i += 1;
                    }
                    return i;
                }
                _ => i += 1,
            }
        }
        end
    }

    /// Scan tokens `i..end`, which are in `module`.
    fn items(&mut self, mut i: usize, end: usize, module: &str) {
        // Child modules declared here, so `child::x` paths resolve.
        let mut children = BTreeSet::new();
        for j in i..end {
            if self.ident(j) == Some("mod") {
                if let Some(name) = self.ident(j + 1) {
                    children.insert(name.to_string());
                }
            }
        }
        while i < end {
            // Attributes: `#[cfg(...)]` that is false in a shipped build
            // removes the item it is on; `#![cfg(...)]` the rest of the module.
            if self.punct(i, '#') {
                let inner = self.punct(i + 1, '!');
                let open = if inner { i + 2 } else { i + 1 };
                if self.punct(open, '[') {
                    let close = self.close(open);
                    let shipped = self.cfg_shipped(open + 1, close - 1);
                    i = close;
                    if !shipped {
                        if inner {
                            self.scan.skipped.insert(module.to_string());
                            return;
                        }
                        while self.punct(i, '#') && self.punct(i + 1, '[') {
                            i = self.close(i + 1);
                        }
                        if self.ident(i) == Some("mod") {
                            if let Some(name) = self.ident(i + 1) {
                                self.scan.skipped.insert(join(module, name));
                            }
                        }
                        i = self.item_end(i, end);
                    }
                    continue;
                }
            }
            match self.ident(i) {
                Some("mod") if self.ident(i + 1).is_some() && self.punct(i + 2, '{') => {
                    let name = join(module, self.ident(i + 1).unwrap());
                    self.scan.modules.insert(name.clone());
                    let close = self.close(i + 2);
                    self.items(i + 3, close - 1, &name);
                    i = close;
                }
                Some(w) if self.path_sep(i + 1) && !self.after_path_sep(i) => {
                    let base: Option<Vec<String>> = if w == self.root || w == "crate" {
                        Some(vec![])
                    } else if w == "super" || w == "self" {
                        let mut base: Vec<String> = split(module);
                        let mut j = i;
                        if w == "super" {
                            while self.ident(j) == Some("super") && self.path_sep(j + 1) {
                                base.pop();
                                j += 3;
                            }
                            // `super::super::x`: continue after the last `super::`.
                            i = j - 3;
                        }
                        Some(base)
                    } else if children.contains(w) {
                        let mut base = split(module);
                        base.push(w.to_string());
                        Some(base)
                    } else {
                        None
                    };
                    match base {
                        Some(base) => {
                            let line = self.tokens[i].line;
                            let mut paths = Vec::new();
                            i = self.tree(i + 3, base, &mut paths);
                            for p in paths {
                                self.scan.refs.push(Ref {
                                    from: module.to_string(),
                                    to: String::new(),
                                    path: format!("crate::{}", p.join("::")),
                                    at: format!("{}:{line}", self.file),
                                });
                            }
                        }
                        None => i += 1,
                    }
                }
                _ => i += 1,
            }
        }
    }

    /// Whether the identifier at `i` continues a path (`a::b`), so it is not
    /// the start of one.
    fn after_path_sep(&self, i: usize) -> bool {
        i >= 2 && self.punct(i - 1, ':') && self.punct(i - 2, ':')
    }

    /// Read a path or a `use` tree starting at `i` under `prefix`; push each
    /// complete path to `out` and return the index after it.
    fn tree(&self, mut i: usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
        loop {
            if self.punct(i, '{') {
                let close = self.close(i);
                i += 1;
                while i < close - 1 {
                    i = self.tree(i, prefix.clone(), out);
                    // Past the `,` (or a token no tree takes, so this ends).
                    if i < close - 1 {
                        i += 1;
                    }
                }
                return close;
            }
            // `x as y`: the alias is not a path.
            let past = |j: usize| {
                if self.ident(j) == Some("as") {
                    j + 2
                } else {
                    j
                }
            };
            match self.ident(i) {
                Some("self") => {
                    out.push(prefix);
                    return past(i + 1);
                }
                Some(w) => {
                    prefix.push(w.to_string());
                    if self.path_sep(i + 1) && !self.punct(i + 3, '<') {
                        i += 3;
                        continue;
                    }
                    out.push(prefix);
                    return past(i + 1);
                }
                None => {
                    // `*`, or a path that stops at `::<`.
                    out.push(prefix);
                    return i + 1;
                }
            }
        }
    }

    /// Whether the attribute body `i..end` is on in a shipped build: `cfg`
    /// with `test` and `feature = "fuzzing"` false and anything else true.
    fn cfg_shipped(&self, i: usize, end: usize) -> bool {
        if self.ident(i) != Some("cfg") || !self.punct(i + 1, '(') {
            return true;
        }
        self.cfg_pred(i + 2, end.min(self.close(i + 1) - 1)).0
    }

    /// Evaluate the predicate at `i`; returns its value and the index after it.
    fn cfg_pred(&self, i: usize, end: usize) -> (bool, usize) {
        let Some(w) = self.ident(i) else {
            return (true, end);
        };
        match w {
            "not" | "all" | "any" if self.punct(i + 1, '(') => {
                let close = self.close(i + 1);
                let mut values = Vec::new();
                let mut j = i + 2;
                while j < close - 1 {
                    let (v, next) = self.cfg_pred(j, close - 1);
                    values.push(v);
                    j = if self.punct(next, ',') {
                        next + 1
                    } else {
                        next.max(j + 1)
                    };
                }
                let v = match w {
                    "not" => !values.first().copied().unwrap_or(true),
                    "all" => values.iter().all(|v| *v),
                    _ => values.iter().any(|v| *v),
                };
                (v, close)
            }
            "test" => (false, i + 1),
            _ if self.punct(i + 1, '=') => {
                let value = match self.tokens.get(i + 2).map(|t| &t.tok) {
                    Some(Tok::Str(s)) => s.as_str(),
                    _ => "",
                };
                (!(w == "feature" && value == "fuzzing"), i + 3)
            }
            _ => (true, i + 1),
        }
    }
}

fn join(module: &str, name: &str) -> String {
    if module.is_empty() {
        name.to_string()
    } else {
        format!("{module}::{name}")
    }
}

fn split(module: &str) -> Vec<String> {
    module
        .split("::")
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

// ---------------------------------------------------------------------------
// Lexing: identifiers, punctuation and string literals; comments, other
// literals and lifetimes dropped.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Punct(char),
    Str(String),
}

#[derive(Debug)]
struct Token {
    tok: Tok,
    line: usize,
}

fn lex(text: &str) -> Vec<Token> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let ident_start = |ch: char| ch == '_' || ch.is_alphabetic();
    let ident_char = |ch: char| ch == '_' || ch.is_alphanumeric();
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if let Some((len, hashes)) = raw_string_start(&c[i..]) {
            // r"…", r#"…"#, br"…"
            let start_line = line;
            i += len;
            let mut s = String::new();
            while i < c.len() {
                if c[i] == '"' && (0..hashes).all(|h| c.get(i + 1 + h) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                if c[i] == '\n' {
                    line += 1;
                }
                s.push(c[i]);
                i += 1;
            }
            out.push(Token {
                tok: Tok::Str(s),
                line: start_line,
            });
        } else if ch == '"' || (ch == 'b' && next == Some('"')) {
            let start_line = line;
            i += if ch == 'b' { 2 } else { 1 };
            let mut s = String::new();
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if c.get(i) == Some(&'\n') {
                    line += 1;
                }
                if let Some(&x) = c.get(i) {
                    s.push(x);
                }
                i += 1;
            }
            i += 1;
            out.push(Token {
                tok: Tok::Str(s),
                line: start_line,
            });
        } else if ch == '\'' || (ch == 'b' && next == Some('\'')) {
            // A char literal ('x', '\n', '\u{1F600}', b'x') or a lifetime ('a).
            let j = if ch == 'b' { i + 1 } else { i };
            if c.get(j + 1) == Some(&'\\') {
                i = j + 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(j + 2) == Some(&'\'') {
                i = j + 3;
            } else {
                i = j + 1;
                while i < c.len() && ident_char(c[i]) {
                    i += 1;
                }
            }
        } else if ch == 'r' && next == Some('#') && c.get(i + 2).is_some_and(|&x| ident_start(x)) {
            // A raw identifier: r#type.
            i += 2;
            let start = i;
            while i < c.len() && ident_char(c[i]) {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Ident(c[start..i].iter().collect()),
                line,
            });
        } else if ident_start(ch) {
            let start = i;
            while i < c.len() && ident_char(c[i]) {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Ident(c[start..i].iter().collect()),
                line,
            });
        } else if ch.is_ascii_digit() {
            while i < c.len()
                && (ident_char(c[i])
                    || (c[i] == '.' && c.get(i + 1).is_some_and(|x| x.is_ascii_digit())))
            {
                i += 1;
            }
        } else {
            out.push(Token {
                tok: Tok::Punct(ch),
                line,
            });
            i += 1;
        }
    }
    out
}

/// At a raw string (`r"`, `r#"`, `br##"`): the length of its opening and the
/// number of `#`.
fn raw_string_start(c: &[char]) -> Option<(usize, usize)> {
    let mut i = 0;
    if c.first() == Some(&'b') {
        i += 1;
    }
    if c.get(i) != Some(&'r') {
        return None;
    }
    i += 1;
    let hashes = c[i..].iter().take_while(|&&x| x == '#').count();
    i += hashes;
    (c.get(i) == Some(&'"')).then_some((i + 1, hashes))
}

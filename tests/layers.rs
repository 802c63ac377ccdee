//! The import rule of README.md's "Layout": src/ is made of layers, and a layer imports only from
//! the layers below it (and from the utilities, which anyone may use). This test reads every
//! src/**/*.rs, finds each path into another top-level module (`crate::x`, the items of a
//! `use crate::{x, y}` group, and `super::` climbing out of a layer), and fails naming the file,
//! the line and the rule broken.

use std::fmt;
use std::path::{Path, PathBuf};

/// The layers, top down: a layer may import from the layers after it in this list. Layers on the
/// same line are peers and import neither each other nor anything above them.
const LAYERS: &[&[&str]] = &[
    &["main", "cmd"],  // src/main.rs and the CLI: nothing below imports them
    &["check", "rl"],  // `prefer check` / `bench`; PPO, GRPO and RLOO
    &["train"],        // the run skeleton and the offline trainers
    &["generate"],     // the rollout engine
    &["data"],         // tokenizer, chat template, readers (they read the model's config)
    &["model"],        // config, weights, the Llama forward and backward over the op set
    &["dist"], // many processes: the launcher's variables, the rendezvous (communicator next)
    &["ops"],  // the op set: the Backend trait, cpu/ (the oracle) and cuda/
    &["loss", "eval"], // the formulas: losses and their gradients; the evaluations' scorers
];

/// Modules anyone may import; they import no layer (only each other).
const UTILITIES: &[&str] = &["output", "signals", "emu", "huge_pages"];

/// Where a file or a path sits: a layer (its rank, 0 = top) or a utility.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Place {
    Layer(usize),
    Utility,
}

fn place(module: &str) -> Option<Place> {
    if UTILITIES.contains(&module) {
        return Some(Place::Utility);
    }
    LAYERS
        .iter()
        .position(|peers| peers.contains(&module))
        .map(Place::Layer)
}

/// A path out of a file into another top-level module: `target` (e.g. "model") on `line`.
#[derive(Clone, Debug, PartialEq)]
struct Reference {
    line: usize,
    target: String,
}

/// A broken rule, as the test reports it.
#[derive(Debug, PartialEq)]
struct Violation {
    file: String,
    line: usize,
    rule: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.rule)
    }
}

/// The module path of a file under src/: src/ops/cpu/rope.rs → [ops, cpu, rope], src/ops/mod.rs
/// → [ops], src/main.rs → [main], src/lib.rs → [] (the crate root).
fn module_path(rel: &str) -> Vec<String> {
    let rel = rel.strip_prefix("src/").unwrap_or(rel);
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The text with comments, string and char literals blanked out (newlines kept, so lines still
/// count), so that a path in a doc comment or a message is not taken for an import.
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (next == Some('"') || next == Some('#'))
            && !ident_char_before(&c, i)
        {
            // A raw string r"…" or r#"…"#: it ends at a quote followed by as many #.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            while j < c.len()
                && !(c[j] == '"' && (0..hashes).all(|h| c.get(j + 1 + h) == Some(&'#')))
            {
                j += 1;
            }
            let end = (j + 1 + hashes).min(c.len());
            c[i..end].iter().for_each(|&ch| out.push(blank(ch)));
            i = end;
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{..}'), or a lifetime ('a), which is code.
            let end = if next == Some('\\') {
                (i + 2..c.len()).find(|&j| c[j] == '\'')
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    c[i..=e].iter().for_each(|&ch| out.push(blank(ch)));
                    i = e + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn ident_char_before(c: &[char], i: usize) -> bool {
    i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_')
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Path, // ::
    Open,
    Close,
    Comma,
    Other(char),
}

/// Identifiers, `::`, braces and commas, each with its line (from 1).
fn tokens(code: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = code.chars().collect();
    let (mut out, mut line, mut i) = (Vec::new(), 1, 0);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(c[start..i].iter().collect()), line));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::Path, line));
            i += 2;
        } else {
            let t = match ch {
                '{' => Tok::Open,
                '}' => Tok::Close,
                ',' => Tok::Comma,
                other => Tok::Other(other),
            };
            out.push((t, line));
            i += 1;
        }
    }
    out
}

/// Every path in `text` (the file src/`rel`) that leaves the file's top-level module: its
/// target module and line. Inline `mod x { … }` blocks count for `super::`.
fn references(rel: &str, text: &str) -> Vec<Reference> {
    let toks = tokens(&code_only(text));
    let file_module = module_path(rel);
    let home = file_module.first().cloned();
    // Inline modules open at a brace depth: (depth inside the module, its name).
    let (mut depth, mut inline): (usize, Vec<(usize, String)>) = (0, Vec::new());
    let mut refs = Vec::new();
    for i in 0..toks.len() {
        match &toks[i].0 {
            Tok::Open => {
                depth += 1;
                if let (Some((Tok::Ident(m), _)), Some((Tok::Ident(name), _))) = (
                    i.checked_sub(2).map(|j| &toks[j]),
                    i.checked_sub(1).map(|j| &toks[j]),
                ) {
                    if m == "mod" {
                        inline.push((depth, name.clone()));
                    }
                }
            }
            Tok::Close => {
                if inline.last().is_some_and(|(d, _)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(start) if start == "crate" || start == "super" => {
                // A path's first segment only: not `x::super`, not `$crate`, not `pub(crate)`.
                let at_start = i == 0 || !matches!(toks[i - 1].0, Tok::Path | Tok::Other('$'));
                if !at_start || toks.get(i + 1).map(|t| &t.0) != Some(&Tok::Path) {
                    continue;
                }
                let mut base: Vec<String> = if start == "crate" {
                    Vec::new()
                } else {
                    let mut m = file_module.clone();
                    m.extend(inline.iter().map(|(_, n)| n.clone()));
                    m.pop();
                    m
                };
                let mut j = i + 2; // past `super ::` / `crate ::`
                while let (Some((Tok::Ident(s), _)), Some((Tok::Path, _))) =
                    (toks.get(j), toks.get(j + 1))
                {
                    if s != "super" {
                        break;
                    }
                    base.pop();
                    j += 2;
                }
                let line = toks[i].1;
                let mut targets = Vec::new();
                if let Some(top) = base.first() {
                    targets.push(top.clone());
                } else {
                    match toks.get(j).map(|t| &t.0) {
                        Some(Tok::Ident(name)) => targets.push(name.clone()),
                        Some(Tok::Open) => targets.extend(group_heads(&toks, j)),
                        _ => {}
                    }
                }
                for target in targets {
                    if target != "self" && Some(&target) != home.as_ref() {
                        refs.push(Reference { line, target });
                    }
                }
            }
            _ => {}
        }
    }
    refs
}

/// The first segment of each item of the `{ … }` group opening at `open`.
fn group_heads(toks: &[(Tok, usize)], open: usize) -> Vec<String> {
    let (mut heads, mut depth, mut item_start) = (Vec::new(), 0, true);
    for (t, _) in &toks[open..] {
        match t {
            Tok::Open => {
                depth += 1;
                item_start = depth == 1;
            }
            Tok::Close => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            Tok::Comma if depth == 1 => item_start = true,
            Tok::Ident(name) if item_start && depth == 1 => {
                heads.push(name.clone());
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

/// The rules `rel` (a file under src/) breaks with the references in `text`.
fn violations(rel: &str, text: &str) -> Vec<Violation> {
    let module = module_path(rel);
    let from_name = module.first().map_or("lib", String::as_str);
    if from_name == "lib" {
        return Vec::new(); // src/lib.rs declares the modules
    }
    let report = |line, rule: String| Violation {
        file: rel.to_string(),
        line,
        rule,
    };
    let Some(from) = place(from_name) else {
        return vec![report(
            1,
            format!(
                "src/{from_name} is in no layer: add it to LAYERS or UTILITIES in tests/layers.rs"
            ),
        )];
    };
    let mut out = Vec::new();
    for r in references(rel, text) {
        let to = place(&r.target);
        let rule = match (from, to) {
            (_, None) => Some(format!(
                "`{}` is no module of this crate's layers (tests/layers.rs knows it not)",
                r.target
            )),
            (_, Some(Place::Utility)) => None,
            (Place::Utility, Some(Place::Layer(_))) => Some(format!(
                "{from_name} is a utility and imports no layer, but reads {}",
                r.target
            )),
            (Place::Layer(a), Some(Place::Layer(b))) if b > a => None,
            (Place::Layer(a), Some(Place::Layer(b))) if b == a => Some(format!(
                "{from_name} and {} are peers and import neither each other",
                r.target
            )),
            (Place::Layer(_), Some(Place::Layer(_))) => Some(format!(
                "{from_name} imports from {}, a layer above it",
                r.target
            )),
        };
        if let Some(rule) = rule {
            out.push(report(r.line, rule));
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_layer_imports_from_a_layer_above_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    assert!(files.len() > 50, "src/ has {} .rs files", files.len());
    let mut broken = Vec::new();
    for path in &files {
        let rel = path
            .strip_prefix(root)
            .expect("under the crate")
            .to_string_lossy();
        let text = std::fs::read_to_string(path).expect("a readable source file");
        broken.extend(violations(&rel, &text));
    }
    let list: Vec<String> = broken.iter().map(ToString::to_string).collect();
    assert!(
        broken.is_empty(),
        "imports against the layers (README.md, \"Layout\"):\n{}",
        list.join("\n")
    );
}

#[test]
fn the_scanner_finds_paths_groups_and_climbs() {
    let text = r#"//! Mentions crate::train in a comment, which is no import.
use crate::loss::DpoConfig;
use crate::{
    model::{Batch, Llama},
    output, self,
};
const S: &str = "crate::cmd::x";
fn f<'a>(x: &'a str) -> char { let _ = 'c'; crate::generate::run(); '\n' }
pub(crate) fn g() { super::super::super::rl::go(); super::super::cuda::x(); }
mod tests {
    use super::*;
    use super::super::super::super::check;
}
"#;
    let found: Vec<(usize, String)> = references("src/ops/cpu/x.rs", text)
        .into_iter()
        .map(|r| (r.line, r.target))
        .collect();
    let want: Vec<(usize, String)> = [
        (2, "loss"),
        (3, "model"),
        (3, "output"),
        (8, "generate"),
        (9, "rl"),
        (12, "check"),
    ]
    .into_iter()
    .map(|(l, t)| (l, t.to_string()))
    .collect();
    assert_eq!(found, want);
}

#[test]
fn an_import_from_above_is_reported_with_its_file_and_line() {
    let broken = violations(
        "src/ops/cpu/rope.rs",
        "use crate::loss::X;\nuse crate::model::Llama;\n",
    );
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert_eq!(
        broken[0].to_string(),
        "src/ops/cpu/rope.rs:2: ops imports from model, a layer above it"
    );
    // Peers, utilities, and a module no layer holds.
    assert_eq!(violations("src/rl/x.rs", "use crate::check::Y;").len(), 1);
    assert!(violations("src/rl/x.rs", "use crate::{train::A, signals::B, loss::C};").is_empty());
    assert_eq!(violations("src/signals.rs", "use crate::ops::Z;").len(), 1);
    assert_eq!(violations("src/newthing/a.rs", "").len(), 1);
    assert!(violations("src/cmd/x.rs", "use crate::{check, rl, train, ops};").is_empty());
    assert_eq!(
        violations("src/train/x.rs", "fn f() { crate::cmd::go() }").len(),
        1
    );
}

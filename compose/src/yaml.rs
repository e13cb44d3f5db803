//! A YAML document as a tree whose every node knows its line, built from yaml-rust2's marked
//! events, so that validation errors can point at the line of the offending value.
//!
//! Budgets: aliases are expanded into copies, so a few hundred bytes of nested anchors ("billion
//! laughs") would otherwise make gigabytes. The builder counts every node it creates or copies
//! (an anchor's stored copy and each alias's expansion) and refuses the document past
//! [`MAX_NODES`] or [`MAX_SCALAR_BYTES`] of text, checking an alias's size before copying it;
//! and no node may sit deeper than
//! [`MAX_DEPTH`] levels, aliases included, so nothing that walks or drops the tree recurses
//! without bound.

use std::collections::{HashMap, HashSet};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Most nodes a document may create, copies made by aliases included: enough for a 64 KiB
/// file written one `key: value` per line without aliases (about 26,000), and little enough that
/// hitting it takes milliseconds.
pub(crate) const MAX_NODES: usize = 30_000;

/// Most bytes of scalar text a document may hold, copies made by aliases included: sixteen
/// times the largest Compose file, so one long value aliased many times cannot take gigabytes
/// within the node budget.
pub(crate) const MAX_SCALAR_BYTES: usize = 1 << 20;

/// Deepest nesting of sequences and mappings, aliases included. Compose needs about 6.
pub(crate) const MAX_DEPTH: usize = 32;

/// One YAML node with the 1-based line (and column) it starts at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub line: usize,
    pub col: usize,
    pub value: Value,
}

/// The value of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// A scalar as written; `quoted` is true for '...', "...", | and > scalars (always strings).
    Scalar { text: String, quoted: bool },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// True for `~`, `null`, `Null`, `NULL` and the empty plain scalar.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, quoted: false }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The scalar text, or `None` for a sequence or mapping.
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// A word for the kind of node, for error messages ("a list", "a mapping", "a string").
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Scalar { .. } if self.is_null() => "empty (null)",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax error: 1-based line and column and the parser's message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Parse one YAML document. An empty document yields a null scalar at line 1.
pub(crate) fn parse_document(text: &str) -> Result<Node, SyntaxError> {
    let mut builder = TreeBuilder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| SyntaxError {
        line: e.marker().line(),
        col: e.marker().col() + 1,
        message: e.info().to_string(),
    })?;
    if let Some(error) = builder.error {
        return Err(error);
    }
    if builder.documents > 1 {
        return Err(SyntaxError {
            line: builder.second_document_line,
            col: 1,
            message: "more than one YAML document (`---`); an app spec is a single document"
                .to_string(),
        });
    }
    Ok(builder.root.unwrap_or(Node {
        line: 1,
        col: 1,
        value: Value::Scalar {
            text: String::new(),
            quoted: false,
        },
    }))
}

/// A container being filled: a sequence, or a mapping waiting for a key or a value.
enum Open {
    Seq(Node, usize),
    Map(Node, usize, Option<Node>),
}

#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Open>,
    root: Option<Node>,
    /// Anchored nodes with their [`Size`].
    anchors: HashMap<usize, (Node, Size)>,
    /// Nodes created or copied so far (see [`MAX_NODES`]).
    nodes: usize,
    /// Scalar bytes created or copied so far (see [`MAX_SCALAR_BYTES`]).
    bytes: usize,
    documents: usize,
    second_document_line: usize,
    error: Option<SyntaxError>,
}

/// A subtree's node count, scalar bytes and height (1 for a scalar).
#[derive(Debug, Clone, Copy)]
struct Size {
    nodes: usize,
    bytes: usize,
    height: usize,
}

/// Count a finished subtree. Its height is within [`MAX_DEPTH`], so the recursion is bounded.
fn size(node: &Node) -> Size {
    let mut bytes = 0;
    let children: Box<dyn Iterator<Item = &Node>> = match &node.value {
        Value::Scalar { text, .. } => {
            bytes = text.len();
            Box::new(std::iter::empty())
        }
        Value::Seq(items) => Box::new(items.iter()),
        Value::Map(entries) => Box::new(entries.iter().flat_map(|(k, v)| [k, v])),
    };
    children.fold(
        Size {
            nodes: 1,
            bytes,
            height: 1,
        },
        |acc, child| {
            let child = size(child);
            Size {
                nodes: acc.nodes + child.nodes,
                bytes: acc.bytes + child.bytes,
                height: acc.height.max(child.height + 1),
            }
        },
    )
}

impl TreeBuilder {
    fn fail(&mut self, mark: Marker, message: String) {
        if self.error.is_none() {
            self.error = Some(SyntaxError {
                line: mark.line(),
                col: mark.col() + 1,
                message,
            });
        }
    }

    /// Count `nodes` and `bytes` of scalar text more against [`MAX_NODES`] and
    /// [`MAX_SCALAR_BYTES`]; false (and the error recorded) past either.
    fn spend(&mut self, nodes: usize, bytes: usize, mark: Marker) -> bool {
        self.nodes = self.nodes.saturating_add(nodes);
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > MAX_SCALAR_BYTES {
            self.fail(
                mark,
                format!(
                    "the YAML expands to more than {} MiB of text (a long value aliased many times?); write the repeated parts out or drop the aliases",
                    MAX_SCALAR_BYTES >> 20
                ),
            );
            return false;
        }
        if self.nodes > MAX_NODES {
            self.fail(
                mark,
                format!(
                    "the YAML expands to more than {MAX_NODES} nodes (aliases of aliases?); an app spec is far smaller: write the repeated parts out or drop the aliases"
                ),
            );
            return false;
        }
        true
    }

    /// Refuse a container opened (or an alias of `height` placed) below [`MAX_DEPTH`] levels.
    fn within_depth(&mut self, height: usize, mark: Marker) -> bool {
        if self.stack.len() + height > MAX_DEPTH {
            self.fail(
                mark,
                format!(
                    "the YAML nests deeper than {MAX_DEPTH} levels; an app spec needs far fewer"
                ),
            );
            return false;
        }
        true
    }

    /// Attach a finished node to the open container (or make it the root).
    fn push(&mut self, node: Node, anchor: usize, mark: Marker) {
        if anchor > 0 {
            let size = size(&node);
            // The stored copy costs as much as the node itself.
            if !self.spend(size.nodes, size.bytes, mark) {
                return;
            }
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq(seq, _)) => {
                if let Value::Seq(items) = &mut seq.value {
                    items.push(node);
                }
            }
            Some(Open::Map(map, _, key)) => match key.take() {
                None => *key = Some(node),
                Some(k) => {
                    let mut node = node;
                    // An empty value is reported at the next token; its key's line is the one
                    // the user wrote.
                    if matches!(&node.value, Value::Scalar { text, quoted: false } if text.is_empty())
                    {
                        node.line = k.line;
                        node.col = k.col;
                    }
                    if let Value::Map(entries) = &mut map.value {
                        entries.push((k, node));
                    }
                }
            },
        }
    }
}

/// Apply YAML merge keys (`<<: *base` or `<<: [*a, *b]`) of a finished mapping: the merged
/// mappings' entries are added unless the mapping (or an earlier merged mapping) has the key.
fn merge_keys(map: &mut Node) -> Result<(), String> {
    let Value::Map(entries) = &mut map.value else {
        return Ok(());
    };
    let is_merge =
        |key: &Node| matches!(&key.value, Value::Scalar { text, quoted: false } if text == "<<");
    if !entries.iter().any(|(k, _)| is_merge(k)) {
        return Ok(());
    }
    let (merges, mut own): (Vec<_>, Vec<_>) = std::mem::take(entries)
        .into_iter()
        .partition(|(k, _)| is_merge(k));
    let mut sources = Vec::new();
    for (_, value) in merges {
        match value.value {
            Value::Map(from) => sources.push(from),
            Value::Seq(items) => {
                for item in items {
                    match item.value {
                        Value::Map(from) => sources.push(from),
                        _ => {
                            return Err(format!(
                            "a merge key (`<<`) list may hold only mappings, found {} at line {}",
                            item.kind(),
                            item.line
                        ))
                        }
                    }
                }
            }
            _ => {
                return Err(format!(
                    "a merge key (`<<`) takes a mapping or a list of mappings, found {}",
                    value.kind()
                ))
            }
        }
    }
    // Keys already there, so a hostile file's large merges cost linear, not quadratic, time.
    let mut present: HashSet<String> = own
        .iter()
        .filter_map(|(k, _)| k.as_scalar().map(str::to_owned))
        .collect();
    for from in sources {
        for (key, value) in from {
            // A non-scalar key never equals another; it is added.
            let new = key.as_scalar().is_none_or(|k| present.insert(k.to_owned()));
            if new {
                own.push((key, value));
            }
        }
    }
    *entries = own;
    Ok(())
}

fn reject_tag(tag: &Option<Tag>) -> Option<String> {
    tag.as_ref().map(|t| {
        format!(
            "YAML tags ({}{}) are not supported in an app spec; remove the tag",
            t.handle, t.suffix
        )
    })
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        // After the first error the document is refused: build nothing more.
        if self.error.is_some() {
            return;
        }
        let (line, col) = (mark.line(), mark.col() + 1);
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents == 2 {
                    self.second_document_line = line;
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                if let Some(msg) = reject_tag(&tag) {
                    return self.fail(mark, msg);
                }
                if !self.spend(1, text.len(), mark) {
                    return;
                }
                let quoted = !matches!(style, TScalarStyle::Plain);
                let node = Node {
                    line,
                    col,
                    value: Value::Scalar { text, quoted },
                };
                self.push(node, anchor, mark);
            }
            Event::SequenceStart(anchor, tag) => {
                if let Some(msg) = reject_tag(&tag) {
                    return self.fail(mark, msg);
                }
                if !self.within_depth(1, mark) || !self.spend(1, 0, mark) {
                    return;
                }
                let node = Node {
                    line,
                    col,
                    value: Value::Seq(Vec::new()),
                };
                self.stack.push(Open::Seq(node, anchor));
            }
            Event::MappingStart(anchor, tag) => {
                if let Some(msg) = reject_tag(&tag) {
                    return self.fail(mark, msg);
                }
                if !self.within_depth(1, mark) || !self.spend(1, 0, mark) {
                    return;
                }
                let node = Node {
                    line,
                    col,
                    value: Value::Map(Vec::new()),
                };
                self.stack.push(Open::Map(node, anchor, None));
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Open::Seq(node, anchor)) => self.push(node, anchor, mark),
                Some(Open::Map(mut node, anchor, _)) => {
                    if let Err(message) = merge_keys(&mut node) {
                        return self.fail(mark, message);
                    }
                    self.push(node, anchor, mark)
                }
                None => self.fail(mark, "unbalanced YAML structure".to_string()),
            },
            Event::Alias(id) => {
                let Some(&(_, size)) = self.anchors.get(&id) else {
                    return self.fail(mark, "alias to an unknown anchor".to_string());
                };
                // Checked before the copy is made.
                if !self.within_depth(size.height, mark)
                    || !self.spend(size.nodes, size.bytes, mark)
                {
                    return;
                }
                let mut node = self.anchors[&id].0.clone();
                node.line = line;
                node.col = col;
                self.push(node, 0, mark);
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_carry_lines() {
        let doc = parse_document("a:\n  b: 1\n  c:\n    - x\n    - 'y'\n").unwrap();
        let Value::Map(top) = &doc.value else {
            panic!("not a map")
        };
        let (_, a) = &top[0];
        let Value::Map(inner) = &a.value else {
            panic!("not a map")
        };
        assert_eq!(inner[0].1.line, 2);
        let Value::Seq(items) = &inner[1].1.value else {
            panic!("not a seq")
        };
        assert_eq!(items[1].line, 5);
        assert_eq!(
            items[1].value,
            Value::Scalar {
                text: "y".into(),
                quoted: true
            }
        );
    }

    #[test]
    fn aliases_are_resolved() {
        let doc = parse_document("x: &e [1, 2]\ny: *e\n").unwrap();
        let Value::Map(top) = &doc.value else {
            panic!()
        };
        assert!(matches!(&top[1].1.value, Value::Seq(v) if v.len() == 2));
        assert_eq!(top[1].1.line, 2);
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let err = parse_document("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.line >= 1, "{err:?}");
        let err = parse_document("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err.line, 2);
    }

    /// `levels` anchors, each a list of ten aliases of the one before: 10^levels nodes.
    fn laughs(levels: usize) -> String {
        let mut doc = String::from("a0: &a0 [x]\n");
        for i in 1..=levels {
            let prev = format!("*a{}", i - 1);
            let items = [prev.as_str(); 10].join(", ");
            doc.push_str(&format!("a{i}: &a{i} [{items}]\n"));
        }
        doc
    }

    #[test]
    fn an_alias_bomb_is_refused_before_it_expands() {
        let bomb = laughs(9);
        assert!(bomb.len() < 1024, "{}", bomb.len());
        let started = std::time::Instant::now();
        let err = parse_document(&bomb).unwrap_err();
        assert!(err.message.contains("nodes"), "{err:?}");
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        // Small expansions are still fine.
        assert!(parse_document(&laughs(3)).is_ok());
    }

    #[test]
    fn a_long_value_aliased_many_times_is_refused_by_its_bytes() {
        // 30 KB once, then 3 x 10 copies: far under the node budget, 30 MB of text.
        let mut doc = format!("a0: &a0 {}\n", "x".repeat(30_000));
        for i in 1..=3 {
            let prev = format!("*a{}", i - 1);
            doc.push_str(&format!(
                "a{i}: &a{i} [{}]\n",
                [prev.as_str(); 10].join(", ")
            ));
        }
        let err = parse_document(&doc).unwrap_err();
        assert!(err.message.contains("MiB of text"), "{err:?}");
    }

    #[test]
    fn deep_nesting_is_refused_aliases_included() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(parse_document(&deep)
            .unwrap_err()
            .message
            .contains("deeper"));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse_document(&ok).is_ok());
        // Each alias nests the previous anchor one level deeper.
        let mut doc = String::from("a0: &a0 [x]\n");
        for i in 1..MAX_DEPTH {
            doc.push_str(&format!("a{i}: &a{i} [*a{}]\n", i - 1));
        }
        assert!(parse_document(&doc).unwrap_err().message.contains("deeper"));
        // A flood of brackets (64 KiB) is refused without exhausting the stack.
        let flood = "[".repeat(64 * 1024);
        assert!(parse_document(&flood).is_err());
    }

    fn keys(node: &Node) -> Vec<(String, String)> {
        let Value::Map(entries) = &node.value else {
            panic!("not a map: {node:?}")
        };
        entries
            .iter()
            .map(|(k, v)| {
                let value = v
                    .as_scalar()
                    .map_or_else(|| v.kind().to_owned(), str::to_owned);
                (k.as_scalar().unwrap().to_owned(), value)
            })
            .collect()
    }

    #[test]
    fn merge_keys_add_what_the_mapping_lacks() {
        let doc = parse_document(
            "base: &base {image: a, restart: always}\nlog: &log {restart: no, user: x}\n\
             one: {<<: *base, image: b}\nmany: {<<: [*log, *base], user: y}\n",
        )
        .unwrap();
        let Value::Map(top) = &doc.value else {
            panic!()
        };
        let pairs = |k: &[(&str, &str)]| -> Vec<(String, String)> {
            k.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            keys(&top[2].1),
            pairs(&[("image", "b"), ("restart", "always")])
        );
        assert_eq!(
            keys(&top[3].1),
            pairs(&[("user", "y"), ("restart", "no"), ("image", "a")])
        );
        let err = parse_document("a: {<<: [1]}\n").unwrap_err();
        assert!(err.message.contains("only mappings"), "{err:?}");
        let err = parse_document("a: {<<: x}\n").unwrap_err();
        assert!(err.message.contains("takes a mapping"), "{err:?}");
        // A quoted "<<" is an ordinary key.
        let doc = parse_document("a: {'<<': x}\n").unwrap();
        let Value::Map(top) = &doc.value else {
            panic!()
        };
        assert_eq!(keys(&top[0].1), pairs(&[("<<", "x")]));
    }

    #[test]
    fn empty_document_is_null() {
        assert!(parse_document("").unwrap().is_null());
    }
}

//! A YAML document as a tree whose every node knows its line, built from yaml-rust2's marked
//! events, so that validation errors can point at the line of the offending value.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

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
    anchors: HashMap<usize, Node>,
    documents: usize,
    second_document_line: usize,
    error: Option<SyntaxError>,
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

    /// Attach a finished node to the open container (or make it the root).
    fn push(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
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
                let quoted = !matches!(style, TScalarStyle::Plain);
                let node = Node {
                    line,
                    col,
                    value: Value::Scalar { text, quoted },
                };
                self.push(node, anchor);
            }
            Event::SequenceStart(anchor, tag) => {
                if let Some(msg) = reject_tag(&tag) {
                    return self.fail(mark, msg);
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
                let node = Node {
                    line,
                    col,
                    value: Value::Map(Vec::new()),
                };
                self.stack.push(Open::Map(node, anchor, None));
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Open::Seq(node, anchor)) | Some(Open::Map(node, anchor, _)) => {
                    self.push(node, anchor)
                }
                None => self.fail(mark, "unbalanced YAML structure".to_string()),
            },
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(mut node) => {
                    node.line = line;
                    node.col = col;
                    self.push(node, 0);
                }
                None => self.fail(mark, "alias to an unknown anchor".to_string()),
            },
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

    #[test]
    fn empty_document_is_null() {
        assert!(parse_document("").unwrap().is_null());
    }
}

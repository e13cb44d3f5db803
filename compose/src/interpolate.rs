//! Variable interpolation as the Compose specification defines it, done on the YAML tree so that
//! a problem keeps its line: `${VAR}`, `$VAR`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:?message}`, `${VAR?message}`, `${VAR:+other}`, `${VAR+other}` and `$$` (a literal `$`)
//! in every scalar value; keys are left as written, and so are the values under `x-*` keys (they
//! are ignored anyway). A variable that is not set and has no default is a problem, never an
//! empty string.
//!
//! Budgets: a default may hold another `${...}` up to [`MAX_NESTING`] deep; a variable's value
//! is put in as it is (never interpolated again); a value is at most [`MAX_SCALAR_BYTES`] once
//! interpolated, and the interpolated values of a document at most [`MAX_DOCUMENT_BYTES`].

use std::collections::{BTreeMap, BTreeSet};

use super::parse::join;
use super::yaml::{Node, Value};
use super::Problem;

/// Longest value once interpolated.
pub(crate) const MAX_SCALAR_BYTES: usize = 64 << 10;

/// Most bytes all the interpolated values of a document may add up to (16 times the largest
/// Compose file), so that variables cannot make a 64 KiB file take gigabytes.
pub(crate) const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Deepest `${A:-${B:-...}}` nesting.
const MAX_NESTING: usize = 8;

/// Keys whose mapping has names for keys (services, volumes, variables, labels, ...): an `x-`
/// key there is one of the names, not an extension field.
const NAMED_MAPS: &[&str] = &[
    "services",
    "volumes",
    "secrets",
    "configs",
    "environment",
    "labels",
    "sysctls",
    "extra_hosts",
    "depends_on",
];

/// Why a value cannot be interpolated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InterpolationError {
    /// `${VAR}` or `$VAR` with `VAR` not set.
    #[error(
        "variable {name} is not set on this device; {}, or give a default: ${{{name}:-value}}",
        how_to_set(name)
    )]
    Unset { name: String },
    /// `${VAR?message}` with `VAR` not set.
    #[error("variable {name} is not set: {message}")]
    Required { name: String, message: String },
    /// `${VAR:?message}` with `VAR` empty.
    #[error("variable {name} is empty: {message}")]
    Empty { name: String, message: String },
    /// A `$` that starts none of the forms.
    #[error(
        "{found:?} is not a variable reference: write ${{VAR}} or $VAR, and $$ for a literal '$'"
    )]
    Syntax { found: String },
    /// `${` without its `}`.
    #[error("{found:?} has no closing '}}'; write ${{VAR}}")]
    Unclosed { found: String },
    /// A value longer than [`MAX_SCALAR_BYTES`] once interpolated.
    #[error("the value is longer than {} KiB once variables are put in; shorten it or the variables' values", MAX_SCALAR_BYTES >> 10)]
    TooLong,
    /// Defaults nested deeper than [`MAX_NESTING`].
    #[error("defaults hold ${{...}} more than {} deep; nest less", MAX_NESTING)]
    TooDeep,
    /// The document's interpolated values past [`MAX_DOCUMENT_BYTES`].
    #[error("the interpolated values of the file add up to more than {} MiB; shorten the variables' values", MAX_DOCUMENT_BYTES >> 20)]
    DocumentTooLong,
}

/// How an operator sets variable `name` on a device.
fn how_to_set(name: &str) -> String {
    if name.starts_with("CAIRN_SITE") {
        format!(
            "central sets {name} for a device at a site (cairnctl device site ID SITE) that has it"
        )
    } else if name.starts_with("CAIRN_") {
        format!("central sets the built-in {name} only for a device that has it (CAIRN_DEVICE_LABEL_* from the device's labels)")
    } else {
        format!("set it with `cairnctl variable set {name} VALUE` and --fleet, --site SITE or --deployment NAME")
    }
}

/// A Compose field whose value central checks against the device's labels before the
/// variables of its devices are known: `services.*.cap_add` and `services.*.devices`.
fn is_privileged(path: &str) -> bool {
    let field =
        |name: &str| path.ends_with(&format!(".{name}")) || path.contains(&format!(".{name}["));
    path.starts_with("services.") && (field("cap_add") || field("devices"))
}

/// True if `text` refers to a variable (a `$` that is not part of `$$`).
fn has_reference(text: &str) -> bool {
    text.replace("$$", "").contains('$')
}

/// At most the first characters of `text`, for a message.
fn excerpt(text: &str) -> String {
    // Two characters say what is wrong; more could quote a password from the value.
    text.chars().take(2).collect()
}

/// Length of the variable name `text` starts with (`[A-Za-z_][A-Za-z0-9_]*`), 0 if none.
fn name_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    match bytes.first() {
        Some(b) if b.is_ascii_alphabetic() || *b == b'_' => {
            1 + bytes[1..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count()
        }
        _ => 0,
    }
}

/// Index of the `}` closing a `${` whose inside `text` starts, skipping nested `${...}` and `$$`.
fn closing_brace(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (b'$', Some(b'$')) => i += 1,
            (b'$', Some(b'{')) => {
                depth += 1;
                i += 1;
            }
            (b'}', _) if depth == 0 => return Some(i),
            (b'}', _) => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn push(out: &mut String, text: &str) -> Result<(), InterpolationError> {
    if out.len() + text.len() > MAX_SCALAR_BYTES {
        return Err(InterpolationError::TooLong);
    }
    out.push_str(text);
    Ok(())
}

/// Interpolates texts with one set of variables.
struct Expander<'v> {
    variables: &'v BTreeMap<String, String>,
}

impl Expander<'_> {
    fn lookup(&self, name: &str) -> Result<&str, InterpolationError> {
        self.variables
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| InterpolationError::Unset {
                name: name.to_string(),
            })
    }

    /// Interpolate `text` onto `out`; `depth`: how many defaults it sits in.
    fn expand(&self, text: &str, depth: usize, out: &mut String) -> Result<(), InterpolationError> {
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            push(out, &rest[..at])?;
            let after = &rest[at + 1..];
            rest = if let Some(after) = after.strip_prefix('$') {
                push(out, "$")?;
                after
            } else if let Some(inside) = after.strip_prefix('{') {
                self.braced(inside, depth, out)?
            } else {
                let n = name_len(after);
                if n == 0 {
                    return Err(InterpolationError::Syntax {
                        found: excerpt(&rest[at..]),
                    });
                }
                push(out, self.lookup(&after[..n])?)?;
                &after[n..]
            };
        }
        push(out, rest)
    }

    /// Interpolate the `${...}` whose inside `text` starts onto `out`; the text after its `}`.
    fn braced<'t>(
        &self,
        text: &'t str,
        depth: usize,
        out: &mut String,
    ) -> Result<&'t str, InterpolationError> {
        if depth >= MAX_NESTING {
            return Err(InterpolationError::TooDeep);
        }
        let syntax = || InterpolationError::Syntax {
            found: excerpt(&format!("${{{text}")),
        };
        let close = closing_brace(text).ok_or_else(|| InterpolationError::Unclosed {
            found: excerpt(&format!("${{{text}")),
        })?;
        let (inside, rest) = (&text[..close], &text[close + 1..]);
        let (name, operator) = inside.split_at(name_len(inside));
        if name.is_empty() {
            return Err(syntax());
        }
        let value = self.variables.get(name).map(String::as_str);
        // With ':', an empty value counts as not set.
        let (colon, operator) = match operator.strip_prefix(':') {
            Some(operator) => (true, operator),
            None => (false, operator),
        };
        let given = value.filter(|v| !colon || !v.is_empty());
        let mut chars = operator.chars();
        let (kind, argument) = (chars.next(), chars.as_str());
        match (kind, given) {
            (None, _) if !colon => push(out, self.lookup(name)?)?,
            (Some('-' | '?'), Some(value)) => push(out, value)?,
            (Some('-'), None) | (Some('+'), Some(_)) => self.expand(argument, depth + 1, out)?,
            (Some('+'), None) => {}
            (Some('?'), None) => return Err(required(name, value, argument)),
            _ => return Err(syntax()),
        }
        Ok(rest)
    }
}

/// The error of `${NAME?message}` (or `:?`) when `NAME` is not given.
fn required(name: &str, value: Option<&str>, message: &str) -> InterpolationError {
    let (name, message) = (name.to_string(), message.to_string());
    match value {
        _ if message.is_empty() => InterpolationError::Unset { name },
        Some(_) => InterpolationError::Empty { name, message },
        None => InterpolationError::Required { name, message },
    }
}

/// Walks a document, interpolating its values.
struct Walk<'v> {
    expander: Expander<'v>,
    problems: Vec<Problem>,
    /// `Some` when a variable that is not set is no problem: the lines of such values.
    deferred: Option<BTreeSet<usize>>,
    /// Bytes of the interpolated values so far (see [`MAX_DOCUMENT_BYTES`]).
    bytes: usize,
}

impl Walk<'_> {
    /// `named`: `node` is the mapping of a [`NAMED_MAPS`] key, where `x-` keys are names.
    fn node(&mut self, node: &mut Node, path: &str, named: bool) {
        let line = node.line;
        match &mut node.value {
            Value::Scalar { text, quoted } => {
                // An interpolated value is a string, even when empty: never null.
                if text.contains('$') && self.scalar(text, line, path) {
                    *quoted = true;
                }
            }
            Value::Seq(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.node(item, &format!("{path}[{i}]"), false);
                }
            }
            Value::Map(entries) => {
                for (key, value) in entries {
                    let Some(key) = key.as_scalar() else {
                        continue;
                    };
                    if key.starts_with("x-") && !named {
                        continue;
                    }
                    let names = !named && NAMED_MAPS.contains(&key);
                    self.node(value, &join(path, key), names);
                }
            }
        }
    }

    /// Interpolate one value in place; false (and a problem) when it cannot be.
    fn scalar(&mut self, text: &mut String, line: usize, path: &str) -> bool {
        if self.deferred.is_some() && is_privileged(path) && has_reference(text) {
            self.problems.push(Problem {
                line,
                path: path.to_string(),
                message: "uses a variable, but central checks the host devices and capabilities an app asks for against its devices' labels before their variables are known; write the value out".to_string(),
            });
            return false;
        }
        let mut out = String::new();
        let result = self.expander.expand(text, 0, &mut out).and_then(|()| {
            self.bytes += out.len();
            if self.bytes > MAX_DOCUMENT_BYTES {
                return Err(InterpolationError::DocumentTooLong);
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                *text = out;
                true
            }
            Err(InterpolationError::Unset { .. } | InterpolationError::Required { .. })
                if self.deferred.is_some() =>
            {
                self.deferred.get_or_insert_with(BTreeSet::new).insert(line);
                false
            }
            Err(error) => {
                self.problems.push(Problem {
                    line,
                    path: path.to_string(),
                    message: error.to_string(),
                });
                false
            }
        }
    }
}

/// Interpolate every value of `root` with `variables`, leaving a value that cannot be as it was
/// written; a problem for each such value.
pub(crate) fn document(root: &mut Node, variables: &BTreeMap<String, String>) -> Vec<Problem> {
    let mut walk = Walk {
        expander: Expander { variables },
        problems: Vec::new(),
        deferred: None,
        bytes: 0,
    };
    walk.node(root, "", false);
    walk.problems
}

/// [`document`], where a variable that is not set (and has no default) is no problem: such a
/// value is left as written and its line is returned with the problems. A variable in the
/// fields [`is_privileged`] names is a problem, set or not.
pub(crate) fn document_deferring_unset(
    root: &mut Node,
    variables: &BTreeMap<String, String>,
) -> (Vec<Problem>, BTreeSet<usize>) {
    let mut walk = Walk {
        expander: Expander { variables },
        problems: Vec::new(),
        deferred: Some(BTreeSet::new()),
        bytes: 0,
    };
    walk.node(root, "", false);
    (walk.problems, walk.deferred.unwrap_or_default())
}

/// Interpolate one text, for the tests of the forms.
#[cfg(test)]
pub(crate) fn text(
    text: &str,
    variables: &BTreeMap<String, String>,
) -> Result<String, InterpolationError> {
    let mut out = String::new();
    Expander { variables }.expand(text, 0, &mut out)?;
    Ok(out)
}

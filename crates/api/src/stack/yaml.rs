//! A YAML document as docker/cli's loader sees it: parsed with line numbers kept, anchors and
//! aliases expanded, `<<` merge keys applied, and plain scalars typed by YAML 1.1 rules (go-yaml
//! v2's), so `0440` is the octal 288 and `yes` is a boolean, while quoted scalars stay strings.
//!
//! Scalars keep their source text until [`to_json`], so interpolation can run on strings first,
//! as docker's does.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A YAML node with the line (1-based) it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Line in the source file.
    pub line: usize,
}

/// A YAML value before typing.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar: its text, and whether it was plain (unquoted, so typed by YAML 1.1 rules).
    Scalar {
        /// The text.
        text: String,
        /// Unquoted and not a block scalar.
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order, keys as text.
    Map(Vec<(String, Node)>),
}

/// A document could not be parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// Line of the problem.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

enum Frame {
    Seq {
        anchor: usize,
        line: usize,
        items: Vec<Node>,
    },
    Map {
        anchor: usize,
        line: usize,
        entries: Vec<(String, Node)>,
        key: Option<(Node, usize)>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    error: Option<ParseError>,
}

impl Builder {
    fn push_node(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    let line = node.line;
                    key.replace((node, line));
                }
                Some((k, line)) => match k.value {
                    // A value is reported at its key's line: that is where a reader looks.
                    Value::Scalar { text, .. } => entries.push((text, Node { line, ..node })),
                    _ => {
                        self.error.get_or_insert(ParseError {
                            line,
                            message: "mapping keys must be strings".to_owned(),
                        });
                    }
                },
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line().max(1);
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let plain = style == TScalarStyle::Plain && tag.is_none();
                self.push_node(
                    Node {
                        value: Value::Scalar { text, plain },
                        line,
                    },
                    anchor,
                );
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(node) => self.push_node(node, 0),
                None => {
                    self.error.get_or_insert(ParseError {
                        line,
                        message: "alias to an unknown anchor".to_owned(),
                    });
                }
            },
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                anchor,
                line,
                items: Vec::new(),
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                anchor,
                line,
                entries: Vec::new(),
                key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq {
                    anchor,
                    line,
                    items,
                }) => self.push_node(
                    Node {
                        value: Value::Seq(items),
                        line,
                    },
                    anchor,
                ),
                Some(Frame::Map {
                    anchor,
                    line,
                    entries,
                    ..
                }) => self.push_node(
                    Node {
                        value: Value::Map(entries),
                        line,
                    },
                    anchor,
                ),
                None => {}
            },
            _ => {}
        }
    }
}

/// Parses one YAML document. An empty document is an empty mapping.
pub fn parse(source: &str) -> Result<Node, ParseError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(source);
    parser.load(&mut builder, false).map_err(|e| ParseError {
        line: e.marker().line().max(1),
        message: e.info().to_owned(),
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    let mut root = builder.root.unwrap_or(Node {
        value: Value::Map(Vec::new()),
        line: 1,
    });
    apply_merges(&mut root)?;
    Ok(root)
}

/// Applies `<<` merge keys everywhere below `node`: keys of the mapping itself win over merged
/// ones, and among merged mappings the earlier wins, as YAML's merge-key type says.
fn apply_merges(node: &mut Node) -> Result<(), ParseError> {
    match &mut node.value {
        Value::Seq(items) => items.iter_mut().try_for_each(apply_merges),
        Value::Map(entries) => {
            for (_, v) in entries.iter_mut() {
                apply_merges(v)?;
            }
            if !entries.iter().any(|(k, _)| k == "<<") {
                return Ok(());
            }
            let mut own = Vec::new();
            let mut sources = Vec::new();
            for (k, v) in entries.drain(..) {
                if k == "<<" {
                    match v.value {
                        Value::Map(m) => sources.push(m),
                        Value::Seq(items) => {
                            for item in items {
                                match item.value {
                                    Value::Map(m) => sources.push(m),
                                    _ => {
                                        return Err(ParseError {
                                            line: item.line,
                                            message: "a `<<` merge takes mappings only".into(),
                                        })
                                    }
                                }
                            }
                        }
                        _ => {
                            return Err(ParseError {
                                line: v.line,
                                message: "a `<<` merge takes a mapping or a list of mappings"
                                    .into(),
                            })
                        }
                    }
                } else {
                    own.push((k, v));
                }
            }
            for source in sources {
                for (k, v) in source {
                    if !own.iter().any(|(o, _)| *o == k) {
                        own.push((k, v));
                    }
                }
            }
            *entries = own;
            Ok(())
        }
        Value::Scalar { .. } => Ok(()),
    }
}

/// Types a plain scalar as go-yaml v2 (YAML 1.1) does.
pub fn type_plain(text: &str) -> serde_json::Value {
    use serde_json::Value as J;
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return J::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return J::Bool(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return J::Bool(false)
        }
        _ => {}
    }
    let cleaned: String = text.chars().filter(|c| *c != '_').collect();
    let (neg, digits) = match cleaned.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, cleaned.strip_prefix('+').unwrap_or(&cleaned)),
    };
    let int = if let Some(hex) = digits.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()
    } else if let Some(bin) = digits.strip_prefix("0b") {
        i64::from_str_radix(bin, 2).ok()
    } else if digits.len() > 1 && digits.starts_with('0') {
        i64::from_str_radix(&digits[1..], 8).ok()
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<i64>().ok()
    } else {
        None
    };
    if let Some(i) = int {
        return J::from(if neg { -i } else { i });
    }
    let looks_float = cleaned
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && cleaned.bytes().any(|b| b.is_ascii_digit());
    if looks_float {
        if let Ok(f) = cleaned.parse::<f64>() {
            if let Some(n) = serde_json::Number::from_f64(f) {
                return J::Number(n);
            }
        }
    }
    J::String(text.to_owned())
}

/// Converts a tree to JSON, recording the line of every key path (in serde_path_to_error's
/// form: `services.web.ports[0]`) into `lines`.
pub fn to_json(node: &Node, path: &str, lines: &mut HashMap<String, usize>) -> serde_json::Value {
    lines.entry(path.to_owned()).or_insert(node.line);
    match &node.value {
        Value::Scalar { text, plain: true } => type_plain(text),
        Value::Scalar { text, plain: false } => serde_json::Value::String(text.clone()),
        Value::Seq(items) => serde_json::Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| to_json(item, &format!("{path}[{i}]"), lines))
                .collect(),
        ),
        Value::Map(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let child = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    (k.clone(), to_json(v, &child, lines))
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(src: &str) -> serde_json::Value {
        to_json(&parse(src).unwrap(), "", &mut HashMap::new())
    }

    #[test]
    fn plain_scalars_are_typed_as_yaml_1_1() {
        let v = json("a: 0440\nb: '0440'\nc: yes\nd: 1.5\ne: ~\nf: 0x1f\ng: 8080:80\nh: -3\n");
        assert_eq!(v["a"], 288);
        assert_eq!(v["b"], "0440");
        assert_eq!(v["c"], true);
        assert_eq!(v["d"], 1.5);
        assert!(v["e"].is_null());
        assert_eq!(v["f"], 31);
        assert_eq!(v["g"], "8080:80");
        assert_eq!(v["h"], -3);
    }

    #[test]
    fn anchors_and_merge_keys_expand() {
        let v = json(
            "x-base: &base\n  image: a\n  env: 1\nweb:\n  <<: *base\n  image: b\nother: *base\n",
        );
        assert_eq!(v["web"]["image"], "b");
        assert_eq!(v["web"]["env"], 1);
        assert_eq!(v["other"]["image"], "a");
    }

    #[test]
    fn merge_of_a_list_prefers_the_earlier_mapping() {
        let v = json("a: &a {k: 1}\nb: &b {k: 2, j: 3}\nc:\n  <<: [*a, *b]\n");
        assert_eq!(v["c"]["k"], 1);
        assert_eq!(v["c"]["j"], 3);
    }

    #[test]
    fn lines_are_recorded_per_key_path() {
        let mut lines = HashMap::new();
        to_json(
            &parse("services:\n  web:\n    ports:\n      - 80\n").unwrap(),
            "",
            &mut lines,
        );
        assert_eq!(lines["services.web"], 2);
        assert_eq!(lines["services.web.ports[0]"], 4);
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let err = parse("a: b\n  c: d\n").unwrap_err();
        assert_eq!(err.line, 2);
    }
}

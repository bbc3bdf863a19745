//! Variable substitution in stack files, as docker/cli does it: `$VAR`, `${VAR}`,
//! `${VAR:-default}` (unset or empty), `${VAR-default}` (unset), `${VAR:?error}`,
//! `${VAR?error}`, and `$$` for a literal `$`. Substitution runs on string values only, after
//! parsing and before typing, so `replicas: ${N}` becomes the string "3", read as a number later.

use super::yaml::{Node, Value};
use std::collections::HashMap;

/// What went wrong substituting one value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    /// `${` without its `}`, or a name that is not a name.
    #[error(
        "invalid interpolation format in {value:?}: you may need to escape any $ with another $"
    )]
    Syntax {
        /// The value as written.
        value: String,
    },
    /// `${VAR:?msg}` or `${VAR?msg}` with VAR missing.
    #[error("required variable {name} is missing a value: {message}")]
    Required {
        /// The variable.
        name: String,
        /// The message the file gives.
        message: String,
    },
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Substitutes the variables of one string.
pub fn substitute(value: &str, env: &HashMap<String, String>) -> Result<String, InterpolateError> {
    let syntax = || InterpolateError::Syntax {
        value: value.to_owned(),
    };
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos + 1..];
        let mut chars = rest.chars();
        match chars.next() {
            Some('$') => {
                out.push('$');
                rest = &rest[1..];
            }
            Some('{') => {
                let close = rest.find('}').ok_or_else(syntax)?;
                let inner = &rest[1..close];
                rest = &rest[close + 1..];
                out.push_str(&braced(inner, env).ok_or_else(syntax)??);
            }
            Some(c) if is_name_start(c) => {
                let end = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
                out.push_str(env.get(&rest[..end]).map(String::as_str).unwrap_or(""));
                rest = &rest[end..];
            }
            _ => return Err(syntax()),
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The inside of `${...}`; `None` when it is not valid syntax.
fn braced(inner: &str, env: &HashMap<String, String>) -> Option<Result<String, InterpolateError>> {
    let name_end = inner
        .find(|c: char| !is_name_char(c))
        .unwrap_or(inner.len());
    let name = &inner[..name_end];
    if name.is_empty() || !name.starts_with(is_name_start) {
        return None;
    }
    let value = env.get(name);
    let set_nonempty = value.is_some_and(|v| !v.is_empty());
    let op = &inner[name_end..];
    let result = if op.is_empty() {
        Ok(value.cloned().unwrap_or_default())
    } else if let Some(default) = op.strip_prefix(":-") {
        Ok(if set_nonempty {
            value.cloned().unwrap_or_default()
        } else {
            default.to_owned()
        })
    } else if let Some(default) = op.strip_prefix('-') {
        Ok(value.cloned().unwrap_or_else(|| default.to_owned()))
    } else if let Some(message) = op.strip_prefix(":?") {
        if set_nonempty {
            Ok(value.cloned().unwrap_or_default())
        } else {
            Err(InterpolateError::Required {
                name: name.to_owned(),
                message: message.to_owned(),
            })
        }
    } else if let Some(message) = op.strip_prefix('?') {
        match value {
            Some(v) => Ok(v.clone()),
            None => Err(InterpolateError::Required {
                name: name.to_owned(),
                message: message.to_owned(),
            }),
        }
    } else {
        return None;
    };
    Some(result)
}

/// Substitutes every string value of a tree (not keys). On error, gives the line and the error.
pub fn interpolate_tree(
    node: &mut Node,
    env: &HashMap<String, String>,
) -> Result<(), (usize, InterpolateError)> {
    match &mut node.value {
        Value::Scalar { text, plain } => {
            if text.contains('$') {
                *text = substitute(text, env).map_err(|e| (node.line, e))?;
                // A substituted plain scalar is a string, as it was in docker's parse.
                *plain = false;
            }
            Ok(())
        }
        Value::Seq(items) => items.iter_mut().try_for_each(|n| interpolate_tree(n, env)),
        Value::Map(entries) => entries
            .iter_mut()
            .filter(|(k, _)| !k.starts_with("x-"))
            .try_for_each(|(_, n)| interpolate_tree(n, env)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        [("A", "alpha"), ("EMPTY", "")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn sub(s: &str) -> Result<String, InterpolateError> {
        substitute(s, &env())
    }

    #[test]
    fn every_form_substitutes_as_docker_does() {
        assert_eq!(sub("$A").unwrap(), "alpha");
        assert_eq!(sub("x${A}y").unwrap(), "xalphay");
        assert_eq!(sub("${MISSING}").unwrap(), "");
        assert_eq!(sub("${MISSING:-d}").unwrap(), "d");
        assert_eq!(sub("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(sub("${EMPTY-d}").unwrap(), "");
        assert_eq!(sub("${MISSING-d}").unwrap(), "d");
        assert_eq!(sub("${A:-d}").unwrap(), "alpha");
        assert_eq!(sub("$$A").unwrap(), "$A");
        assert_eq!(sub("a$$").unwrap(), "a$");
        assert_eq!(sub("${A:?boom}").unwrap(), "alpha");
        assert_eq!(sub("${EMPTY?boom}").unwrap(), "");
    }

    #[test]
    fn required_variables_fail_with_their_message() {
        let err = sub("${EMPTY:?need it}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "required variable EMPTY is missing a value: need it"
        );
        assert!(matches!(
            sub("${MISSING?x}"),
            Err(InterpolateError::Required { .. })
        ));
    }

    #[test]
    fn bad_syntax_is_refused() {
        assert!(matches!(sub("${A"), Err(InterpolateError::Syntax { .. })));
        assert!(matches!(sub("${}"), Err(InterpolateError::Syntax { .. })));
        assert!(matches!(sub("$ x"), Err(InterpolateError::Syntax { .. })));
        assert!(matches!(
            sub("${A:x}"),
            Err(InterpolateError::Syntax { .. })
        ));
    }
}

//! Placement constraints (`node.role == manager`, `node.labels.zone != b`): parsed once, so a
//! bad expression is refused when a service is created, and matched against nodes by the
//! scheduler.

use crate::node::Node;
use std::fmt;

/// What a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstraintKey {
    /// `node.id`
    NodeId,
    /// `node.hostname`
    Hostname,
    /// `node.role`
    Role,
    /// `node.platform.os`
    Os,
    /// `node.platform.arch`
    Arch,
    /// `node.labels.<name>`
    NodeLabel(String),
    /// `engine.labels.<name>`
    EngineLabel(String),
}

/// One `key == value` or `key != value` expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// What is compared.
    pub key: ConstraintKey,
    /// `==` (true) or `!=` (false).
    pub equal: bool,
    /// The value compared with.
    pub value: String,
}

/// A constraint expression that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid constraint {expr:?}: {reason}")]
pub struct ConstraintError {
    /// The expression.
    pub expr: String,
    /// What is wrong.
    pub reason: String,
}

impl Constraint {
    /// Parses one expression.
    pub fn parse(expr: &str) -> Result<Constraint, ConstraintError> {
        let err = |reason: &str| ConstraintError {
            expr: expr.to_owned(),
            reason: reason.to_owned(),
        };
        let (key, equal, value) = if let Some((k, v)) = expr.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = expr.split_once("!=") {
            (k, false, v)
        } else {
            return Err(err("expected one operator from == and !="));
        };
        let (key, value) = (key.trim(), value.trim());
        if value.is_empty() {
            return Err(err("missing value"));
        }
        if value.contains("==") || value.contains("!=") {
            return Err(err("more than one operator"));
        }
        let key = match key {
            "node.id" => ConstraintKey::NodeId,
            "node.hostname" => ConstraintKey::Hostname,
            "node.role" => {
                if !matches!(value.to_ascii_lowercase().as_str(), "manager" | "worker") {
                    return Err(err("node.role is manager or worker"));
                }
                ConstraintKey::Role
            }
            "node.platform.os" => ConstraintKey::Os,
            "node.platform.arch" => ConstraintKey::Arch,
            k => {
                if let Some(label) = k.strip_prefix("node.labels.").filter(|l| !l.is_empty()) {
                    ConstraintKey::NodeLabel(label.to_owned())
                } else if let Some(label) =
                    k.strip_prefix("engine.labels.").filter(|l| !l.is_empty())
                {
                    ConstraintKey::EngineLabel(label.to_owned())
                } else {
                    return Err(err(
                        "unknown key (use node.id, node.hostname, node.role, node.platform.os, node.platform.arch, node.labels.NAME or engine.labels.NAME)",
                    ));
                }
            }
        };
        Ok(Constraint {
            key,
            equal,
            value: value.to_owned(),
        })
    }

    /// Parses every expression of a list.
    pub fn parse_all(exprs: &[String]) -> Result<Vec<Constraint>, ConstraintError> {
        exprs.iter().map(|e| Constraint::parse(e)).collect()
    }

    /// True when `node` satisfies this constraint.
    pub fn matches(&self, node: &Node) -> bool {
        let fold = |actual: &str| actual.eq_ignore_ascii_case(&self.value);
        let exact = |actual: Option<&String>| actual.is_some_and(|a| *a == self.value);
        let hit = match &self.key {
            ConstraintKey::NodeId => node.id.as_str() == self.value,
            ConstraintKey::Hostname => fold(&node.description.hostname),
            ConstraintKey::Role => fold(&node.spec.role.to_string()),
            ConstraintKey::Os => fold(&node.description.os),
            ConstraintKey::Arch => fold(&node.description.arch),
            ConstraintKey::NodeLabel(l) => exact(node.spec.labels.get(l)),
            ConstraintKey::EngineLabel(l) => exact(node.description.engine_labels.get(l)),
        };
        hit == self.equal
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.key {
            ConstraintKey::NodeId => "node.id".to_owned(),
            ConstraintKey::Hostname => "node.hostname".to_owned(),
            ConstraintKey::Role => "node.role".to_owned(),
            ConstraintKey::Os => "node.platform.os".to_owned(),
            ConstraintKey::Arch => "node.platform.arch".to_owned(),
            ConstraintKey::NodeLabel(l) => format!("node.labels.{l}"),
            ConstraintKey::EngineLabel(l) => format!("engine.labels.{l}"),
        };
        write!(
            f,
            "{key}{}{}",
            if self.equal { "==" } else { "!=" },
            self.value
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::*;

    fn node() -> Node {
        Node {
            id: "abc".parse().unwrap(),
            version: 1,
            created_at: Default::default(),
            spec: NodeSpec {
                role: NodeRole::Manager,
                availability: Availability::Active,
                labels: [("zone".to_owned(), "a".to_owned())].into(),
            },
            description: NodeDescription {
                hostname: "Host1".into(),
                os: "linux".into(),
                ..Default::default()
            },
            status: NodeStatus::default(),
            manager_status: None,
            certificate: None,
        }
    }

    #[test]
    fn constraints_parse_and_match() {
        let n = node();
        for (expr, want) in [
            ("node.role == manager", true),
            ("node.role!=manager", false),
            ("node.hostname==host1", true),
            ("node.labels.zone == a", true),
            ("node.labels.zone != a", false),
            ("node.labels.missing != a", true),
            ("node.labels.missing == a", false),
            ("node.id==abc", true),
            ("node.platform.os==linux", true),
        ] {
            assert_eq!(Constraint::parse(expr).unwrap().matches(&n), want, "{expr}");
        }
    }

    #[test]
    fn bad_constraints_say_why() {
        assert!(Constraint::parse("node=foo")
            .unwrap_err()
            .reason
            .contains("operator"));
        assert!(Constraint::parse("node.colour==red")
            .unwrap_err()
            .reason
            .contains("unknown key"));
        assert!(Constraint::parse("node.role==boss").is_err());
        assert!(Constraint::parse("node.labels.a==").is_err());
    }
}

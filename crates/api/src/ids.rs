//! Typed identifiers. Each kind of object has its own type so that a task id is never passed
//! where a node id is expected; all are validated when parsed from outside input.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An identifier failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id {value:?}: ids are 1 to 64 characters of a-z and 0-9")]
pub struct InvalidId {
    /// Which kind of id was expected.
    pub kind: &'static str,
    /// What was given.
    pub value: String,
}

/// Length of generated ids (base-36 characters), as SwarmKit's.
pub const GENERATED_ID_LEN: usize = 25;

fn valid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Turns 128 random bits into a 25-character base-36 id. Randomness is the caller's: this crate
/// does no I/O.
pub fn id_from_bits(mut bits: u128) -> String {
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; GENERATED_ID_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(bits % 36) as usize];
        bits /= 36;
    }
    String::from_utf8(out).expect("alphabet is ascii")
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// A new id from 128 random bits.
            pub fn from_bits(bits: u128) -> Self {
                Self(id_from_bits(bits))
            }
            /// The first 12 characters, as tables show ids.
            pub fn short(&self) -> &str {
                &self.0[..self.0.len().min(12)]
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                if valid(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(InvalidId { kind: $kind, value: s.to_owned() })
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// Identifies a node (a host running the agent role).
    NodeId, "node"
);
id_type!(
    /// Identifies a service.
    ServiceId, "service"
);
id_type!(
    /// Identifies a task (one scheduled instance of a service).
    TaskId, "task"
);
id_type!(
    /// Identifies a network.
    NetworkId, "network"
);
id_type!(
    /// Identifies a secret or a config.
    FileObjectId, "secret or config"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = NodeId::from_bits(1);
        let b = NodeId::from_bits(u128::MAX);
        assert_eq!(a.as_str().len(), GENERATED_ID_LEN);
        assert_ne!(a, b);
        assert!(a.as_str().parse::<NodeId>().is_ok());
    }

    #[test]
    fn bad_ids_are_refused_with_their_kind() {
        let err = "Abc".parse::<TaskId>().unwrap_err();
        assert_eq!(err.kind, "task");
        assert!("".parse::<ServiceId>().is_err());
        assert!("a/b".parse::<ServiceId>().is_err());
        assert!(serde_json::from_str::<NodeId>("\"x y\"").is_err());
    }
}

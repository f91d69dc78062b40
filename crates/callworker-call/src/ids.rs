//! Validated identifiers. Built only through `parse` / `TryFrom`, never from unchecked
//! strings, so every id that reaches Redis keys, logs or URLs is known to be safe there.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest identifier accepted, in bytes.
pub const ID_BYTES_MAX: usize = 64;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("identifier is empty")]
    Empty,
    #[error("identifier is {0} bytes long; at most {ID_BYTES_MAX} allowed")]
    TooLong(usize),
    #[error("identifier contains {0:?}; only ASCII letters, digits, '-' and '_' are allowed")]
    InvalidChar(char),
}

fn validate(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > ID_BYTES_MAX {
        return Err(IdError::TooLong(s.len()));
    }
    match s.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        Some(c) => Err(IdError::InvalidChar(c)),
        None => Ok(()),
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `s` (1–64 bytes of `[A-Za-z0-9_-]`).
            pub fn parse(s: &str) -> Result<Self, IdError> {
                validate(s)?;
                Ok($name(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                validate(&s)?;
                Ok($name(s))
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

string_id!(
    /// Identifies one call for its whole life, across sessions and workers.
    CallId
);
string_id!(
    /// The customer a call belongs to.
    TenantId
);
string_id!(
    /// One worker process (unique per process start).
    WorkerId
);

/// Ownership generation of a call. Every takeover and the end bump it; a write carrying an
/// older epoch is fenced out. 0 means "never attached".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Epoch(pub u64);

impl Epoch {
    pub const ZERO: Epoch = Epoch(0);

    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_safe_strings_and_refuse_others() {
        assert!(CallId::parse("c_01HZX-abc").is_ok());
        assert_eq!(CallId::parse(""), Err(IdError::Empty));
        assert_eq!(CallId::parse(&"a".repeat(65)), Err(IdError::TooLong(65)));
        assert_eq!(CallId::parse("a{b}"), Err(IdError::InvalidChar('{')));
        assert_eq!(CallId::parse("a b"), Err(IdError::InvalidChar(' ')));
        let json = serde_json::to_string(&TenantId::parse("acme").unwrap()).unwrap();
        assert_eq!(json, "\"acme\"");
        assert!(serde_json::from_str::<TenantId>("\"a:b\"").is_err());
    }
}

//! Validation of the names callers choose for volumes and snapshots. A name becomes a key in the
//! store and travels in logs and CSI ids, never into a path or a dm name (those derive from thin
//! ids), but we still keep it to a conservative alphabet so it is safe wherever it ends up.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest name accepted, in bytes (CSI names are at most 128 bytes).
pub const MAX_NAME_LEN: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {0} bytes long; the limit is {MAX_NAME_LEN}")]
    TooLong(usize),
    #[error("name {0:?} contains {1:?}; use only letters, digits, '-', '_', '.' and ':'")]
    BadChar(String, char),
    #[error("name {0:?} contains \"..\" or starts with '.'")]
    Dots(String),
}

/// A validated volume or snapshot name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(name.len()));
        }
        if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))) {
            return Err(NameError::BadChar(name.escape_debug().to_string(), c));
        }
        if name.contains("..") || name.starts_with('.') {
            return Err(NameError::Dots(name.to_owned()));
        }
        Ok(Name(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Name::new(&s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_kubernetes_style_names() {
        for ok in ["pvc-8b1f2c3d-1234-4e5f-9abc-def012345678", "snapshot-1", "a", "vol_1.2:x"] {
            assert!(Name::new(ok).is_ok(), "{ok}");
        }
        assert!(Name::new(&"x".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn rejects_unsafe_names() {
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert_eq!(Name::new(&"x".repeat(129)), Err(NameError::TooLong(129)));
        assert!(matches!(Name::new("a/b"), Err(NameError::BadChar(_, '/'))));
        assert!(matches!(Name::new("a\0b"), Err(NameError::BadChar(_, '\0'))));
        assert!(matches!(Name::new("a b"), Err(NameError::BadChar(_, ' '))));
        assert!(matches!(Name::new("a..b"), Err(NameError::Dots(_))));
        assert!(matches!(Name::new(".."), Err(NameError::Dots(_))));
        assert!(matches!(Name::new(".hidden"), Err(NameError::Dots(_))));
        assert!(matches!(Name::new("é"), Err(NameError::BadChar(_, 'é'))));
    }

    #[test]
    fn names_are_checked_when_deserialized() {
        assert!(serde_json::from_str::<Name>("\"../etc\"").is_err());
        assert!(serde_json::from_str::<Name>("\"ok\"").is_ok());
    }

    proptest! {
        #[test]
        fn accepted_names_never_hold_path_parts(s in "\\PC{0,140}") {
            if let Ok(n) = Name::new(&s) {
                prop_assert!(!n.as_str().contains('/'));
                prop_assert!(!n.as_str().contains(".."));
                prop_assert!(!n.as_str().contains('\0'));
                prop_assert!(n.as_str().len() <= MAX_NAME_LEN);
            }
        }
    }
}

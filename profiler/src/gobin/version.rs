//! Go release versions as written in a binary's build info (`go1.22.10`, `go1.24rc1`,
//! `devel go1.28-0123abcd …`, `go1.23.4 X:nocoverageredesign`).
use std::{fmt, str::FromStr};

use thiserror::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("cannot read Go version from {0:?}")]
pub struct VersionParseError(pub String);

impl GoVersion {
    #[cfg(test)]
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// The release line (`1.22`), which is what runtime layouts are keyed by.
    pub const fn release(self) -> (u32, u32) {
        (self.major, self.minor)
    }
}

impl FromStr for GoVersion {
    type Err = VersionParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || VersionParseError(text.to_owned());
        // "devel go1.28-abc" and "go1.23.4 X:exp": the version is the word that starts with "go1".
        let word = text
            .split_whitespace()
            .find(|word| word.starts_with("go"))
            .ok_or_else(error)?;
        let numbers = word.strip_prefix("go").ok_or_else(error)?;
        // Cut at the first character that is neither digit nor dot: "1.24rc1", "1.28-abc".
        let end = numbers
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(numbers.len());
        let mut parts = numbers[..end].split('.');
        let mut next = || -> Result<Option<u32>, VersionParseError> {
            match parts.next() {
                None | Some("") => Ok(None),
                Some(part) => part.parse().map(Some).map_err(|_| error()),
            }
        };
        let major = next()?.ok_or_else(error)?;
        let minor = next()?.ok_or_else(error)?;
        let patch = next()?.unwrap_or(0);
        Ok(Self {
            major,
            minor,
            patch,
        })
    }
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "go{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_and_prerelease_forms() {
        let cases = [
            ("go1.21.13", GoVersion::new(1, 21, 13)),
            ("go1.27.3", GoVersion::new(1, 27, 3)),
            ("go1.22", GoVersion::new(1, 22, 0)),
            ("go1.24rc1", GoVersion::new(1, 24, 0)),
            (
                "devel go1.28-0123abcd Tue Nov 3 2026",
                GoVersion::new(1, 28, 0),
            ),
            ("go1.23.4 X:nocoverageredesign", GoVersion::new(1, 23, 4)),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<GoVersion>(), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_text_without_a_version() {
        for text in ["", "1.21.3", "gox", "go.1", "go1", "go1.x"] {
            assert!(
                text.parse::<GoVersion>().is_err(),
                "{text:?} should not parse"
            );
        }
    }

    #[test]
    fn orders_by_release_then_patch() {
        assert!(GoVersion::new(1, 21, 13) < GoVersion::new(1, 22, 0));
        assert!(GoVersion::new(1, 27, 2) < GoVersion::new(1, 27, 3));
        assert_eq!(GoVersion::new(1, 27, 3).to_string(), "go1.27.3");
    }
}

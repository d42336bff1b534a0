//! Errors a user can cause, each one line that names the problem and the fix, with a distinct
//! exit code (documented in README.md, "Exit codes").
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// A bug or an unexpected system failure.
    Internal = 1,
    /// Bad command line (clap's own code).
    Usage = 2,
    NoSuchProcess = 3,
    NotGo = 4,
    UnsupportedGo = 5,
    MissingSymbols = 6,
    Privileges = 7,
    KernelFeature = 8,
    ListenAddress = 9,
    Launch = 10,
    /// `profile` found nothing to sample (allocation sampling off in the target).
    NothingSampled = 11,
    /// The daemon's config file or web config file is invalid.
    Config = 12,
}

#[derive(Debug)]
pub struct UserError {
    pub exit: Exit,
    pub message: String,
}

impl UserError {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

//! The jailer's one error: which step failed and why, printed as one line
//! (`jailer: creating /srv/jailer/sie/vm1/root/dev/kvm: Operation not permitted`).

use std::fmt;
use std::io;

/// A failed step.
#[derive(Debug)]
pub struct StepError {
    /// What the jailer was doing, naming the path or value involved.
    pub step: String,
    /// Why it failed.
    pub cause: String,
}

impl StepError {
    pub fn new(step: impl Into<String>, cause: impl Into<String>) -> Self {
        Self {
            step: step.into(),
            cause: cause.into(),
        }
    }

    /// A failed system call or file operation.
    pub fn io(step: impl Into<String>, error: &io::Error) -> Self {
        Self::new(step, os_message(error))
    }

    /// The last OS error (after a raw libc call returned -1).
    pub fn last_os(step: impl Into<String>) -> Self {
        Self::io(step, &io::Error::last_os_error())
    }
}

/// An I/O error's text without Rust's ` (os error N)` suffix, so that the
/// line reads like the C library's message.
fn os_message(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.step.is_empty() {
            write!(f, "{}", self.cause)
        } else {
            write!(f, "{}: {}", self.step, self.cause)
        }
    }
}

impl std::error::Error for StepError {}

/// `Result` of a jailer step.
pub type StepResult<T> = Result<T, StepError>;

/// Adds the step's name to an `io::Result`.
pub trait Step<T> {
    fn step(self, step: impl FnOnce() -> String) -> StepResult<T>;
}

impl<T> Step<T> for io::Result<T> {
    fn step(self, step: impl FnOnce() -> String) -> StepResult<T> {
        self.map_err(|e| StepError::io(step(), &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_like_the_c_library() {
        let error = StepError::io(
            "creating /j/dev/kvm",
            &io::Error::from_raw_os_error(libc::EPERM),
        );
        assert_eq!(
            error.to_string(),
            "creating /j/dev/kvm: Operation not permitted"
        );
    }
}

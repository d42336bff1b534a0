//! `mapscope run`: start a command stopped at its first instruction so the probes are in place
//! before any Go code runs.
//!
//! The child asks to be traced (PTRACE_TRACEME) and the kernel stops it with SIGTRAP right
//! after exec, once the new program is mapped. mapscope attaches, then PTRACE_DETACH lets it
//! run untraced. ptrace here only stops and resumes; nothing is written into the child.
use std::{
    ffi::OsString,
    io,
    os::unix::process::CommandExt as _,
    process::{Child, Command},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LaunchError {
    #[error("cannot start {command:?}: {source}")]
    Spawn {
        command: OsString,
        source: io::Error,
    },
    #[error("{command:?} exited before mapscope could attach ({status})")]
    ExitedEarly { command: OsString, status: String },
    #[error("waiting for {command:?} to stop after exec: {source}")]
    Wait {
        command: OsString,
        source: io::Error,
    },
}

/// A child stopped right after exec. Dropping it without `resume` kills it: a command that
/// mapscope could not attach to is not left running unobserved.
pub struct StoppedChild {
    child: Option<Child>,
    pub pid: u32,
}

pub fn spawn_stopped(argv: &[OsString]) -> Result<StoppedChild, LaunchError> {
    let program = argv.first().cloned().unwrap_or_default();
    let mut command = Command::new(&program);
    command.args(argv.iter().skip(1));
    // SAFETY: the closure runs between fork and exec and only makes one async-signal-safe
    // system call.
    unsafe {
        command.pre_exec(|| {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|source| LaunchError::Spawn {
        command: program.clone(),
        source,
    })?;
    let pid = child.id();
    let mut stopped = StoppedChild {
        child: Some(child),
        pid,
    };
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out pointer.
    let waited = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    if waited == -1 {
        return Err(LaunchError::Wait {
            command: program,
            source: io::Error::last_os_error(),
        });
    }
    if !libc::WIFSTOPPED(status) {
        // Already reaped by the waitpid above: forget the Child so drop does not kill a
        // recycled PID.
        stopped.child = None;
        let status = if libc::WIFEXITED(status) {
            format!("exit status {}", libc::WEXITSTATUS(status))
        } else {
            format!("signal {}", libc::WTERMSIG(status))
        };
        return Err(LaunchError::ExitedEarly {
            command: program,
            status,
        });
    }
    Ok(stopped)
}

impl StoppedChild {
    /// Let the child run, untraced. Hands back the `Child` for waiting on its exit status.
    pub fn resume(mut self) -> io::Result<Child> {
        // SAFETY: detaching from our own stopped tracee; signal 0 delivers nothing.
        let detached = unsafe { libc::ptrace(libc::PTRACE_DETACH, self.pid as libc::pid_t, 0, 0) };
        if detached == -1 {
            return Err(io::Error::last_os_error());
        }
        self.child
            .take()
            .ok_or_else(|| io::Error::other("child already released"))
    }
}

impl Drop for StoppedChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_is_stopped_until_resumed() {
        let stopped = spawn_stopped(&["true".into()]).unwrap();
        let state = std::fs::read_to_string(format!("/proc/{}/stat", stopped.pid)).unwrap();
        // Field 3 is the state: 't' (tracing stop).
        let after_comm = state.rsplit_once(')').unwrap().1;
        assert_eq!(after_comm.split_whitespace().next(), Some("t"), "{state}");
        let mut child = stopped.resume().unwrap();
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn missing_command_is_a_spawn_error() {
        let error = spawn_stopped(&["/nonexistent/mapscope-test".into()])
            .err()
            .unwrap();
        assert!(matches!(error, LaunchError::Spawn { .. }), "{error}");
    }

    #[test]
    fn dropping_a_stopped_child_kills_it() {
        let stopped = spawn_stopped(&["sleep".into(), "30".into()]).unwrap();
        let pid = stopped.pid;
        drop(stopped);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}

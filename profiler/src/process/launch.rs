//! `mapscope run`: start a command stopped at its first instruction so the probes are in place
//! before any Go code runs.
//!
//! The child asks to be traced (PTRACE_TRACEME) and the kernel stops it with SIGTRAP right
//! after exec, once the new program is mapped. When that program is a wrapper, not Go, the
//! child is let run to its next exec and stopped there again. mapscope attaches, then
//! PTRACE_DETACH lets it run untraced. ptrace here only stops and resumes; nothing is written
//! into the child.
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
    let status = wait(pid as libc::pid_t).map_err(|source| LaunchError::Wait {
        command: program.clone(),
        source,
    })?;
    if !libc::WIFSTOPPED(status) {
        // Already reaped by the waitpid above: forget the Child so drop does not kill a
        // recycled PID.
        stopped.child = None;
        return Err(LaunchError::ExitedEarly {
            command: program,
            status: EndStatus(status).to_string(),
        });
    }
    // From now on: should mapscope die (SIGKILL, the OOM killer) while the child is stopped
    // or being followed, the kernel kills the child rather than leave it stopped or running
    // unobserved; and its next exec stops it again (PTRACE_EVENT_EXEC), not a bare SIGTRAP.
    let options = libc::PTRACE_O_TRACEEXEC | libc::PTRACE_O_EXITKILL;
    // SAFETY: a ptrace request on our own stopped tracee, from the thread that traces it.
    if unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, options) } == -1 {
        return Err(LaunchError::Wait {
            command: program,
            source: io::Error::last_os_error(),
        });
    }
    Ok(stopped)
}

/// `waitpid` for our own child, again when a signal interrupts it.
fn wait(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != -1 {
            return Ok(status);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Where the child went when let run to its next exec.
#[derive(Debug, PartialEq, Eq)]
pub enum NextExec {
    /// Stopped again right after exec'ing another program.
    Exec,
    /// It exited (or was killed) instead, with this status.
    Exited(EndStatus),
}

/// How a process ended: its wait status. Shown as people read it (`exit status 1`,
/// `signal 15`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndStatus(pub libc::c_int);

impl EndStatus {
    /// As a shell reports it: the exit code, or 128 + the signal that killed it.
    pub fn code(self) -> i32 {
        if libc::WIFEXITED(self.0) {
            libc::WEXITSTATUS(self.0)
        } else {
            128 + libc::WTERMSIG(self.0)
        }
    }
}

impl std::fmt::Display for EndStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if libc::WIFEXITED(self.0) {
            write!(f, "exit status {}", libc::WEXITSTATUS(self.0))
        } else {
            write!(f, "signal {}", libc::WTERMSIG(self.0))
        }
    }
}

impl StoppedChild {
    /// Let the child run until it execs another program, and stop it there, as right after
    /// the first exec: a wrapper (`env`, a shell script ending in `exec app`, a version
    /// manager's shim) on its way to the real program. Signals it gets meanwhile are delivered
    /// to it as usual.
    ///
    /// Only this process is followed: a program it starts as a child is not, and this returns
    /// only when the process itself execs or ends. Job-control stops (Ctrl-Z) of the wrapper
    /// are not kept while it is followed: a traced process cannot be left in a group-stop
    /// without PTRACE_SEIZE, so it is resumed.
    pub fn continue_to_next_exec(&mut self) -> Result<NextExec, LaunchError> {
        let pid = self.pid as libc::pid_t;
        let failed = |source: io::Error| LaunchError::Wait {
            command: OsString::from(format!("PID {pid}")),
            source,
        };
        let mut deliver = 0;
        loop {
            // SAFETY: as above; `deliver` is the signal the tracee stopped with, or 0.
            if unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, deliver) } == -1 {
                return Err(failed(io::Error::last_os_error()));
            }
            let status = wait(pid).map_err(failed)?;
            if !libc::WIFSTOPPED(status) {
                // Reaped above: forget the Child so that drop does not kill a recycled PID.
                self.child = None;
                return Ok(NextExec::Exited(EndStatus(status)));
            }
            if libc::WSTOPSIG(status) == libc::SIGTRAP && status >> 16 == libc::PTRACE_EVENT_EXEC {
                return Ok(NextExec::Exec);
            }
            // A signal on its way to the child: hand it on. A group-stop (the child stopping
            // after such a signal was handed on) has no signal to deliver: PTRACE_GETSIGINFO
            // fails there, and the child is resumed with none.
            let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::uninit();
            // SAFETY: our own stopped tracee; `info` is a valid out pointer for a siginfo_t.
            let signal_stop =
                unsafe { libc::ptrace(libc::PTRACE_GETSIGINFO, pid, 0, info.as_mut_ptr()) } != -1;
            deliver = if signal_stop {
                libc::WSTOPSIG(status)
            } else {
                0
            };
        }
    }

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

    /// `env` execs its command: the child stops again at that exec, and runs to its end after.
    #[test]
    fn follows_a_wrapper_to_the_program_it_execs() {
        let mut stopped = spawn_stopped(&["env".into(), "true".into()]).unwrap();
        let exe = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(exe(stopped.pid).ends_with("env"));
        assert_eq!(stopped.continue_to_next_exec().unwrap(), NextExec::Exec);
        assert!(exe(stopped.pid).ends_with("true"), "{:?}", exe(stopped.pid));
        let NextExec::Exited(status) = stopped.continue_to_next_exec().unwrap() else {
            panic!("true exec'd again");
        };
        assert_eq!(
            (status.to_string(), status.code()),
            ("exit status 0".into(), 0)
        );
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

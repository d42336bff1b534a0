//! A live process held by a pidfd.
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
};

use thiserror::Error;
use tokio::io::unix::AsyncFd;

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("no process with PID {pid}")]
    NotFound { pid: u32 },
    /// PID exists but runs no program: a kernel thread, or a zombie (exited, not yet reaped).
    #[error("PID {pid} is {what}")]
    NoProgram { pid: u32, what: &'static str },
    #[error("not allowed to inspect PID {pid}: {source}")]
    Denied { pid: u32, source: io::Error },
    /// A thread ID, as `top -H` or a log line shows one: the process is its thread group.
    #[error("PID {tid} is a thread of PID {pid}, not a process")]
    Thread { tid: u32, pid: u32 },
    #[error("cannot open PID {pid}: {source}")]
    Other { pid: u32, source: io::Error },
}

/// The process (thread group) `tid` belongs to, when `tid` is one of its other threads: the
/// kernel hides those from the /proc listing but still answers /proc/TID/status.
fn thread_group_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let tgid = status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()?;
    (tgid != tid).then_some(tgid)
}

/// What a PID without an executable is, from `/proc/PID/status`: a kernel thread
/// (`Kthread: 1`, Linux 6.0+; before that, no `VmSize` line: no memory of its own) or a zombie
/// (`State: Z`). `None` when it cannot be read (gone).
fn without_program(pid: u32) -> Option<&'static str> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    if field("State").is_some_and(|state| state.starts_with('Z')) {
        return Some(
            "a zombie: it has exited and its parent has not reaped it yet; nothing to profile",
        );
    }
    if field("Kthread") == Some("1") || field("VmSize").is_none() {
        return Some("a kernel thread, not a program: mapscope profiles Go programs");
    }
    None
}

pub struct Process {
    pub pid: u32,
    pidfd: OwnedFd,
    /// Base name of the executable, for labels and messages (`/proc/PID/exe`'s target).
    pub exe_name: String,
    /// The program image it ran when opened: a later exec changes it.
    image: Option<Image>,
}

/// What an exec changes in a process: its executable (device, inode), and, with address-space
/// randomization (the kernel's default), where its initial stack is (`/proc/PID/stat` field 28,
/// `startstack`), which tells a re-exec of the same program from no exec at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Image {
    exe: (u64, u64),
    start_stack: u64,
}

/// The image `pid` runs now; `None` when it is gone (or runs none).
pub fn image(pid: u32) -> Option<Image> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let start_stack = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(25)?
        .parse()
        .ok()?;
    Some(Image {
        exe: (metadata.dev(), metadata.ino()),
        start_stack,
    })
}

/// How often a target is checked for an exec.
const EXEC_POLL: std::time::Duration = std::time::Duration::from_millis(500);

impl Process {
    pub fn open(pid: u32) -> Result<Self, ProcessError> {
        let pidfd = pidfd_open(pid).map_err(|source| match source.raw_os_error() {
            // pidfd_open takes a thread group leader only (EINVAL for another thread).
            _ if let Some(group) = thread_group_of(pid) => ProcessError::Thread {
                tid: pid,
                pid: group,
            },
            Some(libc::ESRCH) | Some(libc::EINVAL) => ProcessError::NotFound { pid },
            Some(libc::EPERM) | Some(libc::EACCES) => ProcessError::Denied { pid, source },
            _ => ProcessError::Other { pid, source },
        })?;
        let link = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|source| match source
            .kind()
        {
            // The PID is there (the pidfd opened) but has no executable: say what it is.
            io::ErrorKind::NotFound => match without_program(pid) {
                Some(what) => ProcessError::NoProgram { pid, what },
                None => ProcessError::NotFound { pid },
            },
            io::ErrorKind::PermissionDenied => ProcessError::Denied { pid, source },
            _ => ProcessError::Other { pid, source },
        })?;
        let exe_name = link
            .file_name()
            .map(|name| {
                name.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_owned()
            })
            .unwrap_or_else(|| format!("pid{pid}"));
        Ok(Self {
            pid,
            pidfd,
            exe_name,
            image: image(pid),
        })
    }

    /// A check, for another task to run later, of whether the process still runs the program
    /// image it ran when opened: not gone, not exec'd, not a reused PID.
    pub fn still_runs_its_image(&self) -> impl Fn() -> bool + Send + 'static {
        let (pid, opened) = (self.pid, self.image);
        move || opened.is_some() && image(pid) == opened
    }

    /// Resolves once the process runs another program image than when it was opened (it
    /// exec'd, another program or its own again): mapscope's probes belong to the old image.
    /// Never resolves for a process gone (its exit is watched apart) or whose image could not
    /// be read at open.
    pub async fn exec_seen(&self) {
        let Some(opened) = self.image else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(EXEC_POLL).await;
            if image(self.pid).is_some_and(|now| now != opened) {
                return;
            }
        }
    }

    /// The executable as the kernel sees it. Reading or probing through this path reaches the
    /// right inode even in another mount namespace or after the file was deleted or replaced.
    pub fn exe_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/exe", self.pid))
    }

    /// The id of the container the process runs in, from its cgroup path (docker, containerd,
    /// CRI-O, podman), or `None` outside containers.
    pub fn container_id(&self) -> Option<String> {
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid)).ok()?;
        container_id_from_cgroup(&cgroup)
    }

    /// False once the process has exited. Because this asks the pidfd, a new process that
    /// reuses the PID still reads as "exited".
    pub fn is_alive(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout; poll only writes `revents`.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready == 0
    }

    /// A handle that resolves when the process exits (its pidfd turns readable). It owns a
    /// duplicate of the pidfd, so it can outlive borrows of the `Process`. Needs a tokio runtime.
    pub fn exit_watcher(&self) -> io::Result<ExitWatcher> {
        Ok(ExitWatcher(crate::fdwatch::readable(
            self.pidfd.try_clone()?,
        )?))
    }
}

pub struct ExitWatcher(AsyncFd<OwnedFd>);

impl ExitWatcher {
    pub async fn exited(self) -> io::Result<()> {
        let _ready = self.0.readable().await?;
        Ok(())
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The last 64-hex-digit run in the cgroup paths of `/proc/PID/cgroup` (`0::/system.slice/
/// docker-<id>.scope`, `.../cri-containerd-<id>.scope`, `crio-<id>.scope`, `/docker/<id>`,
/// `libpod-<id>.scope`): container runtimes name the container's cgroup after its id.
pub fn container_id_from_cgroup(cgroup: &str) -> Option<String> {
    let mut found = None;
    for line in cgroup.lines() {
        let path = line.rsplit(':').next().unwrap_or_default();
        let mut run_start = None;
        for (index, byte) in path.bytes().chain(std::iter::once(b'/')).enumerate() {
            let hex = byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte);
            match (hex, run_start) {
                (true, None) => run_start = Some(index),
                (false, Some(start)) => {
                    if index - start == 64 {
                        found = Some(path[start..index].to_owned());
                    }
                    run_start = None;
                }
                _ => {}
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_from_cgroup_paths() {
        let id = "3f4c2a1b".repeat(8);
        for cgroup in [
            format!("0::/system.slice/docker-{id}.scope\n"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1c2d_33.slice/cri-containerd-{id}.scope\n"
            ),
            format!("12:pids:/docker/{id}\n11:memory:/docker/{id}\n"),
            format!("0::/machine.slice/libpod-{id}.scope/container\n"),
            format!("0::/kubepods/besteffort/pod42/crio-{id}.scope\n"),
        ] {
            assert_eq!(
                container_id_from_cgroup(&cgroup),
                Some(id.clone()),
                "{cgroup}"
            );
        }
        for host in [
            "0::/user.slice/user-0.slice/session-3.scope\n",
            "0::/init.scope\n",
            "0::/\n",
            // 63 and 65 hex digits are not ids.
            &format!("0::/x-{}.scope\n", &id[1..]),
            &format!("0::/x-{id}a.scope\n"),
        ] {
            assert_eq!(container_id_from_cgroup(host), None, "{host}");
        }
    }

    #[test]
    fn opens_itself_and_sees_it_alive() {
        let me = Process::open(std::process::id()).unwrap();
        assert!(me.is_alive());
        assert!(!me.exe_name.is_empty());
    }

    #[test]
    fn kernel_threads_and_zombies_are_named() {
        // PID 2 is kthreadd on Linux.
        let error = Process::open(2).err().unwrap();
        assert!(
            matches!(error, ProcessError::NoProgram { pid: 2, what } if what.contains("kernel thread")),
            "{error}"
        );
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited, not reaped: a zombie until `wait`.
        while std::fs::read_to_string(format!("/proc/{pid}/status"))
            .is_ok_and(|status| !status.contains("State:\tZ"))
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let error = Process::open(pid).err().unwrap();
        assert!(
            matches!(error, ProcessError::NoProgram { what, .. } if what.contains("zombie")),
            "{error}"
        );
        child.wait().unwrap();
    }

    #[test]
    fn missing_pid_is_not_found() {
        // PIDs above pid_max (at most 2^22) never exist.
        let error = Process::open(4_999_999).err().unwrap();
        assert!(
            matches!(error, ProcessError::NotFound { pid: 4_999_999 }),
            "{error}"
        );
    }

    #[test]
    fn exited_child_reads_as_not_alive() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let process = Process::open(child.id()).unwrap();
        assert!(process.is_alive());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!process.is_alive());
    }
}

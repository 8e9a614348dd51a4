//! What a worker process locks down about itself: dying with the host, the
//! protocol fds moved aside, a scrubbed environment, rlimits, and the
//! confinement (`no_new_privs`, Landlock, seccomp) it reports to the host as
//! a [`SandboxStatus`].
//!
//! Owns the worker's fds, signals and rlimits. It does not know about wasm;
//! the wasm-level policy (WASI grants) lives in [`super::runtime`]. What the
//! host sets up around `exec` of a launcher is the host's
//! (`host::supervisor`).

use std::fs::File;
use std::io;

use crate::wire::{Enforcement, SandboxStatus};

/// The first thing a worker that the host spawned directly does:
/// `PR_SET_PDEATHSIG(SIGKILL)`, so that the kernel kills it when the thread
/// that spawned it dies (the host spawns from a thread that lives exactly as
/// long as the pool: this fires on host death, even SIGKILL, and never while
/// the pool is alive); then, if the host already died before that, exit.
/// (Its own process group was set at spawn.) Done after `exec` rather than
/// between `fork` and `exec` so that the host can spawn with `posix_spawn`,
/// which is several times faster than `fork` from a large process.
pub(crate) fn die_with_parent(host: libc::pid_t) {
    if set_pdeathsig().is_err() || parent() != host {
        // SAFETY: ends the process without running anything else.
        unsafe { libc::_exit(1) }
    }
}

fn set_pdeathsig() -> rustix::io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
}

/// The parent's pid, 0 when there is none.
fn parent() -> libc::pid_t {
    rustix::process::Pid::as_raw(rustix::process::getppid())
}

/// Moves the protocol streams (stdin/stdout as the host set them up) to
/// fresh fds, and points fd 0 at `/dev/null` and fd 1 at stderr, so that a
/// stray `print!` anywhere in the worker cannot corrupt the protocol. Called
/// once, at start-up, before other threads use fds 0 and 1.
pub(crate) fn take_protocol_fds() -> io::Result<(File, File)> {
    use rustix::io::fcntl_dupfd_cloexec;
    use rustix::stdio::{dup2_stdin, dup2_stdout, stderr, stdin, stdout};
    let input = fcntl_dupfd_cloexec(stdin(), 3)?;
    let output = fcntl_dupfd_cloexec(stdout(), 3)?;
    dup2_stdin(File::open("/dev/null")?)?;
    dup2_stdout(stderr())?;
    Ok((File::from(input), File::from(output)))
}

/// Empties the environment a launcher passed on, secrets included: the
/// strings are overwritten in place, since `clearenv` alone leaves them in
/// memory and in `/proc/<pid>/environ` (which reads the original block).
///
/// # Safety
/// Call before any other thread exists: nothing may read the environment
/// meanwhile.
pub(crate) unsafe fn scrub_environment() {
    extern "C" {
        static mut environ: *mut *mut libc::c_char;
    }
    // SAFETY: `environ` is the C library's NULL-terminated array of
    // NUL-terminated strings; each is overwritten within its own length, and
    // no one else looks at it (see the contract above).
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let s = *entry;
            std::ptr::write_bytes(s, 0, libc::strlen(s));
            entry = entry.add(1);
        }
        libc::clearenv();
    }
}

/// Start-up hardening every worker applies to itself: no core dumps (a
/// crashing worker must not write kernel memory to disk), a bounded number
/// of open files, and `SIGPIPE` ignored so a vanished host is an `EPIPE`
/// error, handled, rather than a signal.
pub(crate) fn harden_worker() {
    use rustix::process::{setrlimit, Resource, Rlimit};
    // SAFETY: installs the predefined "ignore" disposition, no handler.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let _ = setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) });
    let _ = setrlimit(Resource::Nofile, Rlimit { current: Some(256), maximum: Some(256) });
}

/// Syscalls a wasm worker never needs once the kernel is loaded. A
/// deny-list, so that wasmtime's own needs (mmap, mprotect, signals,
/// threads, futexes) stay untouched; each is refused with `EPERM`.
const DENIED_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_kexec_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_personality,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_acct,
];

/// Confines the worker process after the kernel is loaded and before any
/// item runs: `no_new_privs`, Landlock (read access to the granted
/// read-only directories, full access to the `:rw` ones, nothing else), and
/// the seccomp deny-list on every thread. Best effort: what could not be
/// applied is reported, and the host decides (`require_sandbox`).
pub(crate) fn confine(grants: &crate::grants::Grants) -> SandboxStatus {
    let mut detail = Vec::new();
    let no_new_privs = rustix::thread::set_no_new_privs(true).is_ok();
    let landlock = match restrict_filesystem(grants) {
        Ok(status) => status,
        Err(e) => {
            detail.push(format!("landlock: {e}"));
            Enforcement::Unavailable
        }
    };
    let seccomp = match install_seccomp() {
        Ok(()) => true,
        Err(e) => {
            detail.push(format!("seccomp: {e}"));
            false
        }
    };
    SandboxStatus { no_new_privs, seccomp, landlock, detail: detail.join("; "), probes: Vec::new() }
}

fn restrict_filesystem(grants: &crate::grants::Grants) -> Result<Enforcement, landlock::RulesetError> {
    use landlock::{
        path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, ABI,
    };
    let abi = ABI::V5;
    let read_only: Vec<&std::path::Path> =
        grants.dirs.iter().filter(|d| !d.writable).map(|d| d.host.as_path()).collect();
    let writable: Vec<&std::path::Path> = grants.dirs.iter().filter(|d| d.writable).map(|d| d.host.as_path()).collect();
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(read_only, AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(writable, AccessFs::from_all(abi)))?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Enforcement::Full,
        RulesetStatus::PartiallyEnforced => Enforcement::Partial,
        RulesetStatus::NotEnforced => Enforcement::Unavailable,
    })
}

/// Why the seccomp filter is not installed. The messages are seccompiler's,
/// as they were reported before this type existed (they go into
/// [`SandboxStatus::detail`]).
#[derive(Debug, thiserror::Error)]
enum SeccompError {
    /// seccompiler has no filter for this CPU architecture.
    #[error("{0:?}")]
    Arch(seccompiler::BackendError),
    /// The rules do not form a valid filter.
    #[error(transparent)]
    Filter(#[from] seccompiler::BackendError),
    /// The kernel refused the filter (no seccomp, no TSYNC, …).
    #[error(transparent)]
    Apply(#[from] seccompiler::Error),
}

fn install_seccomp() -> Result<(), SeccompError> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
    let rules = DENIED_SYSCALLS.iter().map(|nr| (*nr, Vec::new())).collect();
    let arch = std::env::consts::ARCH.try_into().map_err(SeccompError::Arch)?;
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch)?;
    let program: BpfProgram = filter.try_into()?;
    // TSYNC: every thread of the process, including ones started earlier.
    Ok(seccompiler::apply_filter_all_threads(&program)?)
}

/// The self-test hook: tries what the sandbox must refuse, from inside the
/// real worker, after confinement. Each entry is `name=outcome`.
pub(crate) fn probe() -> Vec<String> {
    fn outcome(ret: libc::c_long) -> String {
        if ret >= 0 {
            "allowed".into()
        } else {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EPERM) => "EPERM".into(),
                Some(libc::EACCES) => "EACCES".into(),
                _ => e.to_string(),
            }
        }
    }
    // SAFETY: raw syscalls with valid, NUL-terminated constant arguments;
    // any fd they return is closed right away.
    unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as libc::c_long;
        let socket_out = outcome(socket);
        if socket >= 0 {
            libc::close(socket as i32);
        }
        let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null::<libc::c_char>()];
        let exec = outcome(libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr()) as libc::c_long);
        let ptrace = outcome(libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0));
        let open = libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        let open_out = outcome(open as libc::c_long);
        if open >= 0 {
            libc::close(open);
        }
        vec![
            format!("socket={socket_out}"),
            format!("execve={exec}"),
            format!("ptrace={ptrace}"),
            format!("open_etc_passwd={open_out}"),
        ]
    }
}

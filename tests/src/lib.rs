//! Shared helpers of the integration tests: fixture kernels, the CLI binary,
//! and looking at real processes through `/proc`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

/// A fixture kernel built by `cargo xtask kernels`; `flavour` is `wasip2`
/// or `unknown`.
pub fn kernel_path_of(flavour: &str, name: &str) -> PathBuf {
    let p = target_dir().join("kernels").join(flavour).join(format!("{name}.wasm"));
    assert!(p.exists(), "fixture kernel {} is missing: run `cargo xtask kernels` (scripts/test.sh does)", p.display());
    p
}

/// The wasm32-wasip2 build of a fixture kernel.
pub fn kernel_path(name: &str) -> PathBuf {
    kernel_path_of("wasip2", name)
}

/// Loads a fixture kernel with a private cache for this test process.
pub fn kernel(name: &str) -> wpool::Kernel {
    wpool::Kernel::from_file(kernel_path(name)).expect("fixture kernel loads")
}

/// A binary of the workspace built alongside the tests, by its path under
/// `target/<profile>/` (`wpool`, `evil-worker`, `examples/map_lines`).
pub fn built_binary(relative: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/<relative>
    let p = exe.parent().unwrap().parent().unwrap().join(relative);
    assert!(p.exists(), "{} is missing: build it with `cargo build --workspace --bins --examples`", p.display());
    p
}

/// The `wpool` CLI binary.
pub fn wpool_bin() -> PathBuf {
    built_binary("wpool")
}

/// A launcher that starts the `evil-worker` binary (see its docs) in `mode`,
/// evil every time or, with `once`, only while that marker file does not
/// exist. The evil binary comes first, with an argument of its own: it links
/// `wpool`, whose constructor would otherwise take over any process started
/// with the worker flag as its first argument.
pub fn evil_launcher(mode: &str, once: Option<&Path>) -> Vec<String> {
    let mut launcher = vec!["env".to_string(), format!("EVIL_MODE={mode}")];
    if let Some(marker) = once {
        launcher.push(format!("EVIL_ONCE={}", marker.display()));
    }
    launcher.push(built_binary("evil-worker").display().to_string());
    launcher.push("--evil".into());
    launcher
}

/// A `wpool` command with a generous hang guard applied by [`run`], under
/// the loopback guard (see [`loopback_only`]).
pub fn wpool() -> Command {
    let mut c = Command::new(wpool_bin());
    c.stdin(Stdio::null());
    loopback_only(&mut c);
    c
}

/// Puts a command that runs `wpool` under the loopback guard: a pool whose
/// launched workers would dial back to anything but loopback fails instead
/// (test traffic must stay on this machine's loopback). `scripts/test.sh`
/// sets it for the whole suite; this covers a test run on its own.
pub fn loopback_only(cmd: &mut Command) -> &mut Command {
    cmd.env(wpool::remote::LOOPBACK_ONLY_VAR, "1")
}

/// Where launched workers of library tests dial back: loopback, a free port.
pub fn loopback() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Starts `wpool map ARGS KERNEL` with `lines` written to its stdin, which
/// stays open (the host stays mid-run); stdout and stderr are piped.
pub fn spawn_map_with_open_stdin(
    args: &[&str],
    kernel: &Path,
    lines: &[String],
) -> (std::process::Child, std::process::ChildStdin) {
    let mut cmd = wpool();
    cmd.arg("map").args(args).arg(kernel);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn wpool");
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    (child, stdin)
}

/// Runs a command with `stdin` bytes, killing it if it runs past `limit`
/// (a hang guard, not a performance assertion).
pub fn run_with(mut cmd: Command, stdin: &[u8], limit: Duration) -> Output {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let guard = {
        let done = done.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if start.elapsed() > limit {
                    // SAFETY: kill on a pid we spawned and have not reaped.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        })
    };
    let out = child.wait_with_output().expect("wait");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = writer.join();
    assert!(!guard.join().unwrap(), "command hung past {limit:?} and was killed");
    out
}

/// Runs with a 120 s hang guard.
pub fn run(cmd: Command, stdin: &[u8]) -> Output {
    run_with(cmd, stdin, Duration::from_secs(120))
}

/// Stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Direct children of `pid`, from `/proc/*/stat`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if parent_of(child) == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// The worker processes among the direct children of `pid` (its pool's
/// zygote, also a child, is not one): those whose command line is a
/// worker's, `wpool-worker --wpool-worker HOST_PID`.
pub fn workers_of(pid: u32) -> Vec<u32> {
    children_of(pid).into_iter().filter(|c| cmdline(*c).starts_with(b"wpool-worker\0--wpool-worker\0")).collect()
}

/// The zygotes among the direct children of `pid`: processes whose command
/// line is `wpool-zygote --wpool-zygote HOST_PID`.
pub fn zygotes_of(pid: u32) -> Vec<u32> {
    children_of(pid).into_iter().filter(|c| cmdline(*c).starts_with(b"wpool-zygote\0--wpool-zygote\0")).collect()
}

/// A process's command line, NUL-separated (empty once it is gone).
pub fn cmdline(pid: u32) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
}

/// The parent pid of `pid`, if it exists (zombies included).
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rfind(')').and_then(|i| stat[i + 2..].chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Resident set size of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Sends a signal.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2).
    unsafe { libc::kill(pid as i32, sig) };
}

/// A temp file with these contents.
pub fn temp_file(contents: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(contents).unwrap();
    f.flush().unwrap();
    f
}

/// The environment (`NAME=VALUE` pairs) of a test service started by a
/// script that prints `export NAME=VALUE` lines, started once per test
/// process (the scripts are idempotent; `scripts/test.sh` stops them).
/// `None` when it cannot run here: then `skip_var` (set by
/// `scripts/test.sh`, which says why loudly) must explain it, or the test
/// fails. Never a silent skip.
fn service(
    cell: &'static OnceLock<Result<Vec<(String, String)>, String>>,
    script: &[&str],
    skip_var: &str,
    test: &str,
) -> Option<Vec<(String, String)>> {
    let started = cell.get_or_init(|| {
        let out = Command::new("bash").args(script).stdin(Stdio::null()).stderr(Stdio::piped()).output();
        match out {
            Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
                .map(|(k, v)| (k.to_string(), v.replace("\\ ", " ").trim_matches('\'').to_string()))
                .collect()),
            Ok(o) => Err(format!("{} failed: {}", script.join(" "), String::from_utf8_lossy(&o.stderr).trim())),
            Err(e) => Err(format!("{}: {e}", script.join(" "))),
        }
    });
    match started {
        Ok(env) => Some(env.clone()),
        Err(why) => match std::env::var(skip_var) {
            Ok(reason) if !reason.is_empty() => {
                eprintln!("SKIPPED {test}: {reason}");
                None
            }
            _ => panic!("{test}: {why} (set {skip_var} to a reason to skip instead)"),
        },
    }
}

/// The throwaway Slurm cluster of `../shared/slurm` (two `slurmd` nodes on
/// this machine): the environment Slurm commands need.
pub fn slurm_cluster(test: &str) -> Option<Vec<(String, String)>> {
    static CELL: OnceLock<Result<Vec<(String, String)>, String>> = OnceLock::new();
    let script = root().join("../shared/slurm/start-slurm.sh");
    service(&CELL, &[script.to_str().unwrap()], "WPOOL_SLURM_SKIP", test)
}

/// A private sshd on 127.0.0.1 (`scripts/sshd.sh`): the `ssh …` command
/// prefix that reaches it.
pub fn ssh_launcher(test: &str) -> Option<String> {
    static CELL: OnceLock<Result<Vec<(String, String)>, String>> = OnceLock::new();
    let script = root().join("scripts/sshd.sh");
    let env = service(&CELL, &[script.to_str().unwrap(), "start"], "WPOOL_SSH_SKIP", test)?;
    // Started but said nothing usable: a broken set-up, not a reason to skip.
    let launcher = env.into_iter().find(|(k, _)| k == "WPOOL_TEST_SSH").map(|(_, v)| v);
    Some(launcher.unwrap_or_else(|| panic!("{test}: scripts/sshd.sh start succeeded but printed no WPOOL_TEST_SSH")))
}

/// A worker as `wpool -v` announces it on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    pub worker: u32,
    pub node: String,
    pub pid: u32,
}

/// Parses one `wpool: worker N: node NODE, pid PID, sandbox …` line.
pub fn announced(line: &str) -> Option<Announced> {
    let rest = line.strip_prefix("wpool: worker ")?;
    let (worker, rest) = rest.split_once(": node ")?;
    let (node, rest) = rest.split_once(", pid ")?;
    let (pid, _) = rest.split_once(", sandbox")?;
    Some(Announced { worker: worker.parse().ok()?, node: node.to_string(), pid: pid.parse().ok()? })
}

/// Processes whose command line is that of a launched worker of `program`
/// (`PROGRAM --wpool-worker dial`), wherever they were started from.
pub fn launched_workers(program: &Path) -> Vec<u32> {
    let want = format!("{}\0--wpool-worker\0dial\0", program.display());
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        if cmdline == want.as_bytes() && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// A pseudo-terminal, to run the CLI as a person at a terminal does: with
/// stderr (and perhaps stdin) a TTY, the progress bar on, Ctrl-C typed.
pub struct Pty {
    master: std::fs::File,
    slave: std::os::fd::OwnedFd,
    screen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Pty {
    /// A new 80×24 terminal.
    pub fn new() -> Pty {
        use std::os::fd::FromRawFd;
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: openpty writes two fds into the given ints; the size is read.
        let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &size) };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both fds were just opened and are owned here.
        let (master, slave) = unsafe { (std::fs::File::from_raw_fd(master), std::os::fd::OwnedFd::from_raw_fd(slave)) };
        Pty { master, slave, screen: Default::default() }
    }

    /// The terminal as a child's stdio.
    pub fn stdio(&self) -> Stdio {
        Stdio::from(self.slave.try_clone().unwrap())
    }

    /// Spawns `cmd` with stderr on this terminal, as the leader of a new
    /// session whose controlling terminal it is (so typing Ctrl-C sends
    /// SIGINT to its foreground process group, as a shell's job would get
    /// it). Everything the terminal shows is collected (see [`Pty::screen`]).
    pub fn spawn(self, mut cmd: Command) -> (std::process::Child, PtyHandle) {
        use std::os::unix::process::CommandExt;
        cmd.stderr(self.stdio());
        // SAFETY: setsid and ioctl are async-signal-safe; fd 2 is the
        // terminal set above.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(2, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn under a terminal");
        drop(self.slave);
        let mut reader = self.master.try_clone().unwrap();
        let screen = std::sync::Arc::clone(&self.screen);
        let reader_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once every process holding the terminal is gone.
            while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
                if n == 0 {
                    break;
                }
                screen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        (child, PtyHandle { master: self.master, screen: self.screen, reader: Some(reader_thread) })
    }
}

impl Default for Pty {
    fn default() -> Self {
        Pty::new()
    }
}

/// The terminal side of a process started by [`Pty::spawn`].
pub struct PtyHandle {
    master: std::fs::File,
    screen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl PtyHandle {
    /// Types bytes (`b"\x03"` is Ctrl-C, `b"\x04"` Ctrl-D).
    pub fn type_bytes(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }

    /// What the terminal showed so far.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// Everything the terminal showed, once the process (and whatever else
    /// held the terminal) has exited: the reader has read it all.
    pub fn final_screen(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.screen()
    }
}

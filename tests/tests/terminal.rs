//! Field bugs (issue 14): what a person at a terminal meets — inputs that
//! are pipes and FIFOs, Ctrl-C, `kill`/`timeout`/Slurm's SIGTERM, a closed
//! terminal's SIGHUP, private files, help that can be pasted, messages.
//! Terminal cases run `wpool` under a real pseudo-terminal ([`Pty`]);
//! signal cases send real signals to the real process.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use wpool_tests::*;

/// Waits for a child, killing it if it hangs past `limit` (a hang guard).
fn wait_guarded(child: &mut Child, limit: Duration) -> ExitStatus {
    let pid = child.id();
    let mut status = None;
    let exited = eventually(limit, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !exited {
        signal(pid, libc::SIGKILL);
        let _ = child.wait();
        panic!("wpool hung past {limit:?} and was killed");
    }
    status.unwrap()
}

/// What a run under a terminal left: its status, its stdout, and everything
/// the terminal (its stderr) showed.
struct TerminalRun {
    status: ExitStatus,
    out: String,
    screen: String,
}

/// Runs `cmd` to its end with stderr on a fresh terminal and stdout piped
/// (as `wpool … | wc -l` typed at a shell).
fn run_under_terminal(mut cmd: Command) -> TerminalRun {
    cmd.stdout(Stdio::piped());
    let (mut child, mut term) = Pty::new().spawn(cmd);
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let status = wait_guarded(&mut child, Duration::from_secs(120));
    TerminalRun { status, out, screen: term.final_screen() }
}

fn map_cmd(args: &[&str], kernel: &Path) -> Command {
    let mut c = wpool();
    c.arg("map").args(args).arg(kernel);
    c
}

fn mkfifo(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    p
}

fn numbers(range: std::ops::RangeInclusive<u32>) -> String {
    range.map(|i| format!("{i}\n")).collect()
}

#[test]
fn f1_process_substitution_input_is_read_whole_under_a_terminal() {
    // `wpool map upper.wasm <(seq 1000)` at a terminal printed nothing.
    let mut c = Command::new("bash");
    c.arg("-c").arg(r#"exec "$0" map "$1" <(seq 1000)"#).arg(wpool_bin()).arg(kernel_path("upper"));
    c.stdin(Stdio::null());
    let run = run_under_terminal(c);
    assert_eq!(run.status.code(), Some(0));
    assert_eq!(run.out, numbers(1..=1000));
}

#[test]
fn f1_named_fifo_input_is_read_whole_under_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = mkfifo(dir.path(), "items");
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, numbers(1..=1000)).unwrap())
    };
    let mut c = map_cmd(&[], &kernel_path("upper"));
    c.arg(&fifo).stdin(Stdio::null());
    let run = run_under_terminal(c);
    writer.join().unwrap();
    assert_eq!(run.status.code(), Some(0));
    assert_eq!(run.out, numbers(1..=1000));
}

#[test]
fn f1_ctrl_c_ends_a_run_waiting_on_a_fifo_without_writer() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = mkfifo(dir.path(), "never");
    let mut c = map_cmd(&["-j", "1"], &kernel_path("upper"));
    c.arg(&fifo).stdin(Stdio::null()).stdout(Stdio::piped());
    let (mut child, mut term) = Pty::new().spawn(c);
    let pid = child.id();
    // The pool is up (its worker runs) while the input waits for a writer.
    assert!(eventually(Duration::from_secs(60), || !workers_of(pid).is_empty()), "no worker started");
    let workers = children_of(pid);
    term.type_bytes(b"\x03");
    let status = wait_guarded(&mut child, Duration::from_secs(60));
    let screen = term.final_screen();
    assert_eq!(status.code(), Some(130), "screen: {screen}");
    assert!(screen.contains("interrupted"), "{screen}");
    assert!(eventually(Duration::from_secs(10), || workers.iter().all(|w| !alive(*w))), "workers left behind");
}

#[test]
fn f9_reading_items_from_the_terminal_says_so() {
    let pty = Pty::new();
    let mut c = map_cmd(&["-j", "1"], &kernel_path("upper"));
    c.stdin(pty.stdio()).stdout(Stdio::piped());
    let (mut child, mut term) = pty.spawn(c);
    assert!(
        eventually(Duration::from_secs(60), || term
            .screen()
            .contains("reading items from the terminal; end with Ctrl-D")),
        "no notice on the terminal: {:?}",
        term.screen()
    );
    term.type_bytes(b"hello\n");
    term.type_bytes(b"\x04");
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let status = wait_guarded(&mut child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", term.final_screen());
    assert_eq!(out, "HELLO\n");
}

/// `1..=5000`, `spin` (runs until stopped), `5001..=10000`, on one worker:
/// waits until the 5000 results before the stuck item are printed (they
/// must not wait for it), then sends `sig`. Returns the whole stdout, the
/// exit status and stderr.
fn stop_behind_a_slow_item(sig: i32, extra: &[&str], env: &[(&str, &Path)]) -> (Vec<String>, ExitStatus, String) {
    let mut input = numbers(1..=5000);
    input.push_str("spin\n");
    input.push_str(&numbers(5001..=10000));
    let file = temp_file(input.as_bytes());
    let mut args = vec!["-j", "1"];
    args.extend_from_slice(extra);
    let mut c = map_cmd(&args, &kernel_path("hostile"));
    c.arg(file.path()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    while lines.len() < 5000 {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => lines.push(line),
            Err(_) => {
                signal(pid, libc::SIGKILL);
                let _ = child.wait();
                panic!("only {} of the 5000 finished results reached stdout while the next item ran", lines.len());
            }
        }
    }
    let workers = children_of(pid);
    assert!(!workers.is_empty(), "the worker is running the slow item");
    signal(pid, sig);
    let status = wait_guarded(&mut child, Duration::from_secs(60));
    lines.extend(rx.iter());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(eventually(Duration::from_secs(10), || workers.iter().all(|w| !alive(*w))), "workers left behind");
    (lines, status, err)
}

#[test]
fn f2_finished_results_reach_stdout_while_a_slow_item_runs_and_survive_ctrl_c() {
    let (lines, status, err) = stop_behind_a_slow_item(libc::SIGINT, &[], &[]);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted (SIGINT)"), "{err}");
    let want: Vec<String> = (1..=5000).map(|i| i.to_string()).collect();
    assert_eq!(lines, want, "every finished result, in order, once");
}

#[test]
fn f3_sigterm_flushes_finished_results_cleans_up_and_exits_143() {
    let tmp = tempfile::tempdir().unwrap();
    let (lines, status, err) = stop_behind_a_slow_item(libc::SIGTERM, &[], &[("TMPDIR", tmp.path())]);
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(err.contains("terminated (SIGTERM)"), "{err}");
    assert_eq!(lines.len(), 5000);
    assert_eq!(lines.last().map(String::as_str), Some("5000"));
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "private files left in TMPDIR: {left:?}");
}

#[test]
fn f3_sighup_flushes_finished_results_and_exits_129() {
    let (lines, status, err) = stop_behind_a_slow_item(libc::SIGHUP, &[], &[]);
    assert_eq!(status.code(), Some(129), "{err}");
    assert!(err.contains("hung up (SIGHUP)"), "{err}");
    assert_eq!(lines.len(), 5000);
}

/// The entries of a directory, by name.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn f3_data_file_gets_nothing_beside_it_and_a_private_run_directory() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let user = tempfile::tempdir().unwrap();
    let data = user.path().join("table.txt");
    std::fs::write(&data, "shared\n").unwrap();
    let mut c = map_cmd(&["-j", "1", "--data", data.to_str().unwrap()], &kernel_path("hostile"));
    c.env("TMPDIR", tmp.path()).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"spin\n").unwrap();
    assert!(eventually(Duration::from_secs(60), || !workers_of(pid).is_empty()));
    // Mid-run: beside the user's file, nothing; in TMPDIR, one run directory
    // of this process, private, holding the data.
    assert_eq!(entries(user.path()), vec!["table.txt".to_string()]);
    let runs = entries(tmp.path());
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].starts_with(&format!("wpool-{pid}-")), "{runs:?}");
    let run = tmp.path().join(&runs[0]);
    assert_eq!(std::fs::metadata(&run).unwrap().permissions().mode() & 0o777, 0o700);
    let data_dirs: Vec<String> = entries(&run).into_iter().filter(|n| n.starts_with("data-")).collect();
    assert_eq!(data_dirs.len(), 1, "{:?}", entries(&run));
    assert_eq!(std::fs::read_to_string(run.join(&data_dirs[0]).join("data")).unwrap(), "shared\n");
    signal(pid, libc::SIGTERM);
    let status = wait_guarded(&mut child, Duration::from_secs(60));
    drop(stdin);
    assert_eq!(status.code(), Some(143));
    assert_eq!(entries(user.path()), vec!["table.txt".to_string()]);
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}

#[test]
fn f3_run_directory_of_a_killed_host_is_swept_by_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = temp_file(b"x\n");
    let (mut host, stdin) = {
        let mut c = map_cmd(&["-j", "1", "--data", data.path().to_str().unwrap()], &kernel_path("hostile"));
        c.env("TMPDIR", tmp.path()).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        (child, stdin)
    };
    let pid = host.id();
    assert!(eventually(Duration::from_secs(60), || !workers_of(pid).is_empty()));
    signal(pid, libc::SIGKILL);
    host.wait().unwrap();
    drop(stdin);
    let stale = entries(tmp.path());
    assert_eq!(stale.len(), 1, "a SIGKILLed host cannot clean up: {stale:?}");
    // The next run, of the same user, removes it.
    let mut c = map_cmd(&["-j", "1"], &kernel_path("upper"));
    c.env("TMPDIR", tmp.path());
    let out = run(c, b"a\n");
    assert_eq!(stdout(&out), "A\n");
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}

#[test]
fn f8_progress_bar_on_pipeline_and_mapreduce_under_a_terminal() {
    let file = temp_file(b"a\nb\nspin\nc\n");
    let mut c = wpool();
    c.args(["pipeline", "-j", "1", "--timeout", "1s", "--stage"])
        .arg(kernel_path("hostile"))
        .arg("--stage")
        .arg(kernel_path("upper"))
        .arg(file.path());
    let run = run_under_terminal(c);
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(run.out, "A\nB\nC\n");
    assert!(run.screen.contains(" items"), "no progress bar: {:?}", run.screen);

    // Enough items to outlast the bar's first redraw (a run that ends
    // before it never shows a bar, and needs none).
    let words = temp_file("a b\nb c\n".repeat(50_000).as_bytes());
    let mut c = wpool();
    c.args(["mapreduce", "-j", "1", "--map"])
        .arg(kernel_path("wordcount"))
        .arg("--reduce")
        .arg(kernel_path("sum"))
        .arg(words.path());
    let run = run_under_terminal(c);
    assert_eq!(run.status.code(), Some(0));
    assert_eq!(run.out, "a\t50000\nb\t100000\nc\t50000\n");
    assert!(run.screen.contains(" items"), "no progress bar: {:?}", run.screen);
}

#[test]
fn f8_mapreduce_fail_fast_stops_at_the_first_failed_item() {
    // One failing map item, then items that would each run a full minute.
    let mut input = String::from("err:first\n");
    input.push_str(&"spin\n".repeat(20));
    let file = temp_file(input.as_bytes());
    let mut c = wpool();
    c.args(["mapreduce", "-j", "1", "--timeout", "60s", "--fail-fast", "--map"])
        .arg(kernel_path("hostile"))
        .arg("--reduce")
        .arg(kernel_path("sum"))
        .arg(file.path());
    let out = run_with(c, b"", Duration::from_secs(100));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("first"), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
}

#[test]
fn f8_pipeline_and_mapreduce_do_not_offer_map_only_flags() {
    for cmd in ["pipeline", "mapreduce"] {
        let out = run(
            {
                let mut c = wpool();
                c.args([cmd, "--help"]);
                c
            },
            b"",
        );
        let help = stdout(&out);
        assert!(!help.contains("--unordered") && !help.contains("--init"), "{cmd} --help: {help}");
        let mut c = wpool();
        c.args([cmd, "--unordered"]);
        let out = run(c, b"");
        assert_eq!(out.status.code(), Some(2), "{cmd} --unordered");
    }
}

/// The example commands of a command's `--help`, as a person would paste
/// them: lines after `Example…:` indented by two, continued by a trailing
/// `\` or `|`.
fn help_examples(help: &str) -> Vec<String> {
    let mut examples = Vec::new();
    let mut current = String::new();
    let mut inside = false;
    for line in help.lines() {
        if line.starts_with("Example") {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        let Some(text) = line.strip_prefix("  ") else {
            // A blank line may separate examples; any other line ends them.
            inside &= line.trim().is_empty();
            continue;
        };
        current.push_str(text.trim_start());
        current.push('\n');
        if !(text.ends_with('\\') || text.ends_with('|')) {
            examples.push(std::mem::take(&mut current));
        }
    }
    examples
}

#[test]
fn f9_help_examples_fit_80_columns_and_run_as_pasted() {
    let bin_dir = wpool_bin().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    for cmd in ["map", "pipeline", "mapreduce", "bench", "joblog", "replay"] {
        let mut c = wpool();
        c.args([cmd, "--help"]).env("COLUMNS", "80");
        let help = stdout(&run(c, b""));
        for line in help.lines() {
            assert!(line.chars().count() <= 80, "{cmd} --help wraps at 80 columns: {line:?}");
        }
        let examples = help_examples(&help);
        assert!(!examples.is_empty(), "{cmd} --help has examples: {help}");
        // Variables set by one example line (`k=…`) are for the next. Exit
        // status 1 (some items failed) is what an example may show; usage
        // errors (2) fail.
        let script: String = examples.iter().map(|e| format!("{} || test $? -eq 1\n", e.trim_end())).collect();
        let dir = tempfile::tempdir().unwrap();
        let mut sh = Command::new("bash");
        sh.args(["-e", "-o", "pipefail", "-c", &script])
            .current_dir(root())
            .env("PATH", &path)
            .env("TMPDIR", dir.path())
            .stdin(Stdio::null());
        let out = run_with(sh, b"", Duration::from_secs(300));
        assert!(out.status.success(), "{cmd} examples failed:\n{script}\n{}", stderr(&out));
        assert!(!out.stdout.is_empty(), "{cmd} examples printed nothing:\n{script}");
    }
}

#[test]
fn f10_oversized_item_names_its_real_size_the_cap_and_the_flag() {
    let mut input = vec![b'x'; 2000];
    input.extend_from_slice(b"\nok\n");
    let input = temp_file(&input);
    let mut c = map_cmd(&["--max-item-size", "1000"], &kernel_path("upper"));
    c.arg(input.path());
    let out = run(c, b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "OK\n");
    let err = stderr(&out);
    assert!(err.contains("item of 2000 bytes is over the 1000-byte cap (raise it with --max-item-size)"), "{err}");
}

#[test]
fn f10_swapped_kernel_and_input_get_a_hint() {
    let input = temp_file(b"a\n");
    let mut c = wpool();
    c.arg("map").arg(input.path()).arg(kernel_path("upper"));
    let out = run(c, b"");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("the kernel comes first: did you mean `wpool map"), "{err}");
}

#[test]
fn f10_json_errors_name_their_origin() {
    let input = temp_file(b"ok\nerr:no\n");
    let mut c = map_cmd(&["--json"], &kernel_path("hostile"));
    c.arg(input.path());
    let out = run(c, b"");
    let lines: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[1]["error"]["origin"], format!("{}:2", input.path().display()));
}

#[test]
fn f10_progress_rate_is_whole_items_per_second() {
    let file = temp_file(numbers(1..=3000).as_bytes());
    let mut c = map_cmd(&["-j", "1", "--chunksize", "1"], &kernel_path("upper"));
    c.arg(file.path());
    let run = run_under_terminal(c);
    assert_eq!(run.status.code(), Some(0));
    let screen = run.screen;
    assert!(screen.contains("/s"), "a rate was shown: {screen:?}");
    for (at, _) in screen.match_indices("/s") {
        let before: String = screen[..at].chars().rev().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        assert!(!before.contains('.'), "rate with decimals: {}", &screen[at.saturating_sub(20)..at + 2]);
    }
}

#[test]
fn files_named_on_stdin_nul_separated_are_items_as_with_xargs() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a b.txt"), dir.path().join("c.txt"));
    std::fs::write(&a, "first\nfile").unwrap();
    std::fs::write(&b, "second").unwrap();
    let list = format!("{}\0{}\0", a.display(), b.display());
    let mut c = map_cmd(&["--files", "-0"], &kernel_path("upper"));
    c.arg("-");
    let out = run(c, list.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "FIRST\nFILE\0SECOND\0");
    // A listed file that cannot be read stops the input with its name.
    let mut c = map_cmd(&["--files"], &kernel_path("upper"));
    c.arg("-");
    let out = run(c, format!("{}\n/nonexistent/file\n", b.display()).as_bytes());
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stdout(&out), "SECOND\n");
    assert!(stderr(&out).contains("/nonexistent/file"), "{}", stderr(&out));
}

#[test]
fn tag_and_on_error_empty_keep_output_aligned_with_input() {
    let input = temp_file(b"a\nerr:x\nb\n");
    let mut c = map_cmd(&["--on-error", "empty"], &kernel_path("hostile"));
    c.arg(input.path());
    let out = run(c, b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "a\n\nb\n");
    let mut c = map_cmd(&["--tag"], &kernel_path("hostile"));
    c.arg(input.path());
    let out = run(c, b"");
    let name = input.path().display();
    assert_eq!(stdout(&out), format!("{name}:1\ta\n{name}:3\tb\n"));
}

#[test]
fn f10_limit_errors_name_the_flag_that_raises_the_limit() {
    let input = temp_file(b"oom\nspin:100000000\n");
    let mut c = map_cmd(&["--memory", "64MiB", "--fuel", "100000000"], &kernel_path("hostile"));
    c.arg(input.path());
    let out = run(c, b"");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("memory_limit: ") && err.contains("(raise it with --memory)"), "{err}");
    assert!(err.contains("out_of_fuel: ") && err.contains("(raise it with --fuel)"), "{err}");
}

#[test]
fn f3_the_sweep_leaves_run_directories_of_other_pid_namespaces_alone() {
    let tmp = tempfile::tempdir().unwrap();
    // A pid that is certainly gone: a child that ran and was reaped.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let ours = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let ours = ours.to_str().unwrap().trim_start_matches("pid:[").trim_end_matches(']').to_string();
    let here = tmp.path().join(format!("wpool-{dead}-0-ns{ours}"));
    let elsewhere = tmp.path().join(format!("wpool-{dead}-0-ns1"));
    for dir in [&here, &elsewhere] {
        std::fs::create_dir(dir).unwrap();
    }
    let mut c = map_cmd(&["-j", "1"], &kernel_path("upper"));
    c.env("TMPDIR", tmp.path());
    let out = run(c, b"a\n");
    assert_eq!(stdout(&out), "A\n");
    assert!(!here.exists(), "a stale run directory of this namespace is swept");
    assert!(elsewhere.exists(), "another namespace's pid says nothing here: left alone");
}

/// The capacity of the pipe behind `fd`.
fn pipe_size(fd: &impl std::os::fd::AsRawFd) -> libc::c_int {
    // SAFETY: F_GETPIPE_SZ on a descriptor the caller holds.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) }
}

/// `producer | wpool map … | consumer`: wpool makes the pipe it writes to
/// hold 1 MiB (megabytes of results reach the reader in a few rounds) but
/// leaves the pipe it reads as it is, so that a producer that writes as
/// fast as it can (`seq`) waits after 64 KiB instead of keeping a core busy
/// while the pool starts.
#[test]
fn stdout_pipe_is_widened_and_stdin_pipe_is_not() {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors, each then owned once below.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (stdin_r, mut producer) =
        unsafe { (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) };
    let mut c = map_cmd(&["-j", "1"], &kernel_path("echo"));
    c.stdin(Stdio::from(stdin_r)).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(&mut producer, b"first\n").unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "first\n");
    // Both asked while the run is on, after its first result.
    let (stdin_size, stdout_size) = (pipe_size(&producer), pipe_size(out.get_ref()));
    drop(producer);
    let status = wait_guarded(&mut child, Duration::from_secs(60));
    assert!(status.success());
    assert_eq!(stdin_size, 64 << 10, "stdin left at the default");
    // Widening is best effort: an unprivileged user whose pipes already
    // hold the per-user budget (other tests' pools) is refused.
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(stdout_size, 1 << 20, "stdout widened");
    } else {
        assert!(stdout_size >= 64 << 10, "stdout {stdout_size}");
    }
}

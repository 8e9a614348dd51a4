//! Launched workers (issue: scale-out): workers started through a launcher
//! (`srun`, `ssh`, or any command prefix) dial back to the host over TCP.
//! The Slurm tests run on the real throwaway cluster of `../shared/slurm`
//! (two `slurmd` nodes on this machine), the ssh tests against a private
//! sshd on 127.0.0.1 (`scripts/sshd.sh`). Both are started on first use;
//! `scripts/test.sh` starts and stops them around the suite. Every run here
//! listens on 127.0.0.1 and runs under the loopback guard
//! (`WPOOL_LOOPBACK_ONLY`): the cluster's nodes and the sshd are on this
//! machine, and test traffic may not leave its loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wpool::remote::LOOPBACK_ONLY_VAR;
use wpool::{Error, Kernel, Pool};
use wpool_tests::*;

/// Items that each keep a worker busy for a while (tens of milliseconds).
fn slow_items(n: usize) -> String {
    (0..n).map(|i| format!("spin:200:{i}\n")).collect()
}

fn local_output(kernel: &Path, input: &str) -> String {
    let mut cmd = wpool();
    cmd.args(["map", "-j", "2"]).arg(kernel);
    let out = run(cmd, input.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    stdout(&out)
}

/// `salloc ARGS wpool …` with the cluster's environment, under the
/// loopback guard (salloc passes its environment on to the command).
fn salloc(env: &[(String, String)], alloc: &[&str]) -> Command {
    let mut cmd = Command::new("salloc");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    loopback_only(&mut cmd);
    cmd.args(alloc).arg(wpool_bin());
    cmd
}

/// `salloc ARGS wpool map -v --slurm --listen 127.0.0.1 MAP_ARGS KERNEL`,
/// input on stdin.
fn salloc_map(env: &[(String, String)], alloc: &[&str], map_args: &[&str], kernel: &Path) -> Command {
    let mut cmd = salloc(env, alloc);
    cmd.args(["map", "-v", "--slurm", "--listen", "127.0.0.1"]).args(map_args).arg(kernel);
    cmd
}

/// Reads stderr lines until `n` workers were announced; returns them and
/// the lines read.
fn read_announcements(stderr: &mut impl BufRead, n: usize) -> (Vec<Announced>, String) {
    let mut workers = Vec::new();
    let mut seen = String::new();
    while workers.len() < n {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("stderr ended before {n} workers were announced:\n{seen}");
        }
        if let Some(w) = announced(line.trim_end()) {
            workers.push(w);
        }
        seen.push_str(&line);
    }
    (workers, seen)
}

/// Waits for the child with a hang guard; returns (status, stdout, rest of stderr).
fn finish(mut child: Child, mut stderr: impl Read + Send + 'static, limit: Duration) -> (Option<i32>, String, String) {
    let pid = child.id();
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        err
    });
    let guard = std::thread::spawn(move || {
        if !eventually(limit, || !alive(pid)) {
            signal(pid, libc::SIGKILL);
            return true;
        }
        false
    });
    stdout.read_to_string(&mut out).unwrap();
    let status = child.wait().unwrap();
    assert!(!guard.join().unwrap(), "hung past {limit:?} and was killed");
    (status.code(), out, reader.join().unwrap())
}

fn assert_no_worker_outlives_the_run() {
    assert!(
        eventually(Duration::from_secs(10), || launched_workers(&wpool_bin()).is_empty()),
        "no worker outlives the run"
    );
}

/// Runs `cmd` (a `-v` map of `kernel` with `workers` launched workers)
/// over `input`, SIGKILLs the worker `pick` chooses once all are up, and
/// checks that nothing was lost or duplicated and that nothing is left.
fn kill_a_worker_mid_run(
    mut cmd: Command,
    workers: usize,
    kernel: &Path,
    input: &str,
    pick: fn(&[Announced]) -> usize,
) {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let (announced, seen) = read_announcements(&mut err, workers);
    let victim = announced[pick(&announced)].pid;
    assert!(launched_workers(&wpool_bin()).contains(&victim), "the leak check sees running workers: {seen}");
    std::thread::sleep(Duration::from_millis(300));
    signal(victim, libc::SIGKILL);
    let (code, out, rest) = finish(child, err, Duration::from_secs(180));
    assert_eq!(code, Some(0), "{seen}{rest}");
    assert_eq!(out, local_output(kernel, input), "every item once, in order");
    assert!(rest.contains(", 1 died,"), "the kill was seen as a worker death: {rest}");
    assert_no_worker_outlives_the_run();
}

// ---------------------------------------------------------------------------
// Any launcher, over loopback: the transport itself.

#[test]
fn launched_workers_dial_back_and_match_local_output() {
    let kernel = kernel_path("upper");
    // Small items, and every 25th one of 70-260 KiB: those travel outside
    // the frames' encoding, over the TCP connection too.
    let input: String = (0..500)
        .map(|i| match i % 25 {
            0 => format!("{}\n", "large item ".repeat(6400 + i * 30)),
            _ => format!("item {i}\n"),
        })
        .collect();
    let mut cmd = wpool();
    cmd.args(["map", "-v", "-j", "3", "--launcher", "env", "--listen", "127.0.0.1"]).arg(&kernel);
    let out = run(cmd, input.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), local_output(&kernel, &input));
    let err = stderr(&out);
    assert!(err.contains("workers connected back to 127.0.0.1:"), "{err}");
    let workers: Vec<Announced> = err.lines().filter_map(announced).collect();
    assert_eq!(workers.len(), 3, "{err}");
}

#[test]
fn a_launched_worker_scrubs_the_environment_its_launcher_passed_on() {
    // Launchers get the caller's environment (srun and ssh need it) and may
    // pass it on: the worker wipes it, in memory and in /proc.
    let mut cmd = wpool();
    cmd.env("WPOOL_TEST_SECRET", "hunter2-launched").stdin(Stdio::piped()).stderr(Stdio::piped());
    cmd.args(["map", "-v", "-j", "1", "--listen", "127.0.0.1", "--launcher", "env"]).arg(kernel_path("upper"));
    cmd.stdout(Stdio::piped());
    let mut host = cmd.spawn().unwrap();
    let _stdin = host.stdin.take().unwrap();
    let mut err = BufReader::new(host.stderr.take().unwrap());
    let (workers, _) = read_announcements(&mut err, 1);
    let environ = std::fs::read(format!("/proc/{}/environ", workers[0].pid)).unwrap();
    host.kill().unwrap();
    host.wait().unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains("hunter2"),
        "the secret is still in the worker's environment block"
    );
}

#[test]
fn connections_without_the_token_are_refused_and_the_run_goes_on() {
    let mut pool = Pool::builder(kernel("upper"))
        .workers(2)
        .launcher(["env"])
        .worker_program(wpool_bin())
        .listen(loopback())
        .build()
        .unwrap();
    let addr = pool.dial_address().expect("launched workers have a dial-back address");
    assert!(addr.ip().is_loopback());
    // A stranger that says nothing useful, and one that knows the magic but
    // guesses the token: both are cut off.
    let mut junk = TcpStream::connect(addr).unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut guess = TcpStream::connect(addr).unwrap();
    guess.write_all(b"wpool-dl0123456789abcdef").unwrap();
    for conn in [&mut junk, &mut guess] {
        conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(conn.read(&mut buf).unwrap_or(0), 0, "the host must close a connection without the token");
    }
    let out = pool.map(["a", "b", "c"]).unwrap();
    let out: Vec<Vec<u8>> = out.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(out, [b"A".to_vec(), b"B".to_vec(), b"C".to_vec()]);
    assert_eq!(pool.stats().rejected_connections, 2);
    assert_eq!(pool.stats().worker_deaths, 0);
}

#[test]
fn a_launched_worker_compiles_the_wasm_into_its_own_cache() {
    // The host's cache and the worker's are different directories: the
    // worker cannot have used the host's artifact, it was sent the wasm.
    let host_cache = tempfile::tempdir().unwrap();
    let node_cache = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(kernel_path("upper")).unwrap();
    let kernel = Kernel::from_bytes_with_cache("upper", bytes, host_cache.path()).unwrap();
    let node_env = format!("WPOOL_CACHE_DIR={}", node_cache.path().display());
    let mut pool = Pool::builder(kernel)
        .workers(1)
        .launcher(["env", &node_env])
        .worker_program(wpool_bin())
        .listen(loopback())
        .build()
        .unwrap();
    assert_eq!(pool.map(["x"]).unwrap()[0].as_deref().unwrap(), b"X");
    let compiled = |dir: &Path| {
        std::fs::read_dir(dir).unwrap().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "cwasm")).count()
    };
    assert_eq!(compiled(node_cache.path()), 1, "the worker stores what it compiled in its node-private cache");
    assert_eq!(pool.worker_info().len(), 1);
}

#[test]
fn a_launcher_that_fails_is_a_clear_error_with_exit_2() {
    let kernel = kernel_path("upper");
    for (launcher, expect) in [
        ("/nonexistent/launcher -x", "cannot start worker process `/nonexistent/launcher -x"),
        ("false", "its launcher exited with status 1 before the worker connected back to 127.0.0.1:"),
        ("sh -c 'echo no such host >&2; exit 255'", "its stderr: no such host"),
    ] {
        let mut cmd = wpool();
        cmd.args(["map", "-j", "2", "--listen", "127.0.0.1", "--launcher", launcher]).arg(&kernel);
        let out = run(cmd, b"x\n");
        assert_eq!(out.status.code(), Some(2), "{launcher}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{launcher}: {}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
    // A worker that cannot reach the address it was given says so (here a
    // launcher hands it a line naming a closed port).
    let line = format!("wpool-dial {} 127.0.0.1:1 {}", wpool::protocol::PROTOCOL_VERSION, "0".repeat(32));
    let launcher = format!("sh -c 'echo {line} | \"$0\" \"$@\"'");
    let mut cmd = wpool();
    cmd.args(["map", "-j", "1", "--listen", "127.0.0.1", "--launcher", &launcher]).arg(&kernel);
    let out = run(cmd, b"x\n");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot connect back to the host at 127.0.0.1:1"), "{}", stderr(&out));
}

#[test]
fn a_launched_worker_exits_when_its_connection_closes_whatever_its_launcher_does() {
    // This launcher hands the worker the handshake line and then holds the
    // worker's stdin open by itself (`sleep`), in a session of its own
    // (`setsid -w`): the worker is no child of the host, has no parent-death
    // signal, and its stdin never closes. Only its connection ties it to the
    // host.
    let launcher = r#"sh -c 'read l; (echo "$l"; exec sleep 60) | setsid -w "$0" "$@"'"#;
    let kernel = kernel_path("hostile");
    let mut cmd = wpool();
    cmd.args(["map", "-v", "-j", "2", "--listen", "127.0.0.1", "--launcher", launcher]).arg(&kernel);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut host = cmd.spawn().unwrap();
    let mut stdin = host.stdin.take().unwrap();
    stdin.write_all(slow_items(4).as_bytes()).unwrap();
    let mut err = BufReader::new(host.stderr.take().unwrap());
    let (workers, _) = read_announcements(&mut err, 2);
    for w in &workers {
        assert!(alive(w.pid));
        assert_ne!(parent_of(w.pid), Some(host.id()), "the worker must not be the host's child here");
    }
    host.kill().unwrap();
    host.wait().unwrap();
    for w in &workers {
        assert!(eventually(Duration::from_secs(30), || !alive(w.pid)), "worker {} outlived the host", w.pid);
    }
}

#[test]
fn the_loopback_guard_refuses_a_listen_address_beyond_loopback_the_default_included() {
    let path = kernel_path("upper");
    // An address of no interface here: without the guard, a bind error.
    let mut cmd = wpool();
    cmd.args(["map", "-j", "1", "--launcher", "env", "--listen", "203.0.113.1"]).arg(&path);
    let out = run(cmd, b"x\n");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "refusing to listen for launched workers on 203.0.113.1 (not a loopback address) while \
             WPOOL_LOOPBACK_ONLY is set: pass a loopback address (--listen 127.0.0.1"
        ),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());

    // No --listen: this machine's address is checked as well. `false` as the
    // launcher, so that nothing would dial it even if it were let through.
    let mut cmd = wpool();
    cmd.args(["map", "-j", "1", "--launcher", "false"]).arg(&path);
    let out = run(cmd, b"x\n");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let named = |after: &str| -> Option<String> {
        let rest = err.split_once(after)?.1;
        Some(rest.chars().take_while(|c| c.is_ascii_hexdigit() || ".:".contains(*c)).collect())
    };
    match named("refusing to listen for launched workers on ") {
        Some(ip) => assert!(!ip.parse::<IpAddr>().unwrap().is_loopback(), "{err}"),
        // A machine without a non-loopback IPv4 address: the default is
        // loopback, allowed, and the launcher's failure names it.
        None => {
            let addr = named("connected back to ").unwrap_or_else(|| panic!("{err}"));
            assert!(addr.parse::<SocketAddr>().unwrap().ip().is_loopback(), "{err}");
        }
    }

    // The library: a typed error, before any worker starts. The guard is
    // read at build time; nextest runs each test in a process of its own.
    if std::env::var_os(LOOPBACK_ONLY_VAR).is_none() {
        std::env::set_var(LOOPBACK_ONLY_VAR, "1");
    }
    let err = Pool::builder(kernel("upper"))
        .workers(1)
        .launcher(["env"])
        .worker_program(wpool_bin())
        .listen("203.0.113.1:0".parse().unwrap())
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::NonLoopbackListen { addr } if addr == IpAddr::from([203, 0, 113, 1])), "{err:?}");
    assert!(!err.to_string().contains("--listen"), "the library names no flag: {err}");
    // Local pools and launched workers on loopback are not affected.
    let mut local = Pool::builder(kernel("upper")).workers(1).build().unwrap();
    assert_eq!(local.map(["a"]).unwrap()[0].as_deref().unwrap(), b"A");
    let mut launched = Pool::builder(kernel("upper"))
        .workers(1)
        .launcher(["env"])
        .worker_program(wpool_bin())
        .listen(loopback())
        .build()
        .unwrap();
    assert_eq!(launched.map(["b"]).unwrap()[0].as_deref().unwrap(), b"B");
}

// ---------------------------------------------------------------------------
// Slurm: srun inside a real allocation on two nodes.

#[test]
fn slurm_map_spreads_over_both_nodes_and_matches_the_local_run() {
    let Some(env) = slurm_cluster("slurm_map_spreads_over_both_nodes_and_matches_the_local_run") else { return };
    let kernel = kernel_path("upper");
    let input: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    let cmd = salloc_map(&env, &["-N2", "-n4"], &[], &kernel);
    let out = run(cmd, input.as_bytes());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(stdout(&out), local_output(&kernel, &input));
    let workers: Vec<Announced> = err.lines().filter_map(announced).collect();
    assert_eq!(workers.len(), 4, "SLURM_NTASKS workers: {err}");
    for node in ["node1", "node2"] {
        assert_eq!(workers.iter().filter(|w| w.node == node).count(), 2, "two workers on {node}: {err}");
    }
    // Each worker confined itself on its node like a local one.
    assert!(err.lines().filter(|l| announced(l).is_some()).all(|l| l.contains("seccomp=true")), "{err}");
    assert_no_worker_outlives_the_run();
}

#[test]
fn slurm_pipeline_stages_share_the_allocation() {
    let Some(env) = slurm_cluster("slurm_pipeline_stages_share_the_allocation") else { return };
    // Two stages of two workers in an allocation of two tasks: the stages'
    // steps must share the CPUs instead of waiting for each other.
    let (upper, echo) = (kernel_path("upper"), kernel_path("echo"));
    let input: String = (0..300).map(|i| format!("p {i}\n")).collect();
    let mut cmd = salloc(&env, &["-N2", "-n2"]);
    cmd.args(["pipeline", "-v", "--slurm", "--listen", "127.0.0.1", "--stage"]).arg(&upper);
    cmd.arg("--stage").arg(&echo);
    let out = run(cmd, input.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), local_output(&upper, &input));
    let err = stderr(&out);
    assert_eq!(err.lines().filter(|l| l.starts_with("wpool: stage 2: worker ")).count(), 2, "{err}");
}

#[test]
fn slurm_killing_a_remote_worker_mid_run_loses_nothing() {
    let Some(env) = slurm_cluster("slurm_killing_a_remote_worker_mid_run_loses_nothing") else { return };
    let kernel = kernel_path("hostile");
    let cmd = salloc_map(&env, &["-N2", "-n2"], &[], &kernel);
    kill_a_worker_mid_run(cmd, 2, &kernel, &slow_items(60), |workers| {
        workers.iter().position(|w| w.node == "node2").expect("a worker on node2")
    });
}

#[test]
fn slurm_host_killed_mid_run_leaves_no_remote_worker_and_no_step() {
    let Some(env) = slurm_cluster("slurm_host_killed_mid_run_leaves_no_remote_worker_and_no_step") else { return };
    // An allocation that outlives the host (as a batch job's would), so that
    // Slurm's own cleanup of the allocation cannot hide a leak.
    let alloc = Command::new("salloc")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["--no-shell", "-N2", "-n2"])
        .output()
        .unwrap();
    let text = stderr(&alloc);
    let job = text
        .split_whitespace()
        .last()
        .filter(|j| j.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no job id from salloc: {text}"))
        .to_string();
    let scontrol = |args: &[&str]| {
        let o = Command::new(args[0]).envs(env.iter().map(|(k, v)| (k, v))).args(&args[1..]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let nodes = scontrol(&["squeue", "-h", "-j", &job, "-o", "%N"]);
    let mut cmd = wpool();
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .env("SLURM_JOB_ID", &job)
        .env("SLURM_JOB_NODELIST", &nodes)
        .env("SLURM_TASKS_PER_NODE", "1(x2)")
        .env("SLURM_NTASKS", "2")
        .args(["map", "-v", "--slurm", "--listen", "127.0.0.1"])
        .arg(kernel_path("hostile"));
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut host = cmd.spawn().unwrap();
    let mut stdin = host.stdin.take().unwrap();
    stdin.write_all(slow_items(200).as_bytes()).unwrap();
    let mut err = BufReader::new(host.stderr.take().unwrap());
    let (workers, _) = read_announcements(&mut err, 2);
    assert_eq!(
        scontrol(&["squeue", "-h", "-s", "-j", &job]).lines().count(),
        2,
        "one step per worker while the run goes on"
    );
    host.kill().unwrap();
    host.wait().unwrap();
    let gone = eventually(Duration::from_secs(60), || {
        workers.iter().all(|w| !alive(w.pid)) && scontrol(&["squeue", "-h", "-s", "-j", &job]).is_empty()
    });
    let steps = scontrol(&["squeue", "-h", "-s", "-j", &job]);
    scontrol(&["scancel", &job]);
    assert!(gone, "remote workers or steps outlived the host: steps {steps:?}");
}

#[test]
fn slurm_bad_launch_is_a_clear_error_with_exit_2() {
    let Some(env) = slurm_cluster("slurm_bad_launch_is_a_clear_error_with_exit_2") else { return };
    let kernel = kernel_path("upper");
    // An srun that cannot start the step (no such node) fails the run at
    // start-up, with srun's own words.
    let mut cmd = salloc(&env, &["-N1", "-n1"]);
    cmd.args(["map", "-j", "2", "--listen", "127.0.0.1", "--launcher", "srun -N1 -n1 --exact -u -w node9"])
        .arg(&kernel);
    let out = run(cmd, b"x\n");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("workers fail at start-up") && err.contains("before the worker connected back"), "{err}");
    assert!(err.contains("node"), "srun's message is passed on: {err}");
    // --slurm outside an allocation.
    let mut cmd = wpool();
    cmd.env_remove("SLURM_JOB_ID").args(["map", "--slurm"]).arg(&kernel);
    let out = run(cmd, b"x\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not inside a Slurm allocation"), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------
// ssh, against a private sshd on 127.0.0.1.

#[test]
fn ssh_launcher_runs_workers_through_sshd_and_matches_the_local_run() {
    let Some(ssh) = ssh_launcher("ssh_launcher_runs_workers_through_sshd_and_matches_the_local_run") else { return };
    let kernel = kernel_path("upper");
    let input: String = (0..1000).map(|i| format!("ssh {i}\n")).collect();
    let mut cmd = wpool();
    cmd.args(["map", "-v", "-j", "2", "--listen", "127.0.0.1", "--launcher", &ssh]).arg(&kernel);
    let out = run(cmd, input.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), local_output(&kernel, &input));
    assert_eq!(stderr(&out).lines().filter_map(announced).count(), 2, "{}", stderr(&out));
}

#[test]
fn ssh_worker_killed_mid_run_loses_nothing_and_none_outlive_the_host() {
    let Some(ssh) = ssh_launcher("ssh_worker_killed_mid_run_loses_nothing_and_none_outlive_the_host") else { return };
    let kernel = kernel_path("hostile");
    let mut cmd = wpool();
    cmd.args(["map", "-v", "-j", "2", "--listen", "127.0.0.1", "--launcher", &ssh]).arg(&kernel);
    kill_a_worker_mid_run(cmd, 2, &kernel, &slow_items(40), |_| 0);
}

//! Fault matrix, group S: what a kernel can reach (deny by default) and how
//! worker processes are confined. The `probe` fixture kernel tries the
//! forbidden things from inside real wasm in real workers.

use wpool::Pool;
use wpool_tests::*;

fn probe(items: &[&str]) -> Vec<String> {
    let mut p = Pool::builder(kernel("probe")).workers(1).build().unwrap();
    p.map(items.iter().copied()).unwrap().into_iter().map(|r| String::from_utf8(r.unwrap()).unwrap()).collect()
}

#[test]
fn s01_no_preopens_the_host_filesystem_is_invisible() {
    let out = probe(&["read:/etc/passwd", "list:/", "list:.", "read:../../../../etc/hostname"]);
    for (i, o) in out.iter().enumerate() {
        assert!(o.starts_with("DENIED:"), "probe {i}: {o}");
    }
}

#[test]
fn s03_environment_and_arguments_are_empty() {
    std::env::set_var("WPOOL_TEST_SECRET", "do-not-leak");
    let out = probe(&["env", "args"]);
    assert_eq!(out, ["[]", "[]"]);
}

#[test]
fn s04_sockets_are_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let out = probe(&[&format!("connect:{addr}"), "bind:127.0.0.1:0"]);
    for o in &out {
        assert!(o.starts_with("DENIED:"), "{o}");
    }
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "nothing may have connected");
}

#[test]
fn s09_workers_dump_no_core_and_have_few_open_files() {
    let mut p = Pool::builder(kernel("echo")).workers(1).build().unwrap();
    let pid = p.worker_pids()[0];
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let row = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .rev()
            .skip(1)
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row("Max core file size"), "0 0", "{limits}");
    assert_eq!(row("Max open files"), "256 256", "{limits}");
}

#[test]
fn s06_workers_are_separate_processes_with_a_cleared_environment() {
    let mut p = Pool::builder(kernel("echo")).workers(2).build().unwrap();
    p.wait_ready().unwrap();
    assert_eq!(p.worker_pids().len(), 2);
    for pid in p.worker_pids() {
        assert_eq!(parent_of(pid), Some(std::process::id()));
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(String::from_utf8_lossy(&cmdline).contains("--wpool-worker"));
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(environ.is_empty(), "worker environment must be empty: {}", String::from_utf8_lossy(&environ));
    }
    // Their working directory is an empty private directory in this
    // process's private run directory (`$TMPDIR/wpool-PID-N`), gone with the
    // pool (and the run directory with the last pool).
    let pid = p.worker_pids()[0];
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert!(cwd.file_name().unwrap().to_string_lossy().starts_with("pool-"), "{}", cwd.display());
    let run_dir = cwd.parent().unwrap().to_path_buf();
    let run_name = run_dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(run_name.starts_with(&format!("wpool-{}-", std::process::id())), "{}", cwd.display());
    use std::os::unix::fs::PermissionsExt;
    for dir in [&cwd, &run_dir] {
        assert_eq!(std::fs::metadata(dir).unwrap().permissions().mode() & 0o777, 0o700, "{}", dir.display());
    }
    assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0);
    drop(p);
    assert!(!cwd.exists(), "removed with the pool");
}

#[test]
fn s12_item_isolation_gives_every_item_a_fresh_instance() {
    let mut cmd = wpool();
    cmd.args(["map", "-j", "1", "--isolate"]).arg(kernel_path("hostile"));
    let o = run(cmd, b"count\ncount\ncount\n");
    assert_eq!(stdout(&o), "1\n1\n1\n", "{}", stderr(&o));
    let mut cmd = wpool();
    cmd.args(["map", "-j", "1", "--chunksize", "3"]).arg(kernel_path("hostile"));
    let o = run(cmd, b"count\ncount\ncount\n");
    assert_eq!(stdout(&o), "1\n2\n3\n", "instances are reused by default");
}

fn cli_probe(args: &[&str], input: &[u8]) -> std::process::Output {
    let mut cmd = wpool();
    cmd.arg("map").args(args).arg(kernel_path("probe"));
    run(cmd, input)
}

#[test]
fn s02_allow_dir_shows_only_that_directory_read_only_unless_rw() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("f.txt"), "twelve bytes").unwrap();
    std::fs::write(root.path().join("outside.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(root.path().join("outside.txt"), data.join("link")).unwrap();
    let grant = format!("{}:/data", data.display());
    let input = b"read:/data/f.txt\nread:/data/../outside.txt\nread:/data/link\nwrite:/data/new.txt\nlist:/\n";
    let o = cli_probe(&["-j", "1", "--allow-dir", &grant], input);
    let lines: Vec<&str> = std::str::from_utf8(&o.stdout).unwrap().lines().collect();
    assert_eq!(lines[0], "ALLOWED: 12", "{}", stderr(&o));
    assert!(lines[1].starts_with("DENIED"), "`..` escape: {}", lines[1]);
    assert!(lines[2].starts_with("DENIED"), "symlink escape: {}", lines[2]);
    assert!(lines[3].starts_with("DENIED"), "read-only: {}", lines[3]);
    assert!(lines[4].starts_with("DENIED"), "nothing else: {}", lines[4]);
    assert!(!data.join("new.txt").exists());

    let rw = format!("{}:/data:rw", data.display());
    let o = cli_probe(&["-j", "1", "--allow-dir", &rw], b"write:/data/new.txt\n");
    assert_eq!(stdout(&o), "ALLOWED: ()\n", "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(data.join("new.txt")).unwrap(), "written by a kernel");

    let o = cli_probe(&["--allow-dir", "/no/such/dir"], b"env\n");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/no/such/dir"), "{}", stderr(&o));
}

#[test]
fn s03_env_grants_pass_exactly_the_named_variables() {
    let mut cmd = wpool();
    cmd.args(["map", "--env", "WPOOL_GRANTED", "--env", "EXPLICIT=value"]).arg(kernel_path("probe"));
    cmd.env("WPOOL_GRANTED", "from-host").env("WPOOL_NOT_GRANTED", "hidden");
    let o = run(cmd, b"env\n");
    assert_eq!(stdout(&o), "[(\"WPOOL_GRANTED\", \"from-host\"), (\"EXPLICIT\", \"value\")]\n", "{}", stderr(&o));
    let o = cli_probe(&["--env", "WPOOL_SURELY_UNSET_VARIABLE"], b"env\n");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("WPOOL_SURELY_UNSET_VARIABLE"), "{}", stderr(&o));
}

#[test]
fn s05_deterministic_clocks_and_random_give_identical_output_across_runs() {
    let input: Vec<u8> =
        (0..40).flat_map(|i| if i % 2 == 0 { b"time\n".to_vec() } else { b"random\n".to_vec() }).collect();
    let first = cli_probe(&["-j", "2", "--chunksize", "3", "--deterministic", "--seed", "5"], &input);
    let second = cli_probe(&["-j", "2", "--chunksize", "7", "--deterministic", "--seed", "5"], &input);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(first.stdout, second.stdout, "same input, same output, whatever the workers did");
    let text = stdout(&first);
    assert!(text.lines().next().unwrap().starts_with("wall=Ok(946684800) mono_step=1ms"), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("hash=")).collect::<std::collections::HashSet<_>>().len(), 1);
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert_eq!(stdout(&second).lines().count(), 40, "{}", stdout(&second));
    let other_seed = cli_probe(&["-j", "1", "--deterministic", "--seed", "6"], b"random\n");
    assert_eq!(other_seed.status.code(), Some(0), "{}", stderr(&other_seed));
    let other = stdout(&other_seed);
    assert!(other.starts_with("hash="), "{other}");
    assert_ne!(other.lines().next(), text.lines().nth(1), "the seed matters");
    // Granting the real clock gives real time.
    let real = cli_probe(&["--allow-clock"], b"time\n");
    assert_eq!(real.status.code(), Some(0), "{}", stderr(&real));
    assert!(stdout(&real).starts_with("wall=Ok("), "{}", stdout(&real));
    assert!(!stdout(&real).starts_with("wall=Ok(946684800)"), "{}", stdout(&real));
}

#[test]
fn s07_s08_confined_workers_are_denied_forbidden_syscalls_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let grants = wpool::Grants {
        dirs: vec![wpool::DirGrant { host: dir.path().to_path_buf(), guest: "/data".into(), writable: false }],
        ..wpool::Grants::default()
    };
    let mut p = Pool::builder(kernel("probe")).workers(1).grants(grants).probe_sandbox().build().unwrap();
    let status = p.sandbox_status().unwrap().clone();
    assert!(status.no_new_privs && status.seccomp, "{status}");
    assert_eq!(status.landlock, wpool::sandbox::Enforcement::Full, "{status}");
    // Inside the real worker, after confinement (the self-test hook):
    assert_eq!(status.probes, ["socket=EPERM", "execve=EPERM", "ptrace=EPERM", "open_etc_passwd=EACCES"]);
    // The granted directory still works through WASI under Landlock.
    std::fs::write(dir.path().join("f"), "abc").unwrap();
    assert_eq!(p.map(["read:/data/f"]).unwrap()[0].as_deref().unwrap(), b"ALLOWED: 3");
    let pid = p.worker_pids()[0];
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(proc_status.contains("NoNewPrivs:\t1"), "{proc_status}");
    assert!(proc_status.contains("Seccomp:\t2"), "filter mode: {proc_status}");
}

#[test]
fn s10_require_sandbox_runs_where_the_sandbox_is_complete_and_refuses_an_unconfined_worker() {
    let mut cmd = wpool();
    cmd.args(["inspect", "--sandbox"]).arg(kernel_path("echo"));
    let o = run(cmd, b"");
    let text = stdout(&o);
    assert!(text.contains("seccomp:      true") && text.contains("landlock:     Full"), "{text}");
    let mut cmd = wpool();
    cmd.args(["map", "--require-sandbox"]).arg(kernel_path("upper"));
    let o = run(cmd, b"ok\n");
    assert_eq!(stdout(&o), "OK\n", "{}", stderr(&o));
    // Where it is not complete, the run is refused before any item, naming
    // what is missing: a real worker process that does not confine itself
    // (the test-only evil-worker, which says so in its handshake).
    let launcher = shell_words::join(evil_launcher("honest", None));
    let mut cmd = wpool();
    cmd.args(["map", "-j", "1", "--require-sandbox", "--listen", "127.0.0.1", "--launcher", &launcher]);
    cmd.arg(kernel_path("echo"));
    let o = run(cmd, b"item\n");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(stdout(&o), "", "nothing ran");
    let err = stderr(&o);
    assert!(err.contains("sandbox is not fully available") && err.contains("landlock=Unavailable"), "{err}");
    // The same worker without --require-sandbox runs the item.
    let mut cmd = wpool();
    cmd.args(["map", "-j", "1", "--listen", "127.0.0.1", "--launcher", &launcher]);
    cmd.arg(kernel_path("echo"));
    let o = run(cmd, b"item\n");
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(0), "item\n"), "{}", stderr(&o));
}

#[test]
fn s11_a_tampered_artifact_cache_is_detected_and_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(kernel_path("upper")).unwrap();
    let k = wpool::Kernel::from_bytes_with_cache("upper", bytes.clone(), cache.path()).unwrap();
    drop(k);
    let artifact = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("the artifact was cached");
    let original = std::fs::read(&artifact).unwrap();
    // Flip bytes in the middle of the compiled code.
    let mut tampered = original.clone();
    let mid = tampered.len() / 2;
    for b in &mut tampered[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&artifact, &tampered).unwrap();
    let k = wpool::Kernel::from_bytes_with_cache("upper", bytes.clone(), cache.path()).unwrap();
    assert_eq!(std::fs::read(&artifact).unwrap(), original, "recompiled, not deserialized");
    // Tampered while pools run. Workers map the host's sealed copy of the
    // bytes it checked: a respawned worker runs the checked code.
    let mut p = Pool::builder(k.clone()).workers(1).build().unwrap();
    assert_eq!(p.map(["ok"]).unwrap()[0].as_deref().unwrap(), b"OK");
    let victim = p.worker_pids()[0];
    std::fs::write(&artifact, &tampered).unwrap();
    signal(victim, libc::SIGKILL);
    let out = p.map(["again"]).unwrap();
    assert_eq!(out[0].as_deref().unwrap(), b"AGAIN");
    assert_ne!(p.worker_pids()[0], victim, "a new worker ran it");
    assert_eq!(std::fs::read(&artifact).unwrap(), tampered);

    // Workers that read the file (no memfd to open) check the digest the
    // host recorded, and refuse to deserialize.
    std::fs::write(&artifact, &original).unwrap();
    let mut p = Pool::builder(k).workers(1).workers_read_artifact_file().build().unwrap();
    assert_eq!(p.map(["ok"]).unwrap()[0].as_deref().unwrap(), b"OK");
    let victim = p.worker_pids()[0];
    std::fs::write(&artifact, &tampered).unwrap();
    signal(victim, libc::SIGKILL);
    match p.map(["again"]) {
        Err(wpool::Error::WorkerStartup { last, .. }) => {
            assert!(last.contains("does not match the digest the host recorded"), "{last}")
        }
        other => panic!("expected WorkerStartup, got {other:?}"),
    }

    // A cache directory others can write to is refused outright.
    let open = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = wpool::Kernel::from_bytes_with_cache("upper", std::fs::read(kernel_path("upper")).unwrap(), open.path())
        .unwrap_err();
    assert!(err.to_string().contains("must be private"), "{err}");
}

#[test]
fn s06_workers_are_forked_by_the_pools_zygote_as_the_hosts_own_children() {
    let me = std::process::id();
    // Without `prestart`, a pool execs its workers: no zygote.
    let mut p = Pool::builder(kernel("echo")).workers(2).build().unwrap();
    p.wait_ready().unwrap();
    assert_eq!(zygotes_of(me), Vec::<u32>::new(), "children {:?}", children_of(me));
    for pid in p.worker_pids() {
        assert_eq!(parent_of(pid), Some(me));
    }
    drop(p);
    wpool::prestart().unwrap();
    let mut p = Pool::builder(kernel("echo")).workers(2).build().unwrap();
    p.wait_ready().unwrap();
    // One zygote, started early and adopted by the pool: no environment,
    // `/` as its directory, its own process group, its own command line.
    let zygotes = zygotes_of(me);
    assert_eq!(zygotes.len(), 1, "children {:?}", children_of(me));
    let zygote = zygotes[0];
    assert_eq!(cmdline(zygote), format!("wpool-zygote\0--wpool-zygote\0{me}\0").into_bytes());
    assert!(std::fs::read(format!("/proc/{zygote}/environ")).unwrap().is_empty());
    assert_eq!(std::fs::read_link(format!("/proc/{zygote}/cwd")).unwrap(), std::path::Path::new("/"));
    assert_eq!(process_group(zygote), zygote);
    // A process forks safely only while it has one thread.
    assert_eq!(std::fs::read_dir(format!("/proc/{zygote}/task")).unwrap().count(), 1);
    // Each worker it forked is this process's child (reaped here, its
    // parent-death signal tied to this process), reads as an exec'd
    // worker, leads its own group and holds no fd of the zygote's.
    for pid in p.worker_pids() {
        assert_ne!(pid, zygote);
        assert_eq!(parent_of(pid), Some(me));
        assert_eq!(cmdline(pid), format!("wpool-worker\0--wpool-worker\0{me}\0").into_bytes());
        assert_eq!(process_group(pid), pid);
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            assert!(!target.to_string_lossy().starts_with("socket:"), "worker {pid} holds {}", target.display());
        }
    }
    assert_eq!(p.map([b"x".to_vec()]).unwrap()[0].as_deref().unwrap(), b"x");
    drop(p);
    // Gone and reaped with the pool.
    assert!(!std::path::Path::new(&format!("/proc/{zygote}")).exists(), "zygote {zygote} outlived its pool");
}

fn process_group(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split_whitespace().nth(2).unwrap().parse().unwrap()
}

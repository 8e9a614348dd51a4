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

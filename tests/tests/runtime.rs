//! Fault matrix, group R: runtime faults, with real worker processes running
//! the real `hostile` fixture kernel. Plus the correctness properties of
//! map / imap / imap_unordered.

use std::cell::Cell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use wpool::{Chunksize, Crash, ItemIndex, Limits, Pool, TaskErrorKind};
use wpool_tests::*;

fn pool(name: &str, workers: usize) -> Pool {
    Pool::builder(kernel(name)).workers(workers).build().expect("pool starts")
}

fn pool_with(name: &str, workers: usize, limits: Limits) -> Pool {
    Pool::builder(kernel(name)).workers(workers).limits(limits).build().expect("pool starts")
}

#[test]
fn r01_kernel_err_fails_that_item_with_its_message() {
    let mut p = pool("hostile", 2);
    let out = p.map(["a", "err:bad input", "b"]).unwrap();
    assert_eq!(out[0].as_deref().unwrap(), b"a");
    assert_eq!(out[2].as_deref().unwrap(), b"b");
    let e = out[1].as_ref().unwrap_err();
    assert_eq!(e.index, ItemIndex(1));
    assert_eq!(e.kind, TaskErrorKind::Kernel);
    assert_eq!(e.message, "bad input");
    assert_eq!(e.attempts, 1);
    assert!(e.worker.is_some());

    // The CLI: the others are printed, exit 1, one line on stderr.
    let mut cmd = wpool();
    cmd.args(["map", "-j", "2"]).arg(kernel_path("hostile"));
    let o = run(cmd, b"a\nerr:bad input\nb\n");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stdout(&o), "a\nb\n");
    let err = stderr(&o);
    assert!(err.contains("item 1 (<stdin>:2): kernel: bad input (worker "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn r02_panic_and_unreachable_are_traps_and_the_worker_goes_on() {
    let mut p = pool("hostile", 1);
    let pids = p.worker_pids();
    let out = p.map(["panic:boom", "x", "unreachable", "y"]).unwrap();
    let panic = out[0].as_ref().unwrap_err();
    assert_eq!(panic.kind, TaskErrorKind::Trap);
    assert!(panic.message.contains("unreachable"), "{}", panic.message);
    // The wasm backtrace names the kernel's functions.
    assert!(panic.message.contains("hostile.wasm!map"), "{}", panic.message);
    // The panic message itself comes through the captured stderr.
    let stderr = String::from_utf8_lossy(&panic.stderr);
    assert!(stderr.contains("panicked at") && stderr.contains("boom"), "{stderr}");
    let unreachable = out[2].as_ref().unwrap_err();
    assert_eq!(unreachable.kind, TaskErrorKind::Trap);
    assert_eq!(out[1].as_deref().unwrap(), b"x");
    assert_eq!(out[3].as_deref().unwrap(), b"y");
    assert_eq!(p.worker_pids(), pids, "a trap must not cost the worker process");
    assert_eq!(p.stats().worker_deaths, 0);
}

#[test]
fn r03_infinite_loop_times_out_and_the_worker_survives() {
    let limits = Limits { timeout: Some(Duration::from_millis(200)), ..Limits::default() };
    let mut p = pool_with("hostile", 1, limits);
    p.wait_ready().unwrap();
    assert_eq!(p.map(["warm"]).unwrap()[0].as_deref().unwrap(), b"warm");
    let pids = p.worker_pids();
    let start = Instant::now();
    let out = p.map(["spin"]).unwrap();
    let elapsed = start.elapsed();
    let e = out[0].as_ref().unwrap_err();
    assert_eq!(e.kind, TaskErrorKind::Timeout, "{e}");
    assert_eq!(p.worker_pids(), pids, "epoch interruption, not a kill");
    assert_eq!(p.map(["after"]).unwrap()[0].as_deref().unwrap(), b"after");
    // Fires on time: not before the timeout, and well before the hard
    // deadline (timeout + 1 s + timeout/2 = 1.3 s), which is what would end
    // the item if the epoch ticker were missing. The 900 ms of slack is for
    // a loaded 2-core machine; the precise latency is in the `limits` bench.
    assert!(elapsed >= Duration::from_millis(200), "fired early: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(1100), "fired late (no epoch tick?): {elapsed:?}");
}

/// A timeout never stops an item before it. The epoch ticker runs on for up
/// to a tick after the worker goes idle: an item that arrives meanwhile
/// starts anywhere between two ticks, and that first part-tick must not
/// count. Each item here arrives a little later after the previous one, and
/// the worker's own measure of its time in the kernel (`kernel_time`, exact
/// for an item that came back alone) is at least the timeout.
#[test]
fn r03_a_timeout_never_fires_before_its_time() {
    let timeout = Duration::from_millis(50);
    let limits = Limits { timeout: Some(timeout), ..Limits::default() };
    let mut p = pool_with("hostile", 1, limits);
    for pause_us in [0, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500] {
        std::thread::sleep(Duration::from_micros(pause_us));
        let mut it = p.imap(["spin"]);
        let (result, info) = it.next_with_info().unwrap().unwrap();
        assert_eq!(result.unwrap_err().kind, TaskErrorKind::Timeout);
        let ran = info.kernel_time.expect("the worker measured it");
        assert!(ran >= timeout, "stopped after {ran:?}, before its {timeout:?} timeout (pause {pause_us} µs)");
    }
}

#[test]
fn r05_memory_bomb_is_memory_limit_and_the_worker_survives() {
    let limits = Limits { memory: Some(64 << 20), ..Limits::default() };
    let mut p = pool_with("hostile", 1, limits);
    let pids = p.worker_pids();
    let out = p.map(["oom", "alloc:8", "oom"]).unwrap();
    for i in [0, 2] {
        let e = out[i].as_ref().unwrap_err();
        assert_eq!(e.kind, TaskErrorKind::MemoryLimit, "{e}");
        assert!(e.message.contains("64 MiB"), "{}", e.message);
    }
    assert_eq!(out[1].as_deref().unwrap(), b"8388608");
    assert_eq!(p.worker_pids(), pids);
}

#[test]
fn r06_unbounded_recursion_is_stack_overflow_not_a_crash() {
    let mut p = pool("hostile", 1);
    let pids = p.worker_pids();
    let out = p.map(["recurse", "fine"]).unwrap();
    assert_eq!(out[0].as_ref().unwrap_err().kind, TaskErrorKind::StackOverflow);
    assert_eq!(out[1].as_deref().unwrap(), b"fine");
    assert_eq!(p.worker_pids(), pids);
    assert_eq!(p.stats().worker_deaths, 0);
}

#[test]
fn r07_fuel_exhaustion_is_out_of_fuel() {
    let limits = Limits { fuel: Some(5_000_000), ..Limits::default() };
    let mut p = pool_with("hostile", 1, limits);
    let out = p.map(["spin:100", "cheap"]).unwrap();
    assert_eq!(out[0].as_ref().unwrap_err().kind, TaskErrorKind::OutOfFuel);
    assert_eq!(out[1].as_deref().unwrap(), b"cheap", "fuel is per item");
}

#[test]
fn r08_guest_exit_is_kernel_exit_for_that_item_only() {
    let mut p = pool("hostile", 1);
    let pids = p.worker_pids();
    let out = p.map(["exit:3", "next", "exit:0"]).unwrap();
    // WASI 0.2 carries only success or failure: exit(3) arrives as 1.
    assert_eq!(out[0].as_ref().unwrap_err().kind, TaskErrorKind::KernelExit(1));
    assert_eq!(out[1].as_deref().unwrap(), b"next");
    // exit(0) is not a result either.
    assert_eq!(out[2].as_ref().unwrap_err().kind, TaskErrorKind::KernelExit(0));
    assert_eq!(p.worker_pids(), pids);
}

#[test]
fn r09_worker_sigkilled_mid_item_is_retried() {
    let mut p = Pool::builder(kernel("hostile")).workers(2).chunksize(Chunksize::Fixed(1)).build().unwrap();
    p.wait_ready().unwrap();
    let victim = p.worker_pids()[0];
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        signal(victim, libc::SIGKILL);
    });
    let items: Vec<String> = (0..4).map(|i| format!("spin:6000:{i}")).collect();
    let out = p.map(items.clone()).unwrap();
    killer.join().unwrap();
    for (i, r) in out.iter().enumerate() {
        assert_eq!(r.as_deref().unwrap(), items[i].as_bytes(), "item {i}: {r:?}");
    }
    let stats = p.stats();
    assert_eq!(stats.worker_deaths, 1);
    assert!(stats.retried_items >= 1, "{stats:?}");
    p.wait_ready().unwrap();
    assert_eq!(p.worker_pids().len(), 2, "back to two workers");
    assert!(!p.worker_pids().contains(&victim));

    // With no retries the item fails, typed, with its attempt count and worker.
    let mut p = Pool::builder(kernel("hostile")).workers(1).retries(0).build().unwrap();
    let victim = p.worker_pids()[0];
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        signal(victim, libc::SIGKILL);
    });
    let out = p.map(["spin:20000"]).unwrap();
    killer.join().unwrap();
    let e = out[0].as_ref().unwrap_err();
    assert_eq!(e.kind, TaskErrorKind::WorkerCrashed(Crash::Signaled { signal: libc::SIGKILL }), "{e}");
    assert_eq!(e.attempts, 1);

    // One retry: the item survives the first kill, runs again alone on the
    // replacement, and fails typed when that one is killed too: 2 attempts.
    // Every worker is killed 300 ms after it is seen until the run ends (a
    // replacement killed before it got the item costs the item no attempt).
    let me = std::process::id();
    let others = workers_of(me); // the earlier pools' workers: not to be killed
    let mut p = Pool::builder(kernel("hostile")).workers(1).retries(1).build().unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut killed = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(300));
                let mut mine = workers_of(me).into_iter().filter(|w| !others.contains(w) && !killed.contains(w));
                if let Some(w) = mine.find(|w| alive(*w)) {
                    signal(w, libc::SIGKILL);
                    killed.push(w);
                }
            }
            killed
        })
    };
    let out = p.map(["spin:20000"]).unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let killed = killer.join().unwrap();
    assert!(killed.len() >= 2, "{killed:?}");
    let e = out[0].as_ref().unwrap_err();
    assert_eq!(e.kind, TaskErrorKind::WorkerCrashed(Crash::Signaled { signal: libc::SIGKILL }), "{e}");
    assert_eq!(e.attempts, 2, "{e}");
    assert!(p.stats().worker_deaths >= 2, "{:?}", p.stats());
}

#[test]
fn r09_a_worker_killed_holding_several_items_blames_none_of_them() {
    // Several unanswered items on the worker that died: any of them may have
    // been running, so none is blamed, even with no retries left; each runs
    // again alone on the replacement.
    let mut p = Pool::builder(kernel("hostile")).workers(1).retries(0).chunksize(Chunksize::Fixed(4)).build().unwrap();
    let victim = p.worker_pids()[0];
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        signal(victim, libc::SIGKILL);
    });
    let items: Vec<String> = (0..4).map(|i| format!("spin:1000:{i}")).collect();
    let out = p.map(items.clone()).unwrap();
    killer.join().unwrap();
    for (i, r) in out.iter().enumerate() {
        assert_eq!(r.as_deref().unwrap(), items[i].as_bytes(), "item {i}: {r:?}");
    }
    let stats = p.stats();
    assert_eq!(stats.worker_deaths, 1, "{stats:?}");
    assert!(stats.retried_items >= 2, "{stats:?}");
}

#[test]
fn r10_poison_item_fails_as_worker_crashed_and_the_rest_complete() {
    let mut p = Pool::builder(kernel("hostile"))
        .workers(2)
        .retries(2)
        .chunksize(Chunksize::Fixed(4))
        .crash_worker_on("poison")
        .build()
        .unwrap();
    let items: Vec<String> = (0..40).map(|i| if i == 17 { "poison".into() } else { format!("ok{i}") }).collect();
    let out = p.map(items.clone()).unwrap();
    for (i, r) in out.iter().enumerate() {
        if i == 17 {
            let e = r.as_ref().unwrap_err();
            assert_eq!(e.kind, TaskErrorKind::WorkerCrashed(Crash::Signaled { signal: libc::SIGABRT }), "{e}");
            assert_eq!(e.attempts, 3, "first try plus two retries");
            assert_eq!(e.index, ItemIndex(17));
        } else {
            assert_eq!(r.as_deref().unwrap(), items[i].as_bytes());
        }
    }
    assert_eq!(p.stats().worker_deaths, 3);
}

#[test]
fn r11_workers_dying_at_startup_fail_fast_without_a_fork_storm() {
    let start = Instant::now();
    let err = Pool::builder(kernel("echo")).workers(2).launcher(["false"]).listen(loopback()).build().unwrap_err();
    match &err {
        wpool::Error::WorkerStartup { failures, last } => {
            assert_eq!(*failures, 3, "stops at the bound, no storm");
            assert!(last.contains("exited with status 1"), "{last}");
        }
        other => panic!("expected WorkerStartup, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(60));

    // A launcher that cannot be executed at all is a spawn error naming it.
    let err = Pool::builder(kernel("echo"))
        .workers(1)
        .launcher(["/nonexistent/launcher"])
        .listen(loopback())
        .build()
        .unwrap_err();
    assert!(matches!(err, wpool::Error::Spawn { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/launcher"), "{err}");
}

#[test]
fn r12_host_sigkilled_mid_run_leaves_no_orphans() {
    let lines = vec!["spin:100000".to_string(); 8];
    let (mut host, _stdin) =
        spawn_map_with_open_stdin(&["-j", "2", "--chunksize", "1"], &kernel_path("hostile"), &lines);
    let host_pid = host.id();
    assert!(eventually(Duration::from_secs(30), || workers_of(host_pid).iter().filter(|p| alive(**p)).count() == 2));
    // Its zygote too: every child of the host.
    let workers = children_of(host_pid);
    assert_eq!(zygotes_of(host_pid).len(), 1, "{workers:?}");
    signal(host_pid, libc::SIGKILL);
    let _ = host.wait();
    assert!(
        eventually(Duration::from_secs(1), || workers.iter().all(|w| !alive(*w))),
        "workers {workers:?} outlived their host by more than 1 s"
    );
}

#[test]
fn r13_ctrl_c_flushes_results_so_far_in_order_and_exits_130() {
    use std::io::{BufRead, Read};
    let mut lines: Vec<String> = (0..4).map(|i| format!("fast{i}")).collect();
    lines.push("spin".into());
    lines.extend((5..8).map(|i| format!("late{i}")));
    let (mut host, stdin) =
        spawn_map_with_open_stdin(&["-j", "2", "--chunksize", "1"], &kernel_path("hostile"), &lines);
    let host_pid = host.id();
    let mut out = std::io::BufReader::new(host.stdout.take().unwrap());
    // Wait until the four results before the stuck item are out, then Ctrl-C.
    let mut seen = String::new();
    for _ in 0..4 {
        out.read_line(&mut seen).unwrap();
    }
    assert_eq!(seen, "fast0\nfast1\nfast2\nfast3\n");
    let workers = children_of(host_pid);
    assert!(!workers.is_empty());
    signal(host_pid, libc::SIGINT);
    let guard = Instant::now();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = host.wait().unwrap();
    drop(stdin);
    assert!(guard.elapsed() < Duration::from_secs(30));
    let mut err = String::new();
    host.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert_eq!(rest, "", "nothing after the stuck item: the later results cannot come out in order");
    assert!(err.contains("interrupted"), "{err}");
    assert!(workers.iter().all(|w| !alive(*w)), "workers terminated");
}

#[test]
fn r14_dropping_imap_early_or_the_pool_leaves_no_worker() {
    let mut p = pool("hostile", 2);
    let first_pids = p.worker_pids();
    {
        let mut it = p.imap(std::iter::repeat("spin:20"));
        assert_eq!(it.next().unwrap().unwrap().unwrap(), b"spin:20");
        // Dropped here with work in flight on an endless input.
    }
    // The pool is still usable afterwards.
    let out = p.map(["a", "b", "c"]).unwrap();
    assert_eq!(
        out.iter().map(|r| r.as_deref().unwrap().to_vec()).collect::<Vec<_>>(),
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );
    let second_pids = p.worker_pids();
    drop(p);
    for pid in first_pids.iter().chain(&second_pids) {
        assert!(!alive(*pid), "worker {pid} survived its pool");
    }
}

#[test]
fn r16_kernel_stderr_is_captured_bounded_and_never_on_stdout() {
    let mut p = pool("hostile", 1);
    let out = p.map(["stderr:100000"]).unwrap();
    let e = out[0].as_ref().unwrap_err();
    assert_eq!(e.kind, TaskErrorKind::Trap);
    assert!(e.stderr.len() <= 4096, "bounded tail, got {} bytes", e.stderr.len());
    let tail = String::from_utf8_lossy(&e.stderr);
    assert!(tail.contains("diagnostic line 99999 of 100000"), "the tail is the end: {tail}");
    assert!(tail.contains("after 100000 lines of stderr"), "{tail}");

    let mut cmd = wpool();
    cmd.args(["map", "--json"]).arg(kernel_path("hostile"));
    let o = run(cmd, b"stderr:1000\nok\n");
    let lines: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["error"]["kind"], "trap");
    assert!(lines[0]["error"]["stderr"].as_str().unwrap().contains("diagnostic line 999 of 1000"));
    assert_eq!(lines[1]["ok"]["text"], "ok");
    assert!(!stdout(&o).contains("diagnostic line 5 "), "guest stderr never reaches stdout as output");
}

#[test]
fn r18_legal_large_memory_under_the_cap_succeeds() {
    let limits = Limits { memory: Some(256 << 20), ..Limits::default() };
    let mut p = pool_with("hostile", 1, limits);
    let out = p.map(["alloc:200"]).unwrap();
    assert_eq!(out[0].as_deref().unwrap(), (200u64 << 20).to_string().as_bytes());
}

/// How `memory_limit` messages write a size.
fn size_text(n: u64) -> String {
    match n {
        n if n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
    }
}

#[test]
fn f5_an_item_over_128_mib_passes_under_a_larger_max_item_size() {
    let limits = Limits { max_item_size: 1 << 30, ..Limits::default() };
    let mut p = pool_with("upper", 1, limits);
    let item = vec![b'a'; 200 << 20];
    let out = p.map([item]).unwrap();
    let result = out.into_iter().next().unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result.len(), 200 << 20);
    assert!(result.iter().all(|&b| b == b'A'));
}

#[test]
fn f5_a_result_over_the_cap_and_over_128_mib_is_item_too_large_not_a_trap() {
    let mut p = pool("hostile", 1);
    let pids = p.worker_pids();
    let out = p.map(["result:200", "result:1"]).unwrap();
    let e = out[0].as_ref().unwrap_err();
    assert_eq!(e.kind, TaskErrorKind::ItemTooLarge, "{e}");
    assert!(e.message.contains(&format!("{}-byte cap", Limits::default().max_item_size)), "{}", e.message);
    assert_eq!(out[1].as_ref().unwrap().len(), 1 << 20);
    assert_eq!(p.worker_pids(), pids);
}

#[test]
fn f6_without_a_memory_cap_an_allocation_failure_is_memory_limit_naming_the_default_cap() {
    let mut p = pool("hostile", 1);
    let pids = p.worker_pids();
    let out = p.map(["oom", "alloc:8"]).unwrap();
    let e = out[0].as_ref().unwrap_err();
    assert_eq!(e.kind, TaskErrorKind::MemoryLimit, "{e}");
    let cap = Limits::default_memory(1);
    assert!(e.message.starts_with(&format!("memory limit of {} exceeded: ", size_text(cap))), "{}", e.message);
    assert!(e.message.contains("the kernel asked for ") && e.message.contains("the default cap"), "{}", e.message);
    assert_eq!(out[1].as_deref().unwrap(), b"8388608");
    assert_eq!(p.worker_pids(), pids);
    // A share of RAM per worker: more workers, no larger a cap each.
    assert!((256 << 20..=4 << 30).contains(&cap), "{cap}");
    assert!(Limits::default_memory(64) <= cap);

    // The CLI documents the default and reports it the same way.
    let mut cmd = wpool();
    cmd.args(["map", "--help"]);
    let help = stdout(&run(cmd, b""));
    assert!(help.contains("[default: half of this machine's RAM"), "{help}");
    let mut cmd = wpool();
    cmd.args(["map", "-j", "1"]).arg(kernel_path("hostile"));
    let o = run(cmd, b"oom\n");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("memory_limit: memory limit of {} exceeded", size_text(cap))),
        "{}",
        stderr(&o)
    );
}

#[test]
fn f7_shadow_stack_overflow_is_stack_overflow() {
    for flavour in ["wasip2", "unknown"] {
        let kernel = wpool::Kernel::from_file(kernel_path_of(flavour, "hostile")).unwrap();
        let mut p = Pool::builder(kernel).workers(1).build().unwrap();
        let pids = p.worker_pids();
        let out = p.map(["recurse-array", "fine", "recurse"]).unwrap();
        let e = out[0].as_ref().unwrap_err();
        assert_eq!(e.kind, TaskErrorKind::StackOverflow, "{flavour}: {e}");
        assert!(e.message.contains("shadow stack overflow"), "{}", e.message);
        assert!(e.message.contains("`hostile.wasm!hostile::recurse_array` recursed"), "{}", e.message);
        assert!(e.message.contains("-zstack-size="), "the hint says how to get a larger stack: {}", e.message);
        assert_eq!(out[1].as_deref().unwrap(), b"fine");
        // Recursion on the wasm stack itself is told apart.
        let e = out[2].as_ref().unwrap_err();
        assert_eq!((&e.kind, e.message.as_str()), (&TaskErrorKind::StackOverflow, "wasm stack overflow"));
        assert_eq!(p.worker_pids(), pids);
    }
    // An out-of-bounds access outside a recursion is still a trap.
    let out = pool("hostile", 1).map(["oob"]).unwrap();
    let e = out[0].as_ref().unwrap_err();
    assert_eq!(e.kind, TaskErrorKind::Trap, "{e}");
    assert!(e.message.contains("out of bounds memory access"), "{}", e.message);
}

fn upper_reference(items: &[String]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.to_ascii_uppercase().into_bytes()).collect()
}

#[test]
fn map_imap_and_unordered_equal_a_serial_reference_for_several_chunk_sizes() {
    let items: Vec<String> = (0..10_000).map(|i| format!("item-{i}-{}", "x".repeat(i % 13))).collect();
    let reference = upper_reference(&items);
    for chunksize in [Chunksize::Fixed(1), Chunksize::Fixed(7), Chunksize::Fixed(256), Chunksize::Auto] {
        let mut p = Pool::builder(kernel("upper")).workers(2).chunksize(chunksize).build().unwrap();
        let mapped: Vec<Vec<u8>> = p.map(items.iter().cloned()).unwrap().into_iter().map(Result::unwrap).collect();
        assert_eq!(mapped, reference, "map, {chunksize:?}");
        let lazy: Vec<Vec<u8>> = p.imap(items.iter().cloned()).map(|r| r.unwrap().unwrap()).collect();
        assert_eq!(lazy, reference, "imap, {chunksize:?}");
        let mut seen = HashSet::new();
        let mut unordered = vec![Vec::new(); items.len()];
        for r in p.imap_unordered(items.iter().cloned()) {
            let (index, result) = r.unwrap();
            assert!(seen.insert(index), "index {index} twice");
            unordered[index.get() as usize] = result.unwrap();
        }
        assert_eq!(seen.len(), items.len(), "unordered, {chunksize:?}: every index once");
        assert_eq!(unordered, reference, "unordered, {chunksize:?}");
    }
}

#[test]
fn imap_of_a_million_items_is_lazy_with_flat_memory() {
    let mut p = pool("echo", 2);
    let pulled = Rc::new(Cell::new(0u64));
    let counter = Rc::clone(&pulled);
    let input = (0..1_000_000u64).map(move |i| {
        counter.set(counter.get() + 1);
        i.to_string()
    });
    let rss_before = rss_kib(std::process::id());
    let mut it = p.imap(input);
    assert_eq!(it.next().unwrap().unwrap().unwrap(), b"0");
    drop(it);
    assert!(pulled.get() < 10_000, "input must be pulled lazily, {} items were", pulled.get());
    let grown = rss_kib(std::process::id()).saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");

    // Streaming the whole million keeps memory flat too.
    let rss_before = rss_kib(std::process::id());
    let mut count = 0u64;
    for r in p.imap((0..1_000_000u64).map(|i| i.to_string())) {
        let bytes = r.unwrap().unwrap();
        if count.is_multiple_of(250_000) {
            assert_eq!(bytes, count.to_string().as_bytes());
        }
        count += 1;
    }
    assert_eq!(count, 1_000_000);
    let grown = rss_kib(std::process::id()).saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB over a million items");
}

#[test]
fn import_free_components_from_wasm32_unknown_unknown_run_too() {
    let k = wpool::Kernel::from_file(kernel_path_of("unknown", "upper")).unwrap();
    assert!(k.info().imports.is_empty(), "{:?}", k.info().imports);
    let mut p = Pool::builder(k).workers(1).build().unwrap();
    assert_eq!(p.map(["abc"]).unwrap()[0].as_deref().unwrap(), b"ABC");
    let wasi = wpool::Kernel::from_file(kernel_path_of("wasip2", "upper")).unwrap();
    assert!(wasi.info().imports.iter().any(|i| i.starts_with("wasi:")), "{:?}", wasi.info().imports);
}

#[test]
fn example_kernels_compute_what_they_promise() {
    let mut primes = pool("primes", 2);
    let out = primes.map(["10", "100", "1000", "abc"]).unwrap();
    assert_eq!(out[0].as_deref().unwrap(), b"4");
    assert_eq!(out[1].as_deref().unwrap(), b"25");
    assert_eq!(out[2].as_deref().unwrap(), b"168");
    assert_eq!(out[3].as_ref().unwrap_err().kind, TaskErrorKind::Kernel);
    let mut wc = pool("wordcount", 1);
    assert_eq!(wc.map(["the cat and The dog"]).unwrap()[0].as_deref().unwrap(), b"and\t1\ncat\t1\ndog\t1\nthe\t2\n");
    let mut sha = pool("sha256", 1);
    assert_eq!(
        sha.map(["abc"]).unwrap()[0].as_deref().unwrap(),
        b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn python_kernels_from_componentize_py_load_and_run() {
    // 18 MB, imports WASI @0.2.9, pre-initialised interpreter.
    let k = wpool::Kernel::from_file(kernel_path_of("python", "reverse")).unwrap();
    assert!(k.info().imports.iter().any(|i| i.contains("@0.2.9")), "{:?}", k.info().imports);
    let mut p = Pool::builder(k).workers(2).build().unwrap();
    let out = p.map(["hello big world", "raise", "after the trap"]).unwrap();
    assert_eq!(out[0].as_deref().unwrap(), b"world big hello");
    // An uncaught Python exception aborts the instance: a trap, then a fresh
    // instance for the next item.
    assert_eq!(out[1].as_ref().unwrap_err().kind, TaskErrorKind::Trap);
    assert_eq!(out[2].as_deref().unwrap(), b"trap the after");
    let bad = p.map([&b"\xff"[..]]).unwrap();
    let e = bad[0].as_ref().unwrap_err();
    assert_eq!(e.kind, TaskErrorKind::Kernel);
    assert!(e.message.starts_with("not UTF-8"), "{}", e.message);
}

#[test]
fn project_wit_is_the_shared_contract() {
    let ours = std::fs::read_to_string(root().join("wit/wpool.wit")).unwrap();
    let shared = root().join("../shared/wit/wpool.wit");
    if shared.exists() {
        assert_eq!(ours, std::fs::read_to_string(shared).unwrap(), "wit/wpool.wit must stay a copy of the contract");
    }
    for world in [
        "world kernel {",
        "world kernel-with-init {",
        "world reducer {",
        "export %map: func(input: list<u8>) -> result<list<u8>, string>;",
    ] {
        assert!(ours.contains(world), "{world}");
    }
}

#[test]
fn a_kernel_built_with_plain_wit_bindgen_against_the_contract_runs() {
    for flavour in ["wasip2", "unknown"] {
        let mut p = Pool::builder(wpool::Kernel::from_file(kernel_path_of(flavour, "plain")).unwrap())
            .workers(1)
            .build()
            .unwrap();
        assert_eq!(p.map(["abc"]).unwrap()[0].as_deref().unwrap(), b"cba", "{flavour}");
    }
}

#[test]
fn items_at_the_size_cap_travel_with_small_ones_and_errors_are_bounded() {
    let limits = Limits { max_item_size: 2 << 20, ..Limits::default() };
    let mut p =
        Pool::builder(kernel("hostile")).workers(1).chunksize(Chunksize::Fixed(1000)).limits(limits).build().unwrap();
    let mut items: Vec<Vec<u8>> = (0..100).map(|i| vec![b'a' + (i % 26) as u8; 20_000]).collect();
    items.push(vec![b'z'; 2 << 20]);
    items.push(vec![b'z'; (2 << 20) + 1]);
    let mut huge_err = b"err:".to_vec();
    huge_err.extend(vec![b'e'; 1 << 20]);
    items.push(huge_err);
    let out = p.map(items.clone()).unwrap();
    for i in 0..=100 {
        assert_eq!(out[i].as_deref().unwrap(), &items[i][..], "item {i}");
    }
    assert_eq!(out[101].as_ref().unwrap_err().kind, TaskErrorKind::ItemTooLarge);
    let e = out[102].as_ref().unwrap_err();
    assert_eq!(e.kind, TaskErrorKind::Kernel);
    assert!(e.message.len() < 70_000 && e.message.ends_with("[…cut]"), "{}", e.message.len());
    assert_eq!(p.stats().worker_deaths, 0);
}

#[test]
fn results_around_the_large_result_size_come_back_whole_and_in_order() {
    // Results of 64 KiB and more leave a worker as frames of their own
    // (`LargeResult`), the others in batches: chunks mixing both with
    // kernel errors and traps come back whole, in order, exactly once.
    let mut items: Vec<Vec<u8>> = Vec::new();
    for (i, n) in [0, 1, 65_535, 65_536, 65_537, 3, 1 << 20, 200_000, 7].into_iter().enumerate() {
        items.push(vec![b'A' + i as u8; n]);
        items.push(format!("err:after {n}").into_bytes());
        items.push(format!("result:{}", i % 2).into_bytes()); // 0 or 1 MiB
    }
    items.push(b"panic:last".to_vec());
    let run = |p: &mut Pool| {
        let ordered = p.map(items.clone()).unwrap();
        let mut unordered: Vec<_> = p.imap_unordered(items.clone()).map(Result::unwrap).collect();
        unordered.sort_by_key(|(i, _)| i.get());
        (ordered, unordered.into_iter().map(|(_, r)| r).collect::<Vec<_>>())
    };
    for chunk in [1, 5, 100] {
        let mut p = Pool::builder(kernel("hostile")).workers(2).chunksize(Chunksize::Fixed(chunk)).build().unwrap();
        let (ordered, unordered) = run(&mut p);
        for out in [&ordered, &unordered] {
            assert_eq!(out.len(), items.len());
            for (i, (r, item)) in out.iter().zip(&items).enumerate() {
                match i % 3 {
                    _ if i == items.len() - 1 => assert_eq!(r.as_ref().unwrap_err().kind, TaskErrorKind::Trap),
                    0 => assert_eq!(r.as_deref().unwrap(), &item[..], "item {i}, chunksize {chunk}"),
                    1 => assert_eq!(r.as_ref().unwrap_err().kind, TaskErrorKind::Kernel, "item {i}"),
                    _ => assert_eq!(r.as_ref().unwrap().len(), (i / 3 % 2) << 20, "item {i}"),
                }
            }
        }
        assert_eq!(p.stats().worker_deaths, 0);
    }
}

#[test]
fn r04_a_worker_that_stops_answering_is_killed_at_the_hard_deadline() {
    let limits = Limits { timeout: Some(Duration::from_secs(2)), ..Limits::default() };
    let mut p =
        Pool::builder(kernel("hostile")).workers(1).chunksize(Chunksize::Fixed(1)).limits(limits).build().unwrap();
    let stuck = p.worker_pids()[0];
    // Stopped by a signal, the worker cannot even be interrupted by its own
    // epoch ticker: only the host's deadline can get the item back. The item
    // (about 1 s of work) is well under the timeout, so only the stop makes
    // it late, however slow this machine is.
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        signal(stuck, libc::SIGSTOP);
    });
    // Alone on its worker, the item is the only one the stop can be blamed
    // on (with several items in flight, all are first retried alone).
    let out = p.map(["spin:3000"]).unwrap();
    stopper.join().unwrap();
    let e = out[0].as_ref().unwrap_err();
    assert_eq!(e.kind, TaskErrorKind::Timeout, "{e}");
    assert!(e.message.contains("stopped answering"), "{}", e.message);
    let out = p.map(["after"]).unwrap();
    assert_eq!(out[0].as_deref().unwrap(), b"after", "the next item runs on a respawned worker");
    assert!(!alive(stuck));
    assert!(!p.worker_pids().contains(&stuck));
}

/// Runs `cmd` (a `wpool` CLI) while SIGKILLing one of its workers, picked
/// at random, every `every`; checks that it succeeds after at least three
/// kills and prints exactly `expected`.
fn assert_survives_chaos(mut cmd: std::process::Command, every: Duration, expected: &[u8]) {
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let host = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut kills = 0u32;
            let mut rng: u64 = 0x2545f4914f6cdd1d;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(every);
                let workers: Vec<u32> = children_of(host).into_iter().filter(|p| alive(*p)).collect();
                if workers.is_empty() {
                    continue;
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                signal(workers[(rng % workers.len() as u64) as usize], libc::SIGKILL);
                kills += 1;
            }
            kills
        })
    };
    let out = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let kills = killer.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(kills >= 3, "only {kills} kills happened: the run was too short to mean anything");
    assert_eq!(out.stdout.len(), expected.len(), "{kills} kills");
    assert!(out.stdout == expected, "output differs from the reference after {kills} kills");
}

#[test]
fn r15_chaos_random_worker_kills_lose_and_duplicate_nothing() {
    let n = 100_000;
    let input: String = (0..n).map(|i| format!("chaos item {i}\n")).collect();
    let file = temp_file(input.as_bytes());
    let mut cmd = wpool();
    cmd.args(["map", "-j", "2", "--chunksize", "64"]).arg(kernel_path("upper")).arg(file.path());
    assert_survives_chaos(cmd, Duration::from_millis(50), input.to_ascii_uppercase().as_bytes());
}

#[test]
fn r15_chaos_kills_during_large_payloads_lose_and_duplicate_nothing() {
    // Items and results of 64 KiB and more travel outside the frames'
    // encoding (written from the buffers the host keeps for retries, read
    // into their own): workers killed mid-write, mid-read or mid-item must
    // still lose and duplicate nothing.
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut expected = Vec::new();
    for i in 0..600usize {
        let len = (60 << 10) + (i * 997) % (200 << 10);
        let data: Vec<u8> = (0..len).map(|j| b'a' + ((i * 31 + j * 7 + j / 3) % 26) as u8).collect();
        let path = dir.path().join(format!("{i:04}"));
        std::fs::write(&path, &data).unwrap();
        expected.extend(data.to_ascii_uppercase());
        expected.push(b'\n');
        files.push(path);
    }
    let mut cmd = wpool();
    cmd.args(["map", "-j", "2", "--chunksize", "4", "--files"]).arg(kernel_path("upper")).args(&files);
    assert_survives_chaos(cmd, Duration::from_millis(40), &expected);
}

/// Files of 256 KiB and more for `upper`, and what it makes of them, one
/// record each.
fn large_upper_inputs(dir: &std::path::Path, n: usize) -> (Vec<std::path::PathBuf>, Vec<u8>) {
    let mut files = Vec::new();
    let mut expected = Vec::new();
    for i in 0..n {
        let len = (256 << 10) + i * 4099;
        let data: Vec<u8> = (0..len).map(|j| b'a' + ((i * 13 + j * 5 + j / 7) % 26) as u8).collect();
        let path = dir.join(format!("{i:03}"));
        std::fs::write(&path, &data).unwrap();
        expected.extend(data.to_ascii_uppercase());
        expected.push(b'\n');
        files.push(path);
    }
    (files, expected)
}

/// `wpool map -j 2 --files upper.wasm FILES…`, its stdout and stderr piped.
fn upper_over_files(files: &[std::path::PathBuf]) -> std::process::Command {
    let mut cmd = wpool();
    cmd.args(["map", "-j", "2", "--files"]).arg(kernel_path("upper")).args(files);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    cmd
}

fn first_difference(got: &[u8], expected: &[u8]) -> Option<usize> {
    got.iter().zip(expected).position(|(a, b)| a != b).or((got.len() != expected.len()).then_some(got.len()))
}

/// Large items go to the workers' pipes, and large results to a standard
/// output that is a pipe, by reference (`vmsplice`): each buffer must stay
/// alive and unchanged until its reader has read it, however long that
/// takes, while the host frees and reuses memory for the results after it.
/// A reader that sleeps between reads gets every byte; so does a file.
#[test]
fn large_results_read_slowly_from_a_pipe_arrive_intact() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let (files, expected) = large_upper_inputs(dir.path(), 48);
    let mut child = upper_over_files(&files).spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 100_000];
    loop {
        std::thread::sleep(Duration::from_millis(3));
        match out.read(&mut buf).unwrap() {
            0 => break,
            n => got.extend_from_slice(&buf[..n]),
        }
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(first_difference(&got, &expected), None, "{} bytes of {}", got.len(), expected.len());

    let file = dir.path().join("out");
    let mut cmd = upper_over_files(&files);
    cmd.stdout(std::fs::File::create(&file).unwrap());
    assert!(cmd.status().unwrap().success());
    assert_eq!(first_difference(&std::fs::read(&file).unwrap(), &expected), None);
}

/// A large item goes to its worker's pipe by reference and is held until
/// the worker has read it; then it is let go of even when nothing else is
/// sent after it: the host's memory comes back.
#[test]
fn a_spliced_item_is_freed_once_read_even_with_nothing_sent_after_it() {
    let mut p = Pool::builder(kernel("echo")).workers(1).build().unwrap();
    p.wait_ready().unwrap();
    let me = std::process::id();
    let before = rss_kib(me);
    let out = p.map([vec![7u8; 48 << 20]]).unwrap();
    assert_eq!(out[0].as_ref().unwrap().len(), 48 << 20);
    drop(out);
    let freed = eventually(Duration::from_secs(10), || rss_kib(me) < before + 16 * 1024);
    assert!(freed, "host RSS {} KiB, {before} KiB before the item", rss_kib(me));
    drop(p);
}

/// A pipe's reader gone while large results are in it (`| head -c 1`):
/// the run ends quietly, its workers with it.
#[test]
fn large_results_to_a_pipe_closed_early_end_the_run_quietly() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let (files, expected) = large_upper_inputs(dir.path(), 32);
    let mut child = upper_over_files(&files).spawn().unwrap();
    let pid = child.id();
    let mut out = child.stdout.take().unwrap();
    let mut first = vec![0u8; 1000];
    out.read_exact(&mut first).unwrap();
    assert_eq!(first, expected[..1000]);
    let workers = children_of(pid);
    drop(out);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "quiet: {}", stderr(&o));
    assert!(workers.iter().all(|w| !alive(*w)), "workers cleaned up");
}

#[test]
fn r17_soak_with_instance_recycling_keeps_memory_flat() {
    let limits = Limits { max_items_per_instance: Some(1000), ..Limits::default() };
    let mut p = Pool::builder(kernel("sha256")).workers(2).limits(limits).build().unwrap();
    p.wait_ready().unwrap();
    let workers = p.worker_pids();
    let me = std::process::id();
    let mut samples = Vec::new();
    let total = 1_000_000u64;
    for (i, r) in p.imap((0..total).map(|i| i.to_le_bytes().to_vec())).enumerate() {
        assert_eq!(r.unwrap().unwrap().len(), 64);
        if i == 200_000 || i as u64 == total - 1 {
            samples.push((rss_kib(me), workers.iter().map(|w| rss_kib(*w)).sum::<u64>()));
        }
    }
    let (host0, workers0) = samples[0];
    let (host1, workers1) = samples[1];
    assert!(host1 <= host0 + 16 * 1024, "host RSS grew from {host0} to {host1} KiB");
    assert!(workers1 <= workers0 + 16 * 1024, "worker RSS grew from {workers0} to {workers1} KiB");
    assert_eq!(p.stats().worker_deaths, 0);
}

#[test]
fn cli_hostile_kernel_over_mixed_inputs_prints_good_results_and_a_typed_error_per_bad_item() {
    let mut cmd = wpool();
    cmd.args(["map", "-j", "2", "--timeout", "300ms", "--memory", "64MiB", "--json"]).arg(kernel_path("hostile"));
    let input = b"good0\nspin\ngood1\noom\ngood2\nrecurse\ngood3\npanic:bad\ngood4\nexit:2\ngood5\n";
    let o = run_with(cmd, input, Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<String> = lines
        .iter()
        .map(|l| match l.get("ok") {
            Some(ok) => ok["text"].as_str().unwrap().to_string(),
            None => l["error"]["kind"].as_str().unwrap().to_string(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "good0",
            "timeout",
            "good1",
            "memory_limit",
            "good2",
            "stack_overflow",
            "good3",
            "trap",
            "good4",
            "kernel_exit",
            "good5"
        ]
    );
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["index"], i);
    }
    assert_eq!(stderr(&o).lines().count(), 5, "one stderr line per failed item: {}", stderr(&o));
}

#[test]
fn a_run_right_after_an_abandoned_one_never_lands_on_a_dying_worker() {
    // With no retries, an item handed to a worker that is being killed
    // (from the abandoned run) would fail as worker_crashed.
    let mut p = Pool::builder(kernel("hostile")).workers(2).retries(0).chunksize(Chunksize::Fixed(1)).build().unwrap();
    for round in 0..5 {
        {
            let mut it = p.imap(std::iter::repeat("spin:20"));
            it.next().unwrap().unwrap().unwrap();
        }
        let out = p.map((0..20).map(|i| format!("r{round}i{i}"))).unwrap();
        for (i, r) in out.iter().enumerate() {
            assert_eq!(r.as_deref().unwrap(), format!("r{round}i{i}").as_bytes(), "round {round}");
        }
    }
}

#[test]
fn items_received_before_the_producer_hung_up_all_run() {
    // One big batch, then the channel closes: the pool holds thousands of
    // received items when it sees the disconnect (here while a crash's
    // retry waits for a worker of its own), and must still run them all.
    let mut p = Pool::builder(kernel("hostile"))
        .workers(2)
        .chunksize(Chunksize::Fixed(1))
        .retries(1)
        .crash_worker_on("poison")
        .build()
        .unwrap();
    let (tx, rx) = crossbeam_channel::bounded(1);
    let items: Vec<Vec<u8>> =
        (0..5000).map(|i| if i == 10 { b"poison".to_vec() } else { format!("item {i}").into_bytes() }).collect();
    tx.send(wpool::Items::from(items.clone())).unwrap();
    drop(tx);
    let out: Vec<_> = p.imap_batches(rx).map(|r| r.unwrap()).collect();
    assert_eq!(out.len(), items.len());
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok(bytes) => assert_eq!(bytes, &items[i]),
            Err(e) => assert_eq!(
                (i, e.kind.clone()),
                (10, TaskErrorKind::WorkerCrashed(Crash::Signaled { signal: libc::SIGABRT }))
            ),
        }
    }
}

#[test]
fn a_worker_ready_before_its_spawn_is_reported_still_gets_its_items() {
    // The spawning thread reports each worker a second after starting it:
    // the worker says `Ready` long before. Its items must reach it, first
    // and after a respawn, instead of being handed to a process the
    // scheduler does not have yet (lost until their timeout, or for ever
    // without one). The timeout only turns such a loss into a failure.
    let limits = Limits { timeout: Some(Duration::from_secs(20)), ..Limits::default() };
    let mut p = Pool::builder(kernel("hostile"))
        .workers(1)
        .limits(limits)
        .retries(0)
        .crash_worker_on("poison")
        .report_spawns_after(Duration::from_secs(1))
        .build()
        .unwrap();
    assert_eq!(p.map(["a"]).unwrap()[0].as_deref().unwrap(), b"a");
    let e = p.map(["poison"]).unwrap().remove(0).unwrap_err();
    assert_eq!(e.kind, TaskErrorKind::WorkerCrashed(Crash::Signaled { signal: libc::SIGABRT }), "{e}");
    // The next item goes to the respawned worker, reported late too.
    assert_eq!(p.map(["b"]).unwrap()[0].as_deref().unwrap(), b"b");
    assert_eq!(p.stats().worker_deaths, 1);
}

#[test]
fn an_idle_worker_runs_a_long_item_another_worker_holds_but_has_not_started() {
    // One item per chunk, two chunks per worker, handed out one per worker
    // first: worker 1 gets the long items 0 and 2 (about 1 s each), worker
    // 2 a shorter one and a short one and is idle after about 0.3 s. Item 2
    // must not wait behind item 0: worker 1 gives it back unrun at once,
    // worker 2 runs it, each item once.
    let mut p = Pool::builder(kernel("hostile")).workers(2).chunksize(Chunksize::Fixed(1)).build().unwrap();
    p.wait_ready().unwrap();
    let items = ["spin:3000:a", "spin:900", "spin:3000:b", "short"];
    let mut ran = Vec::new();
    let mut it = p.imap(items);
    while let Some(next) = it.next_with_info() {
        let (result, info) = next.unwrap();
        ran.push((String::from_utf8(result.unwrap().to_vec()).unwrap(), info.worker, info.attempts));
    }
    drop(it);
    let results: Vec<&str> = ran.iter().map(|(r, _, _)| r.as_str()).collect();
    assert_eq!(results, items);
    assert_ne!(ran[0].1, ran[2].1, "both long items ran on one worker: {ran:?}");
    assert_eq!(ran.iter().map(|r| r.2).collect::<Vec<_>>(), [1, 1, 1, 1], "each item ran once: {ran:?}");
    let stats = p.stats();
    assert_eq!((stats.reclaimed_chunks, stats.retried_items, stats.worker_deaths), (1, 0, 0), "{stats:?}");
}

#[test]
fn results_of_fast_items_are_not_held_back_by_a_long_item() {
    // Without a timeout nothing interrupts `spin`. Fast items ahead of it
    // are sent many per write and their results written in batches: the
    // last batch before `spin` must still come out while `spin` runs.
    let mut p = Pool::builder(kernel("hostile")).workers(1).chunksize(Chunksize::Fixed(1)).build().unwrap();
    p.wait_ready().unwrap();
    let mut items: Vec<String> = (0..2000).map(|i| format!("x{i}")).collect();
    items.push("spin".into());
    let mut it = p.imap(items.clone());
    for item in &items[..2000] {
        assert_eq!(it.next().unwrap().unwrap().unwrap(), item.as_bytes());
    }
    drop(it);
}

// ---- map-batch: several small items per call, results as if one by one ----

/// What a caller can see of one item's result, attempts included.
fn seen(r: &wpool::ItemResult) -> String {
    match r {
        Ok(bytes) => format!("ok {}", String::from_utf8_lossy(bytes)),
        Err(e) => format!(
            "{} {}: {} | stderr {:?} | attempts {}",
            e.index,
            e.kind,
            e.message,
            String::from_utf8_lossy(&e.stderr),
            e.attempts
        ),
    }
}

fn run_both_ways(name: &str, limits: Limits, items: &[Vec<u8>]) -> (Vec<String>, wpool::stats::PoolStats) {
    let mut outputs = Vec::new();
    let mut batched_stats = None;
    for batch in [true, false] {
        let mut p = Pool::builder(kernel(name)).workers(2).limits(limits.clone()).batch_calls(batch).build().unwrap();
        let out: Vec<String> = p.map(items.iter().cloned()).unwrap().iter().map(seen).collect();
        let stats = p.stats();
        if batch {
            batched_stats = Some(stats);
        } else {
            assert_eq!(stats.batched_items, 0, "batch_calls(false) never calls map-batch");
        }
        outputs.push(out);
    }
    let unbatched = outputs.pop().unwrap();
    let batched = outputs.pop().unwrap();
    for (i, (b, u)) in batched.iter().zip(&unbatched).enumerate() {
        assert_eq!(b, u, "item {i}: with map-batch, then without");
    }
    assert_eq!(batched.len(), unbatched.len());
    (batched, batched_stats.unwrap())
}

#[test]
fn map_batch_gives_the_same_results_and_errors_as_map_on_100k_mixed_hostile_items() {
    // Mostly tiny items (batched), and among them every kind of failure a
    // batch must hand back to `map` item by item: kernel errors, traps,
    // stderr before a trap, memory, stack, exit, oversized results and
    // items, and a few timeouts.
    let items: Vec<Vec<u8>> = (0..100_000u32)
        .map(|i| match i {
            i if i % 20_011 == 5000 => b"spin".to_vec(),
            i if i % 9_001 == 17 => b"oom".to_vec(),
            i if i % 7_001 == 3 => b"exit:3".to_vec(),
            i if i % 5_003 == 11 => b"result:2".to_vec(),
            i if i % 4_999 == 7 => b"recurse".to_vec(),
            i if i % 3_001 == 13 => b"stderr:2".to_vec(),
            i if i % 1_999 == 19 => format!("warn:careful {i}").into_bytes(),
            i if i % 2_999 == 1 => vec![b'x'; 2 << 20],
            i if i % 211 == 2 => format!("panic:boom {i}").into_bytes(),
            i if i % 97 == 0 => format!("err:bad item {i}").into_bytes(),
            i => format!("item {i}").into_bytes(),
        })
        .collect();
    // Generous: under a loaded machine, an ordinary item (`oom` fills its
    // 64 MiB) must not run into the timeout in one run and not the other.
    let limits = Limits {
        timeout: Some(Duration::from_secs(1)),
        memory: Some(64 << 20),
        max_item_size: 1 << 20,
        ..Limits::default()
    };
    let (out, stats) = run_both_ways("hostile", limits, &items);
    // How many go through map-batch depends on timing (batches shrink after
    // each failed one, and a hostile item is never far): many, not all.
    assert!(stats.batched_items >= 20_000, "items went through map-batch: {stats:?}");
    assert!(stats.batch_fallbacks > 0, "failing batches were run again item by item: {stats:?}");
    // The failures are really there, each at its own item.
    for (i, kind) in [
        (5000, "timeout"),
        (17, "memory_limit"),
        (3, "kernel_exit"),
        (11, "item_too_large"),
        (7, "stack_overflow"),
        (13, "trap"),
        (1, "item_too_large"),
        (2, "trap"),
        (97, "kernel"),
        (19, "kernel"),
    ] {
        assert!(out[i].starts_with(&format!("{i} {kind}")), "item {i}: {}", out[i]);
    }
    assert_eq!(out[4], "ok item 4");
    assert!(out[19].contains("stderr \"warning: careful 19\\n\""), "{}", out[19]);
}

#[test]
fn map_batch_under_fuel_gives_the_same_results_as_map() {
    // A batch gets one item's fuel: an item that runs out alone also sinks
    // its batch, and then runs out alone.
    let items: Vec<Vec<u8>> = (0..20_000u32)
        .map(|i| match i {
            i if i % 1_009 == 8 => format!("spin:1:{i}").into_bytes(),
            i if i % 101 == 4 => format!("err:no {i}").into_bytes(),
            i => format!("item {i}").into_bytes(),
        })
        .collect();
    let limits = Limits { fuel: Some(2_000_000), ..Limits::default() };
    let (out, stats) = run_both_ways("hostile", limits, &items);
    assert!(out[8].starts_with("8 out_of_fuel"), "{}", out[8]);
    assert!(stats.batched_items >= 10_000, "{stats:?}");
    assert!(stats.batch_fallbacks > 0, "{stats:?}");
}

#[test]
fn map_batch_returning_the_wrong_count_is_run_again_item_by_item() {
    // `batch-miscount` drops the last result of every batch.
    let items: Vec<Vec<u8>> = (0..20_000u32)
        .map(|i| if i % 50 == 0 { format!("err:no {i}") } else { format!("item {i}") }.into_bytes())
        .collect();
    let (out, stats) = run_both_ways("batch-miscount", Limits::default(), &items);
    assert_eq!(out[1], "ok item 1");
    assert!(out[50].starts_with("50 kernel: no 50"), "{}", out[50]);
    assert_eq!(stats.batched_items, 0, "no result of a wrong batch is used: {stats:?}");
    assert!(stats.batch_fallbacks > 0, "{stats:?}");
}

#[test]
fn map_batch_is_not_used_for_items_that_read_the_deterministic_clock() {
    // Each item reads the stepping clock from its start; items sharing a
    // batch would share the clock. The first such batch is run again item by
    // item, and the worker stops batching.
    let items: Vec<Vec<u8>> = (0..5_000).map(|_| b"time".to_vec()).collect();
    let (out, stats) = run_both_ways("probe", Limits::default(), &items);
    assert!(out[0].starts_with("ok wall="), "{}", out[0]);
    assert!(out.iter().all(|o| *o == out[0]), "every item saw the same clock");
    assert!((1..=2).contains(&stats.batch_fallbacks), "one fallback per worker at most: {stats:?}");
}

#[test]
fn map_batch_is_not_used_when_every_item_gets_a_fresh_instance() {
    let items: Vec<Vec<u8>> = (0..3_000).map(|i| format!("item {i}").into_bytes()).collect();
    let limits = Limits { max_items_per_instance: Some(1), ..Limits::default() };
    let mut p = Pool::builder(kernel("hostile")).workers(2).limits(limits).build().unwrap();
    let out = p.map(items.iter().cloned()).unwrap();
    assert!(out.iter().zip(&items).all(|(r, i)| r.as_deref().ok() == Some(&i[..])));
    assert_eq!(p.stats().batched_items, 0);
}

/// Voluntary context switches of a worker's epoch ticker thread.
fn ticker_switches(pid: u32) -> Option<u64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() == "wpool-epoch" {
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("voluntary_ctxt_switches:"))?;
            return line.split_whitespace().nth(1)?.parse().ok();
        }
    }
    None
}

#[test]
fn an_idle_worker_stops_ticking_and_a_timeout_still_fires_after_a_pause() {
    let limits = Limits { timeout: Some(Duration::from_millis(300)), ..Limits::default() };
    let mut p = pool_with("hostile", 1, limits);
    assert!(p.map(["warm up"]).unwrap()[0].is_ok());
    let pid = p.worker_pids()[0];
    std::thread::sleep(Duration::from_millis(100));
    let before = ticker_switches(pid).expect("the worker has an epoch ticker");
    std::thread::sleep(Duration::from_millis(500));
    let after = ticker_switches(pid).unwrap();
    // Ticking every 5 ms would be about 100 wake-ups.
    assert!(after - before <= 3, "the idle ticker woke up {} times in 500 ms", after - before);
    // Work wakes it up: the timeout fires as before.
    let out = p.map(["spin"]).unwrap();
    assert_eq!(out[0].as_ref().unwrap_err().kind, TaskErrorKind::Timeout);
    assert!(p.map(["after"]).unwrap()[0].is_ok());
}

#[test]
fn map_batch_is_not_used_when_the_kernel_may_write_to_a_granted_directory() {
    // The items of a failed batch run twice: not where they may leave traces.
    let dir = tempfile::tempdir().unwrap();
    let items: Vec<Vec<u8>> = (0..3_000).map(|i| format!("item {i}").into_bytes()).collect();
    for (writable, batched) in [(false, true), (true, false)] {
        let grants = wpool::Grants {
            dirs: vec![wpool::DirGrant { host: dir.path().to_path_buf(), guest: "/out".into(), writable }],
            ..wpool::Grants::default()
        };
        let mut p = Pool::builder(kernel("hostile")).workers(2).grants(grants).build().unwrap();
        let out = p.map(items.iter().cloned()).unwrap();
        assert!(out.iter().zip(&items).all(|(r, i)| r.as_deref().ok() == Some(&i[..])));
        assert_eq!(p.stats().batched_items > 0, batched, "writable {writable}: {:?}", p.stats());
    }
}

#[test]
fn r13_ctrl_c_mid_stream_flushes_whole_lines_in_order() {
    use std::io::{BufRead, Read};
    // Results streaming out when SIGINT arrives: what was computed and
    // buffered is written, in order, ending on a whole line; nothing after;
    // stderr says how many results were written, and that many are there.
    let input: Vec<u8> = (0..2_000_000).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
    let file = temp_file(&input);
    let mut cmd = wpool();
    cmd.args(["map", "-j", "2"]).arg(kernel_path("upper")).arg(file.path());
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut host = cmd.spawn().unwrap();
    let host_pid = host.id();
    let mut out = std::io::BufReader::new(host.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "LINE 0\n");
    let workers = children_of(host_pid);
    assert!(!workers.is_empty());
    signal(host_pid, libc::SIGINT);
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    let status = host.wait().unwrap();
    let mut err = String::new();
    host.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    let rest = String::from_utf8(rest).unwrap();
    assert!(
        rest.is_empty() || rest.ends_with('\n'),
        "a partial last line: {:?}",
        &rest[rest.len().saturating_sub(40)..]
    );
    let lines: Vec<&str> = rest.lines().collect();
    assert!(lines.len() < 1_999_999, "stopped before the end");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(*l, format!("LINE {}", i + 1), "in order, none lost or repeated");
    }
    // Every result the host took for written reached the pipe: the output
    // buffer (up to 64 KiB of lines) was flushed on the way out.
    let counts: Vec<usize> = err
        .lines()
        .find_map(|l| l.strip_prefix("wpool: interrupted (SIGINT); "))
        .and_then(|s| s.strip_suffix(" results written"))
        .unwrap_or_else(|| panic!("no count of results written: {err:?}"))
        .split(" items done, ")
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(counts[1], lines.len() + 1, "results written but not on stdout");
    assert_eq!(counts[0], counts[1], "no item failed: as many items done as results");
    assert!(workers.iter().all(|w| !alive(*w)), "workers terminated");
}

#[test]
fn a_killed_zygote_costs_no_item_and_the_pool_starts_another() {
    let me = std::process::id();
    wpool::prestart().unwrap();
    let mut p = pool("hostile", 1);
    p.wait_ready().unwrap();
    let first = zygotes_of(me);
    assert_eq!(first.len(), 1);
    // The zygote dies, then the worker: its replacement cannot be forked
    // by the dead zygote and is started with `exec` instead.
    signal(first[0], libc::SIGKILL);
    let worker = p.worker_pids()[0];
    signal(worker, libc::SIGKILL);
    let reaped = |pid: u32| move || !std::path::Path::new(&format!("/proc/{pid}")).exists();
    assert!(eventually(Duration::from_secs(30), reaped(worker)));
    let out = p.map(["count", "count"]).unwrap();
    assert_eq!(out.iter().map(|r| r.as_deref().unwrap().to_vec()).collect::<Vec<_>>(), [b"1".to_vec(), b"2".to_vec()]);
    let replacement = p.worker_pids()[0];
    assert_ne!(replacement, worker);
    assert_eq!(parent_of(replacement), Some(me));
    // The dead zygote was reaped when its request failed, and no other was
    // started for this replacement: it was exec'd.
    assert_eq!(zygotes_of(me), Vec::<u32>::new());
    // The next replacement comes from a new zygote.
    signal(replacement, libc::SIGKILL);
    assert!(eventually(Duration::from_secs(30), reaped(replacement)));
    let out = p.map(["count"]).unwrap();
    assert_eq!(out[0].as_deref().unwrap(), b"1");
    let second = zygotes_of(me);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second[0], first[0]);
    let stats = p.stats();
    assert_eq!((stats.spawned, stats.worker_deaths), (3, 2), "{stats:?}");
}

#[test]
fn r12_a_host_that_fails_before_its_pool_leaves_no_zygote() {
    // `wpool map` starts its zygote first thing; a kernel that does not
    // load ends the run before any pool adopts it.
    let bad = temp_file(b"not wasm");
    let mut c = wpool();
    c.arg("map").arg(bad.path());
    let child = c.stdin(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let host = child.id();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let mine = format!("wpool-zygote\0--wpool-zygote\0{host}\0").into_bytes();
    let left = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
            .filter(|pid| cmdline(*pid) == mine && alive(*pid))
            .collect::<Vec<_>>()
    };
    assert!(eventually(Duration::from_secs(10), || left().is_empty()), "zygotes left: {:?}", left());
}

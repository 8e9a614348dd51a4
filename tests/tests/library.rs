//! The library used from another program: the `map_lines` example is built
//! as its own binary and run as a user would run it.

use std::time::Duration;

use wpool::Pool;
use wpool_tests::*;

#[test]
fn library_example_program_maps_with_its_own_worker_processes() {
    let mut cmd = std::process::Command::new(built_binary("examples/map_lines"));
    cmd.arg(kernel_path("hostile"));
    let o = run(cmd, b"one\nerr:nope\nthree\n");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "one\nthree\n");
    let err = stderr(&o);
    assert!(err.contains("item 1: kernel: nope"), "{err}");
    assert!(err.contains("1 failed"), "{err}");
    // Two distinct worker pids were reported: real processes of its own.
    let pids_line = err.lines().find(|l| l.starts_with("workers: ")).unwrap();
    let pids: Vec<u32> = pids_line
        .trim_start_matches("workers: [")
        .trim_end_matches(']')
        .split(", ")
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    assert_ne!(pids[0], pids[1]);
}

/// `Imap::next_with_info`: which worker gave each result, how many times
/// the item was started (2 for the items of a worker SIGKILLed under them),
/// and its kernel time (a slow item's own; fast items share their batch's).
#[test]
fn imap_says_which_worker_ran_each_item_how_often_and_for_how_long() {
    use wpool::Chunksize;
    let mut p = Pool::builder(kernel("hostile")).workers(2).chunksize(Chunksize::Fixed(1)).build().unwrap();
    p.wait_ready().unwrap();
    let victim = p.worker_pids()[0];
    // Killed once it is busy with an item (its CPU time grows), however
    // slowly the chunks reach it on a loaded machine.
    let killer = std::thread::spawn(move || {
        assert!(eventually(Duration::from_secs(60), || cpu_ms(victim) > 100), "the victim never got busy");
        signal(victim, libc::SIGKILL);
    });
    let mut items: Vec<String> = (0..4).map(|i| format!("spin:3000:{i}")).collect();
    items.extend((0..50).map(|i| format!("fast {i}")));
    let mut it = p.imap(items.clone());
    let mut infos = Vec::new();
    while let Some(r) = it.next_with_info() {
        let (result, info) = r.unwrap();
        assert_eq!(result.unwrap(), items[infos.len()].as_bytes());
        infos.push(info);
    }
    let workers: Vec<u32> = it.worker_info().iter().map(|w| w.id.0).collect();
    drop(it);
    killer.join().unwrap();
    assert_eq!(infos.len(), items.len());
    for (i, info) in infos.iter().enumerate() {
        let w = info.worker.unwrap_or_else(|| panic!("item {i}: no worker"));
        assert!((1..=2).contains(&w.0) && workers.contains(&w.0), "item {i}: {info:?} of {workers:?}");
        assert!(info.attempts >= 1 && info.attempts <= 2, "item {i}: {info:?}");
    }
    assert!(infos[..4].iter().any(|i| i.attempts == 2), "an item of the killed worker ran twice: {infos:?}");
    assert!(infos[4..].iter().all(|i| i.attempts == 1), "{infos:?}");
    let slow = infos[..4].iter().filter_map(|i| i.kernel_time).min().unwrap();
    let fast = infos[4..].iter().filter_map(|i| i.kernel_time).max().unwrap();
    assert!(slow > fast, "a slow item's kernel time ({slow:?}) over any fast one's ({fast:?})");
    assert!(slow >= Duration::from_millis(20), "{slow:?}");
}

/// A process's CPU time (user + system) in milliseconds, from /proc.
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of stat, 11 and 12 after the name.
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1000 / hz
}

/// Items whose results come back in every shape: ok, empty, kernel
/// errors, traps, and results of 1 MiB (frames of their own).
fn mixed_items(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| match i % 50 {
            7 => format!("err:no {i}").into_bytes(),
            19 => b"oob".to_vec(),
            23 => b"result:1".to_vec(),
            31 => Vec::new(),
            _ => format!("item {i}").into_bytes(),
        })
        .collect()
}

/// `next_batch` (and `next_shared`) hand out what `map` does, each result
/// once, at most `max` per call, in input order for `imap`; then `Ok(false)`.
#[test]
fn next_batch_hands_out_every_result_once_as_map_does() {
    let items = mixed_items(3_000);
    let mut p = Pool::builder(kernel("hostile")).workers(2).build().unwrap();
    let want: Vec<_> = p.map(items.clone()).unwrap().into_iter().map(|r| r.map_err(|e| e.kind)).collect();
    assert!(want.iter().any(Result::is_err) && want.iter().any(|r| r.as_ref().is_ok_and(|b| b.len() == 1 << 20)));
    for max in [1, 7, 10_000] {
        for ordered in [true, false] {
            let mut got = Vec::new();
            let mut batch = Vec::new();
            let mut calls = 0;
            if ordered {
                let mut run = p.imap(items.clone());
                while run.next_batch(&mut batch, max).unwrap() {
                    assert!(!batch.is_empty() && batch.len() <= max, "{} results for max {max}", batch.len());
                    calls += 1;
                    got.append(&mut batch);
                }
                assert!(!run.next_batch(&mut batch, max).unwrap(), "over, it stays over");
                let indexes: Vec<u64> = got.iter().map(|(i, _)| i.get()).collect();
                assert!(indexes.iter().copied().eq(0..items.len() as u64), "in input order (max {max})");
            } else {
                let mut run = p.imap_unordered(items.clone());
                while run.next_batch(&mut batch, max).unwrap() {
                    assert!(!batch.is_empty() && batch.len() <= max);
                    calls += 1;
                    got.append(&mut batch);
                }
                got.sort_by_key(|(i, _)| i.get());
            }
            assert!(calls <= items.len() && (max > 1 || calls == items.len()), "{calls} calls for max {max}");
            let got: Vec<_> = got.into_iter().map(|(_, r)| r.map(|b| b.to_vec()).map_err(|e| e.kind)).collect();
            assert_eq!(got.len(), want.len(), "max {max}, ordered {ordered}");
            assert!(got == want, "results differ from map's (max {max}, ordered {ordered})");
        }
    }
    let mut run = p.imap(items.clone());
    let mut shared = Vec::new();
    while let Some(r) = run.next_shared() {
        let (result, info) = r.unwrap();
        assert_eq!(info.attempts, 1);
        shared.push(result.map(wpool::SharedBytes::into_vec).map_err(|e| e.kind));
    }
    assert!(shared == want, "next_shared's results differ from map's");
}

/// A run cancelled while `next_batch` hands out results: what came before
/// is handed out, then `Err(Cancelled)` once, then `Ok(false)`.
#[test]
fn next_batch_ends_a_cancelled_run_with_one_error() {
    let mut p = Pool::builder(kernel("hostile")).workers(2).build().unwrap();
    let canceller = p.canceller();
    let items = (0..200_000).map(|i| format!("item {i}").into_bytes());
    let mut run = p.imap(items);
    let mut batch = Vec::new();
    assert!(run.next_batch(&mut batch, 100).unwrap());
    canceller.cancel();
    let mut handed_out = batch.len() as u64;
    let err = loop {
        batch.clear();
        match run.next_batch(&mut batch, 100) {
            Ok(true) => {
                assert_eq!(batch[0].0.get(), handed_out, "in order, none lost");
                handed_out += batch.len() as u64;
            }
            Ok(false) => panic!("the run ended without saying it was cancelled"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, wpool::Error::Cancelled), "{err}");
    assert!(handed_out < 200_000, "cancelled before the end");
    assert!(!run.next_batch(&mut batch, 100).unwrap(), "after the error the run is over");
}

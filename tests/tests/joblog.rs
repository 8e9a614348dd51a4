//! `wpool map --joblog FILE` and `wpool joblog FILE`: a SQLite record of a
//! run and of every item, that a killed host leaves readable.

use std::time::Duration;

use sha2::{Digest, Sha256};
use wpool_tests::*;

fn sha(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// `count_sql` on a joblog that a running host is writing: 0 while the
/// file does not exist or cannot be read yet.
fn committed_rows(path: &std::path::Path, count_sql: &str) -> i64 {
    if !path.exists() {
        return 0;
    }
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .ok()
        .and_then(|db| db.query_row(count_sql, [], |r| r.get::<_, i64>(0)).ok())
        .unwrap_or(0)
}

fn db(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

#[test]
fn joblog_records_the_run_and_every_item_with_hashes_status_and_origin() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.db");
    let items: Vec<String> = (0..300)
        .map(|i| match i % 50 {
            7 => "err:bad input".to_string(),
            9 => "unreachable".to_string(),
            _ => format!("item {i}"),
        })
        .collect();
    let input = dir.path().join("items.txt");
    std::fs::write(&input, items.join("\n") + "\n").unwrap();
    let mut c = wpool();
    c.args(["map", "-j", "2", "--joblog"]).arg(&log).arg(kernel_path("hostile")).arg(&input);
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));

    let db = db(&log);
    let (kernel_sha, command, status, ended): (String, String, i32, Option<String>) = db
        .query_row("SELECT kernel_sha256, command, exit_status, ended_at FROM runs", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap();
    let kernel = std::fs::read(kernel_path("hostile")).unwrap();
    assert_eq!(kernel_sha, sha(&kernel).iter().map(|b| format!("{b:02x}")).collect::<String>());
    assert!(command.contains("--joblog"), "{command}");
    assert_eq!(status, 1);
    assert!(ended.is_some());

    let mut rows = db
        .prepare(
            "SELECT idx, origin, input_sha256, status, message, attempts, result_size, result_sha256
             FROM items ORDER BY idx",
        )
        .unwrap();
    type Row = (i64, String, Vec<u8>, String, Option<String>, Option<u32>, Option<i64>, Option<Vec<u8>>);
    let rows: Vec<Row> = rows
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), items.len(), "one row per item");
    for (i, (idx, origin, input_sha, status, message, attempts, size, result_sha)) in rows.iter().enumerate() {
        let item = items[i].as_bytes();
        assert_eq!(*idx, i as i64);
        assert_eq!(*origin, format!("{}:{}", input.display(), i + 1));
        assert_eq!(*input_sha, sha(item), "item {i}");
        match i % 50 {
            7 => {
                assert_eq!(status, "kernel");
                assert_eq!(message.as_deref(), Some("bad input"));
                assert_eq!(*attempts, Some(1));
                assert!(size.is_none() && result_sha.is_none());
            }
            9 => assert_eq!(status, "trap", "item {i}: {message:?}"),
            _ => {
                // `hostile` echoes what it does not know.
                assert_eq!(status, "ok");
                assert_eq!(*attempts, Some(1));
                assert_eq!(*size, Some(item.len() as i64));
                assert_eq!(result_sha.as_deref(), Some(&sha(item)[..]));
            }
        }
    }

    // Where and for how long each item ran.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    assert_eq!(count(&db, "SELECT count(*) FROM items WHERE run = 1 AND started IS NOT NULL"), items.len() as i64);
    let mut ran = db.prepare("SELECT worker, node, duration FROM items WHERE run = 1").unwrap();
    let ran: Vec<(Option<u32>, Option<String>, Option<f64>)> =
        ran.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
    for (worker, node, duration) in &ran {
        assert!(matches!(worker, Some(1 | 2)), "{ran:?}");
        assert_eq!(node.as_deref(), Some(host.as_str()));
        assert!(duration.is_some(), "a kernel time for every item a worker ran: {ran:?}");
    }

    // The summary, for people and for machines.
    let mut c = wpool();
    c.arg("joblog").arg(&log);
    let o = run(c, b"");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("300 items recorded: 288 ok, 6 "), "{out}");
    assert!(out.contains("6 kernel") && out.contains("6 trap"), "{out}");
    assert!(out.contains(&format!("item 7 ({}:8): kernel: bad input", input.display())), "{out}");
    assert!(out.contains("exit status 1"), "{out}");
    let mut c = wpool();
    c.args(["joblog", "--json"]).arg(&log);
    let o = run(c, b"");
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(runs[0]["items"], 300);
    assert_eq!(runs[0]["by_status"]["trap"], 6);
    assert_eq!(runs[0]["failed"].as_array().unwrap().len(), 12);
    assert_eq!(runs[0]["slowest"].as_array().unwrap().len(), 5);
    assert!(out.contains("slowest in the kernel: item "), "{out}");

    // A second run goes into the same file; the summary shows the last.
    let mut c = wpool();
    c.args(["map", "--joblog"]).arg(&log).arg(kernel_path("upper")).arg(&input);
    assert!(run(c, b"").status.success());
    let n: i64 = db.query_row("SELECT count(*) FROM runs", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 2);
    let mut c = wpool();
    c.args(["joblog", "--all", "--json"]).arg(&log);
    let runs: serde_json::Value = serde_json::from_slice(&run(c, b"").stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 2);
    assert_eq!(runs[0]["run"], 2, "the last run first");
    assert_eq!(runs[0]["exit_status"], 0);
}

/// A host SIGKILLed at any moment leaves a database that opens, passes
/// SQLite's integrity check, and says how far the run got: a run without an
/// end, and rows that are each exactly right.
#[test]
fn joblog_of_a_host_killed_at_random_points_opens_and_says_how_far_it_got() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("items.txt");
    let n = 200_000;
    let text: String = (0..n).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&input, &text).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..6 {
        let log = dir.path().join(format!("run{round}.db"));
        let mut c = wpool();
        c.args(["map", "-j", "2", "--chunksize", "64", "--joblog"]).arg(&log).arg(kernel_path("upper")).arg(&input);
        c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let mut host = c.spawn().unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Killed at a random moment after the first commit (however loaded
        // the machine): rows exist, and more are being written.
        let committed = || committed_rows(&log, "SELECT count(*) FROM items") > 0;
        assert!(eventually(Duration::from_secs(60), committed), "round {round}: no rows");
        std::thread::sleep(Duration::from_millis(seed % 250));
        let workers = children_of(host.id());
        signal(host.id(), libc::SIGKILL);
        host.wait().unwrap();
        for w in workers {
            assert!(eventually(Duration::from_secs(10), || !alive(w)), "round {round}: worker {w} outlived its host");
        }
        let db = db(&log);
        let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok", "round {round}");
        let runs: Vec<Option<String>> = db
            .prepare("SELECT ended_at FROM runs")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(runs, [None], "round {round}: a killed run has no end");
        let mut rows = db.prepare("SELECT idx, input_sha256, status, result_sha256 FROM items").unwrap();
        let rows: Vec<(i64, Vec<u8>, String, Vec<u8>)> = rows
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(rows.len() < n, "round {round}: killed before the end");
        for (idx, input_sha, status, result_sha) in &rows {
            let line = format!("line {idx}");
            assert_eq!(status, "ok");
            assert_eq!(*input_sha, sha(line.as_bytes()), "round {round}, item {idx}");
            assert_eq!(*result_sha, sha(line.to_uppercase().as_bytes()), "round {round}, item {idx}");
        }
        assert!(!rows.is_empty(), "round {round}");
        let mut c = wpool();
        c.arg("joblog").arg(&log);
        let o = run(c, b"");
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("did not finish"), "{}", stdout(&o));
        assert!(stdout(&o).contains(&format!("{} items recorded", rows.len())), "{}", stdout(&o));
    }
}

#[test]
fn joblog_of_a_missing_or_foreign_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = wpool();
    c.arg("joblog").arg(dir.path().join("none.db"));
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("none.db: no such joblog"), "{}", stderr(&o));
    let text = temp_file(b"not a database at all, just text\n");
    let mut c = wpool();
    c.arg("joblog").arg(text.path());
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains(&text.path().display().to_string()), "{}", stderr(&o));
    // An unrelated SQLite database is not a joblog either.
    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
    let mut c = wpool();
    c.arg("joblog").arg(&other);
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a wpool joblog"), "{}", stderr(&o));
}

/// A joblog on a full disk (a 256 KiB tmpfs in a private mount namespace):
/// the results are all printed, and the run ends with exit 2 naming the
/// joblog and the reason, never a panic or a silent success.
#[test]
fn joblog_on_a_full_disk_fails_the_run_naming_it_after_printing_every_result() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("items.txt");
    let text: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&input, &text).unwrap();
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    let script =
        r#"set -e; mount -t tmpfs -o size=256k,mode=700 tmpfs "$1"; "$2" map -j 2 --joblog "$1/run.db" "$3" "$4""#;
    let mut c = std::process::Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(&full)
        .arg(wpool_bin())
        .arg(kernel_path("upper"))
        .arg(&input);
    loopback_only(&mut c);
    let o = run(c, b"");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("--joblog {}/run.db", full.display())), "{err}");
    assert!(err.contains("full"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(stdout(&o) == text.to_uppercase(), "every result printed: {} bytes of {}", o.stdout.len(), text.len());
}

fn count(db: &rusqlite::Connection, sql: &str) -> i64 {
    db.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// 100 000 items, the host SIGKILLed mid-run, then `--resume`: the output
/// is byte for byte that of one uninterrupted run, and the joblog shows the
/// second run ran only the rest. `--resume-failed` runs only the failed
/// ones again. A changed input, kernel or option is refused, named.
#[test]
fn resume_after_sigkill_prints_the_output_of_one_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("items.txt");
    let n = 100_000;
    // Every tenth result is long enough for the content-addressed store;
    // the others are kept in their rows.
    let line = |i: usize| match i {
        _ if i % 997 == 5 => format!("err:no {i}"),
        _ if i % 10 == 3 => format!("line {i} {}", "long ".repeat(20)),
        _ => format!("line {i}"),
    };
    let text: String = (0..n).map(|i| line(i) + "\n").collect();
    std::fs::write(&input, &text).unwrap();
    let map = |extra: &[&str]| {
        let mut c = wpool();
        c.args(["map", "-j", "2"]).args(extra).arg(kernel_path("hostile")).arg(&input);
        c
    };
    let reference = run(map(&[]), b"");
    assert_eq!(reference.status.code(), Some(1));
    let failures = (0..n).filter(|i| i % 997 == 5).count() as i64;

    let log = dir.path().join("run.db");
    let log_arg = log.to_str().unwrap();
    let mut first = map(&["--joblog", log_arg]);
    first.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut host = first.spawn().unwrap();
    // Killed once some rows are committed, well before the end.
    let committed = || committed_rows(&log, "SELECT count(*) FROM items") > 0;
    assert!(eventually(Duration::from_secs(60), committed), "no rows committed");
    signal(host.id(), libc::SIGKILL);
    host.wait().unwrap();
    let db = db(&log);
    let done_first = count(&db, "SELECT count(*) FROM items WHERE run = 1");
    assert!(done_first > 0 && done_first < n as i64, "{done_first}");

    let second = run(map(&["--joblog", log_arg, "--resume"]), b"");
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    assert!(second.stdout == reference.stdout, "output identical to an uninterrupted run");
    assert_eq!(stderr(&second).lines().count(), failures as usize, "every failure reported once");
    assert_eq!(count(&db, "SELECT count(*) FROM items WHERE run = 2"), n as i64 - done_first, "only the rest ran");
    let long = (0..n).filter(|i| i % 10 == 3 && i % 997 != 5).count() as i64;
    assert_eq!(count(&db, "SELECT count(*) FROM results"), long, "the long results, stored once each");
    assert_eq!(count(&db, "SELECT count(*) FROM items WHERE result_size > 64 AND result IS NOT NULL"), 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM items a JOIN items b ON a.idx = b.idx WHERE a.run = 1 AND b.run = 2"),
        0
    );

    // Everything is done: a third run replays all of it and runs nothing;
    // --resume-failed runs the failed items, and only them, again.
    let third = run(map(&["--joblog", log_arg, "--resume"]), b"");
    assert!(third.stdout == reference.stdout);
    assert_eq!(count(&db, "SELECT count(*) FROM items WHERE run = 3"), 0);
    let fourth = run(map(&["--joblog", log_arg, "--resume-failed"]), b"");
    assert_eq!(fourth.status.code(), Some(1));
    assert!(fourth.stdout == reference.stdout);
    assert_eq!(count(&db, "SELECT count(*) FROM items WHERE run = 4"), failures);
    assert_eq!(count(&db, "SELECT count(*) FROM items WHERE run = 4 AND status != 'kernel'"), 0);

    // What cannot be resumed is refused, and says why.
    let o = run(map(&["--joblog", log_arg, "--resume", "--timeout", "5s"]), b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("options that change results differ") && stderr(&o).contains("timeout_ns"),
        "{}",
        stderr(&o)
    );
    let mut c = wpool();
    c.args(["map", "--joblog", log_arg, "--resume"]).arg(kernel_path("upper")).arg(&input);
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("the kernel changed"), "{}", stderr(&o));
    let mut changed = text.clone().into_bytes();
    let at = text.find("line 500\n").unwrap();
    changed[at] = b'L';
    std::fs::write(&input, &changed).unwrap();
    let o = run(map(&["--joblog", log_arg, "--resume"]), b"");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("item 500 is not the item the joblog recorded"), "{}", stderr(&o));
    let printed = stdout(&o);
    assert_eq!(printed.lines().count(), 500 - (0..500).filter(|i| i % 997 == 5).count(), "up to the changed item");
    assert!(reference.stdout.starts_with(printed.as_bytes()));
    let o = run(map(&["--resume"]), b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--joblog"), "{}", stderr(&o));
}

/// `--quarantine FILE` holds exactly the failed items in the input's own
/// framing, so that mapping FILE runs them (and only them) again.
#[test]
fn quarantine_holds_the_failed_items_as_read_and_reruns_exactly_them() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("failed");
    // Lines: the failed ones, whole, in input order.
    let lines: Vec<String> =
        (0..2000).map(|i| if i % 100 == 3 { format!("err:item {i}") } else { format!("item {i}") }).collect();
    let input = dir.path().join("items.txt");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let mut c = wpool();
    c.args(["map", "-j", "2", "--quarantine"]).arg(&q).arg(kernel_path("hostile")).arg(&input);
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(1));
    let failed: Vec<&String> = lines.iter().filter(|l| l.starts_with("err:")).collect();
    let expected: String = failed.iter().map(|l| format!("{l}\n")).collect();
    assert_eq!(std::fs::read_to_string(&q).unwrap(), expected);
    assert!(!dir.path().join("failed.tmp").exists());
    let mut c = wpool();
    c.args(["map", "--json"]).arg(kernel_path("hostile")).arg(&q);
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o).lines().count(), failed.len(), "exactly the failed items ran again");
    assert!(stdout(&o).lines().all(|l| l.contains("\"error\"")));

    // NUL records keep their newlines; an item over --max-item-size is
    // named, not written cut.
    let records = b"ok one\0err:two\nlines\0unreachable\0".to_vec();
    let mut big = b"err:".to_vec();
    big.extend(std::iter::repeat_n(b'x', 5000));
    let input = dir.path().join("records");
    std::fs::write(&input, [&records[..], &big, b"\0"].concat()).unwrap();
    let mut c = wpool();
    c.args(["map", "-0", "--max-item-size", "4KiB", "--quarantine"]).arg(&q).arg(kernel_path("hostile")).arg(&input);
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read(&q).unwrap(), b"err:two\nlines\0unreachable\0");
    assert!(
        stderr(&o).contains("1 failed items are not in it (over --max-item-size") && stderr(&o).contains("items 3"),
        "{}",
        stderr(&o)
    );

    // A run that stops early (--fail-fast here) leaves FILE as it was and
    // the failures so far in FILE.tmp.
    let before = std::fs::read(&q).unwrap();
    let mut c = wpool();
    c.args(["map", "-0", "-j", "1", "--fail-fast", "--quarantine"]).arg(&q).arg(kernel_path("hostile")).arg(&input);
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read(&q).unwrap(), before, "FILE unchanged after a stop");
    let tmp = dir.path().join("failed.tmp");
    assert_eq!(std::fs::read(&tmp).unwrap(), b"err:two\nlines\0");
    assert!(stderr(&o).contains("the run stopped before its end"), "{}", stderr(&o));
    std::fs::remove_file(&tmp).unwrap();

    // --files: the names of the files that failed.
    let good = dir.path().join("good.txt");
    let bad = dir.path().join("bad.txt");
    std::fs::write(&good, "fine").unwrap();
    std::fs::write(&bad, "err:bad file").unwrap();
    let mut c = wpool();
    c.args(["map", "--files", "--quarantine"]).arg(&q).arg(kernel_path("hostile")).arg(&good).arg(&bad);
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&q).unwrap(), format!("{}\n", bad.display()));
    let mut c = wpool();
    c.args(["map", "--files"]).arg(kernel_path("hostile")).arg("-");
    let o = run(c, &std::fs::read(&q).unwrap());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bad.txt") && stderr(&o).contains("bad file"), "{}", stderr(&o));
}

/// `wpool replay JOBLOG --item N` runs that one item again with its run's
/// options (a 1 s timeout here); `--bundle DIR` makes a folder that replays
/// it anywhere, without the joblog or the input.
#[test]
fn replay_runs_one_recorded_item_again_and_a_bundle_replays_it_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "a\nerr:boom\nspin\nb\n").unwrap();
    let log = dir.path().join("run.db");
    let mut c = wpool();
    c.args(["map", "--timeout", "1s", "--joblog"]).arg(&log).arg(kernel_path("hostile")).arg(&input);
    assert_eq!(run(c, b"").status.code(), Some(1));
    let replay = |args: &[&str]| {
        let mut c = wpool();
        c.arg("replay").arg(&log).args(args);
        run(c, b"")
    };
    let o = replay(&["--item", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&format!("replaying item 1 ({}:2) of run 1", input.display())), "{}", stderr(&o));
    assert!(stderr(&o).contains("kernel: boom"), "{}", stderr(&o));
    let o = replay(&["--item", "3"]);
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(0), "b\n"));
    // The recorded timeout holds: `spin` ends as a timeout, not a hang.
    let o = replay(&["--item", "2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("timeout"), "{}", stderr(&o));

    let bundle = dir.path().join("bug");
    let o = replay(&["--item", "1", "--bundle", bundle.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(bundle.join("item")).unwrap(), b"err:boom");
    assert_eq!(std::fs::read(bundle.join("kernel.wasm")).unwrap(), std::fs::read(kernel_path("hostile")).unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("bundle.json")).unwrap()).unwrap();
    assert_eq!(manifest["options"]["timeout_ns"], 1_000_000_000u64);
    // Elsewhere, with the joblog and the input gone.
    let moved = tempfile::tempdir().unwrap();
    let there = moved.path().join("bug");
    std::fs::rename(&bundle, &there).unwrap();
    std::fs::remove_file(&log).unwrap();
    std::fs::remove_file(&input).unwrap();
    let mut c = wpool();
    c.current_dir(moved.path()).arg("replay").arg("bug");
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("kernel: boom"), "{}", stderr(&o));
}

#[test]
fn replay_refuses_what_it_cannot_reproduce_naming_why() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "a\nb\n").unwrap();
    let log = dir.path().join("run.db");
    let mut c = wpool();
    c.args(["map", "--joblog"]).arg(&log).arg(kernel_path("hostile")).arg(&input);
    assert!(run(c, b"").status.success());
    let replay = |args: &[&str]| {
        let mut c = wpool();
        c.arg("replay").arg(&log).args(args);
        let o = run(c, b"");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        stderr(&o)
    };
    assert!(replay(&[]).contains("which item? (--item N)"));
    assert!(replay(&["--item", "9"]).contains("recorded no item 9"));
    assert!(replay(&["--item", "0", "--run", "5"]).contains("no run 5"));
    std::fs::write(&input, "A\nb\n").unwrap();
    assert!(replay(&["--item", "0"]).contains("item 0 (") && replay(&["--item", "0"]).contains("changed since run 1"));
    // An item read from stdin cannot be read again.
    let mut c = wpool();
    c.args(["map", "--joblog"]).arg(&log).arg(kernel_path("hostile"));
    assert!(run(c, b"x\n").status.success());
    assert!(replay(&["--item", "0"]).contains("standard input, which cannot be read again"));
}

/// `--joblog` on `pipeline` and `mapreduce`: one row per input item, the
/// stage that failed in its message; a MapReduce map item's result went
/// into the keys, so its row has none.
#[test]
fn pipeline_and_mapreduce_record_every_input_item() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "a\nerr:broken\nb\n").unwrap();
    let log = dir.path().join("run.db");
    let stage = |k: &str| kernel_path(k).display().to_string();
    let mut c = wpool();
    c.args(["pipeline", "--stage", &stage("hostile"), "--stage", &stage("upper"), "--joblog"]).arg(&log).arg(&input);
    let o = run(c, b"");
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(1), "A\nB\n"), "{}", stderr(&o));
    let db = db(&log);
    type Row = (i64, String, Option<String>, Option<Vec<u8>>);
    let rows: Vec<Row> = db
        .prepare("SELECT idx, status, message, result_sha256 FROM items ORDER BY idx")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].3.as_deref(), Some(&sha(b"A")[..]), "the last stage's result");
    assert_eq!(rows[1].1, "kernel");
    assert!(rows[1].2.as_deref().unwrap().starts_with("stage 1 ("), "{:?}", rows[1]);
    let kernel: String = db.query_row("SELECT kernel FROM runs", [], |r| r.get(0)).unwrap();
    assert_eq!(kernel, format!("{} | {}", stage("hostile"), stage("upper")));

    let log = dir.path().join("mr.db");
    let texts: Vec<std::path::PathBuf> =
        std::fs::read_dir(root().join("examples").join("text")).unwrap().map(|e| e.unwrap().path()).collect();
    let mut c = wpool();
    c.args(["mapreduce", "--map"]).arg(kernel_path("wordcount")).arg("--reduce").arg(kernel_path("sum"));
    c.args(["--files", "--joblog"]).arg(&log).args(&texts);
    let o = run(c, b"");
    assert!(o.status.success(), "{}", stderr(&o));
    let db = self::db(&log);
    assert_eq!(
        count(&db, "SELECT count(*) FROM items WHERE status = 'ok' AND result_sha256 IS NULL"),
        texts.len() as i64
    );
    let origins: Vec<String> = db
        .prepare("SELECT origin FROM items")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for t in &texts {
        assert!(origins.contains(&t.display().to_string()), "{origins:?}");
    }
}

/// `--resume` continues the last run and its own resumes, not every run in
/// the file: an earlier complete run of another input does not count.
#[test]
fn resume_continues_the_last_run_not_an_earlier_one_of_another_input() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.db");
    let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
    let n = 100_000;
    std::fs::write(&a, (0..n).map(|i| format!("a {i}\n")).collect::<String>()).unwrap();
    std::fs::write(&b, (0..n).map(|i| format!("b {i}\n")).collect::<String>()).unwrap();
    let map = |input: &std::path::Path, extra: &[&str]| {
        let mut c = wpool();
        c.args(["map", "-j", "2", "--joblog"]).arg(&log).args(extra).arg(kernel_path("upper")).arg(input);
        c
    };
    assert!(run(map(&a, &[]), b"").status.success());
    let mut second = map(&b, &[]);
    second.stdout(std::process::Stdio::null());
    let mut host = second.spawn().unwrap();
    let rows_of_run_2 = || committed_rows(&log, "SELECT count(*) FROM items WHERE run = 2") > 0;
    assert!(eventually(Duration::from_secs(60), rows_of_run_2));
    signal(host.id(), libc::SIGKILL);
    host.wait().unwrap();
    let o = run(map(&b, &["--resume"]), b"");
    assert!(o.status.success(), "{}", stderr(&o));
    let expected: String = (0..n).map(|i| format!("B {i}\n")).collect();
    assert!(stdout(&o) == expected, "b's output, whole and in order");
    let db = db(&log);
    assert_eq!(count(&db, "SELECT resumed_from FROM runs WHERE id = 3"), 2);
    assert_eq!(count(&db, "SELECT count(*) FROM items WHERE run IN (2, 3)"), n as i64, "run 3 ran what run 2 had not");
    let mut c = wpool();
    c.arg("joblog").arg(&log);
    assert!(stdout(&run(c, b"")).contains("(resumes run 2)"));
}

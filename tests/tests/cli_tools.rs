//! The CLI's housekeeping commands: `wpool cache` (listing, cleaning, the
//! size cap with least-recently-used eviction, cleaning during a run) and
//! `wpool completions`. Every test uses a private cache directory.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use wpool_tests::*;

/// `wpool` with its cache in `cache`.
fn wpool_in(cache: &Path) -> Command {
    let mut c = wpool();
    c.env("WPOOL_CACHE_DIR", cache).env_remove("WPOOL_CACHE_MAX");
    c
}

fn with_args(mut c: Command, args: &[&str]) -> Command {
    c.args(args);
    c
}

fn map_one(cache: &Path, kernel: &str, item: &str, cap: Option<&str>) -> String {
    let mut c = wpool_in(cache);
    c.args(["map", "-j", "1"]).arg(kernel_path(kernel));
    if let Some(cap) = cap {
        c.env("WPOOL_CACHE_MAX", cap);
    }
    let o = run(c, format!("{item}\n").as_bytes());
    assert!(o.status.success(), "map {kernel}: {}", stderr(&o));
    stdout(&o)
}

/// `KEY.cwasm` file names in the cache, sorted.
fn artifacts(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cwasm"))
        .collect();
    names.sort();
    names
}

/// The value after `field:` in `wpool cache`'s listing.
fn listing(cache: &Path, field: &str) -> String {
    let o = run(with_args(wpool_in(cache), &["cache"]), b"");
    assert!(o.status.success(), "wpool cache: {}", stderr(&o));
    let out = stdout(&o);
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no `{field}:` in {out}"))
        .trim()
        .to_string()
}

/// The artifact a kernel compiles to (name, bytes with its digest), learnt
/// in a scratch cache: names are keyed by wasm, engine and settings only.
fn artifact_of(kernel: &str) -> (String, u64) {
    let scratch = tempfile::tempdir().unwrap();
    map_one(scratch.path(), kernel, "x", None);
    let names = artifacts(scratch.path());
    assert_eq!(names.len(), 1, "{names:?}");
    let size = |p: PathBuf| std::fs::metadata(p).unwrap().len();
    let key = names[0].trim_end_matches(".cwasm");
    let bytes =
        ["cwasm", "blake3", "checked"].iter().map(|ext| size(scratch.path().join(format!("{key}.{ext}")))).sum();
    (names[0].clone(), bytes)
}

#[test]
fn cache_lists_cleans_and_a_run_after_clean_compiles_again() {
    let cache = tempfile::tempdir().unwrap();
    assert_eq!(listing(cache.path(), "artifacts"), "0");
    assert_eq!(map_one(cache.path(), "upper", "abc", None), "ABC\n");
    assert_eq!(map_one(cache.path(), "echo", "abc", None), "abc\n");

    assert_eq!(listing(cache.path(), "directory"), cache.path().display().to_string());
    assert_eq!(listing(cache.path(), "artifacts"), "2");
    let on_disk: u64 = std::fs::read_dir(cache.path()).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum();
    assert!(listing(cache.path(), "size").starts_with(&format!("{on_disk} bytes (")));
    assert!(listing(cache.path(), "cap").starts_with("2147483648 bytes (2 GiB, default"));

    let o = run(with_args(wpool_in(cache.path()), &["cache", "clean"]), b"");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("removed 2 artifacts ({on_disk} bytes) from {}\n", cache.path().display()));
    assert_eq!(listing(cache.path(), "artifacts"), "0");
    assert_eq!(listing(cache.path(), "size"), "0 bytes");
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0, "clean leaves nothing behind");

    assert_eq!(map_one(cache.path(), "upper", "again", None), "AGAIN\n");
    assert_eq!(listing(cache.path(), "artifacts"), "1");
}

#[test]
fn eviction_over_the_cap_removes_the_least_recently_used() {
    let (upper, upper_bytes) = artifact_of("upper");
    let (echo, echo_bytes) = artifact_of("echo");
    let (sha, sha_bytes) = artifact_of("sha256");
    let cache = tempfile::tempdir().unwrap();
    map_one(cache.path(), "upper", "a", None);
    std::thread::sleep(Duration::from_millis(50));
    map_one(cache.path(), "echo", "a", None);
    std::thread::sleep(Duration::from_millis(50));
    // A cache hit makes upper the most recently used, echo the least.
    map_one(cache.path(), "upper", "a", None);
    std::thread::sleep(Duration::from_millis(50));
    // One byte short of holding all three: one must go.
    let cap = (upper_bytes + echo_bytes + sha_bytes - 1).to_string();
    map_one(cache.path(), "sha256", "a", Some(&cap));

    let mut expected = vec![upper.clone(), sha.clone()];
    expected.sort();
    assert_eq!(artifacts(cache.path()), expected, "echo ({echo}) was the least recently used");
    assert!(!cache.path().join(echo.replace(".cwasm", ".blake3")).exists());
    assert!(!cache.path().join(echo.replace(".cwasm", ".checked")).exists());

    // A cap below one artifact keeps just the one written last.
    map_one(cache.path(), "echo", "a", Some("1"));
    assert_eq!(artifacts(cache.path()), vec![echo]);
}

#[test]
fn a_cap_that_is_not_a_size_is_an_error_naming_it() {
    let cache = tempfile::tempdir().unwrap();
    for args in [&["cache"][..], &["map", kernel_path("upper").to_str().unwrap()][..]] {
        let mut c = with_args(wpool_in(cache.path()), args);
        c.env("WPOOL_CACHE_MAX", "lots");
        let o = run(c, b"a\n");
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains("WPOOL_CACHE_MAX=`lots` is not a size"), "{}", stderr(&o));
    }
}

#[test]
fn clean_during_a_run_keeps_its_artifact_for_respawned_workers() {
    let cache = tempfile::tempdir().unwrap();
    map_one(cache.path(), "echo", "a", None);
    let mut c = wpool_in(cache.path());
    c.args(["map", "-j", "1"]).arg(kernel_path("upper"));
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    writeln!(stdin, "first").unwrap();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "FIRST\n");

    let o = run(with_args(wpool_in(cache.path()), &["cache", "clean"]), b"");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("removed 1 artifacts"), "echo's goes: {}", stdout(&o));
    assert!(stdout(&o).contains("kept 1 in use by a running wpool"), "{}", stdout(&o));
    assert_eq!(listing(cache.path(), "artifacts"), "1");

    // The replacement worker loads the kernel from the artifact again.
    let workers = workers_of(child.id());
    assert_eq!(workers.len(), 1, "{workers:?}");
    signal(workers[0], libc::SIGKILL);
    assert!(eventually(Duration::from_secs(60), || !alive(workers[0])));
    writeln!(stdin, "second").unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(rest, "SECOND\n", "stderr: {err}");
    assert!(status.success(), "{status}: {err}");
}

#[test]
fn completions_for_each_shell_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let o = run(with_args(wpool(), &["completions", shell]), b"");
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        for sub in ["map", "pipeline", "mapreduce", "inspect", "cache", "completions"] {
            assert!(script.contains(sub), "{shell} completions lack `{sub}`");
        }
    }
}

#[test]
fn bash_completion_script_registers_wpool() {
    let o = run(with_args(wpool(), &["completions", "bash"]), b"");
    assert!(o.status.success(), "{}", stderr(&o));
    let script = temp_file(&o.stdout);
    let check = Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1" && complete -p wpool && COMP_WORDS=(wpool ca) COMP_CWORD=1 && _wpool wpool ca wpool && echo "${COMPREPLY[@]}""#)
        .arg("bash")
        .arg(script.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{out} {}", String::from_utf8_lossy(&check.stderr));
    assert!(out.lines().next().is_some_and(|l| l.starts_with("complete ") && l.ends_with(" -F _wpool wpool")), "{out}");
    assert_eq!(out.lines().last(), Some("cache"), "completing `wpool ca`: {out}");
}

#[test]
fn completions_for_an_unknown_shell_exit_2_naming_it() {
    let o = run(with_args(wpool(), &["completions", "tcsh"]), b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("tcsh") && stderr(&o).contains("bash"), "{}", stderr(&o));
}

#[test]
fn eight_concurrent_runs_on_an_empty_cache_agree_and_leave_one_whole_artifact() {
    let cache = tempfile::tempdir().unwrap();
    let input: Vec<u8> = (0..200).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let mut c = wpool_in(cache.path());
            c.args(["map", "-j", "2"]).arg(kernel_path("sha256"));
            c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = c.spawn().unwrap();
            child.stdin.take().unwrap().write_all(&input).unwrap();
            child
        })
        .collect();
    let outs: Vec<_> = runs.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for o in &outs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stderr.is_empty(), "no warning: {}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.stdout, outs[0].stdout);
    }
    assert_eq!(String::from_utf8_lossy(&outs[0].stdout).lines().count(), 200);
    // One artifact with its digest, the record of its check and the index
    // of the kernel file, nothing half-written beside them.
    let mut files: Vec<String> = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "{files:?}");
    assert_eq!(files.iter().filter(|f| f.ends_with(".source")).count(), 1, "{files:?}");
    let (name, bytes) = artifact_of("sha256");
    assert_eq!(artifacts(cache.path()), std::slice::from_ref(&name));
    let key = name.trim_end_matches(".cwasm");
    let on_disk: u64 = ["cwasm", "blake3", "checked"]
        .iter()
        .map(|ext| std::fs::metadata(cache.path().join(format!("{key}.{ext}"))).unwrap().len())
        .sum();
    assert_eq!(on_disk, bytes, "the artifact is whole");
    // And it loads: a ninth run uses it as it is.
    let first = String::from_utf8_lossy(&outs[0].stdout).lines().next().unwrap().to_string();
    assert_eq!(map_one(cache.path(), "sha256", "line 0", None), format!("{first}\n"));
}

/// Runs `wpool map -j 2 upper` over two lines with its cache in `dir`,
/// after `setup` (shell, run in a private mount namespace so that mounts
/// vanish with it); returns the output and what `dir` holds afterwards.
fn map_with_cache_in_namespace(dir: &Path, setup: &str) -> (std::process::Output, String) {
    let script = format!(
        "set -e; {setup}; printf 'a\\nb\\n' | WPOOL_CACHE_DIR=\"$1\" \"$2\" map -j 2 \"$3\"; echo \"left: $(ls -A \"$1\" | tr '\\n' ' ')\" >&2"
    );
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
        .arg(dir)
        .arg(wpool_bin())
        .arg(kernel_path("upper"));
    loopback_only(&mut c);
    let o = run(c, b"");
    let err = stderr(&o);
    let left = err.lines().find_map(|l| l.strip_prefix("left: ")).unwrap_or_else(|| panic!("{err}")).trim().to_string();
    (o, left)
}

#[test]
fn an_unusable_cache_directory_compiles_in_memory_with_one_warning() {
    // A plain file where the directory should be.
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut c = wpool();
    c.env("WPOOL_CACHE_DIR", file.path().join("cache")).args(["map", "-j", "2"]).arg(kernel_path("upper"));
    let o = run(c, b"a\nb\n");
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(0), "A\nB\n"), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("wpool: warning: artifact cache ")
            && err.contains("cannot create")
            && err.contains("compiling in memory"),
        "{err}"
    );

    // A read-only directory (bind-mounted read-only: root writes anywhere
    // else), and a full disk (a 64 KiB tmpfs; artifacts are megabytes).
    let ro = tempfile::tempdir().unwrap();
    let full = tempfile::tempdir().unwrap();
    for (dir, setup, reason) in [
        (ro.path(), r#"mount --bind "$1" "$1"; mount -o remount,bind,ro "$1""#, "Read-only file system"),
        (full.path(), r#"mount -t tmpfs -o size=64k,mode=700 tmpfs "$1""#, "No space left on device"),
    ] {
        let (o, left) = map_with_cache_in_namespace(dir, setup);
        let err = stderr(&o);
        assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(0), "A\nB\n"), "{err}");
        let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("wpool:")).collect();
        assert_eq!(warnings.len(), 1, "one line: {err}");
        assert!(warnings[0].contains("cannot write") && warnings[0].contains(reason), "{err}");
        assert_eq!(left, "", "nothing half-written left in the cache: {err}");
    }
}

#[test]
fn a_cached_kernel_keeps_its_check_beside_its_digest_and_loads_alike() {
    use wpool::Kernel;
    // A map kernel, one with `init`, a reducer.
    for name in ["upper", "dict", "sum"] {
        let cache = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(kernel_path(name)).unwrap();
        let load = || Kernel::from_bytes_with_cache(name, bytes.clone(), cache.path()).unwrap();
        let first = load();
        let key = artifacts(cache.path())[0].trim_end_matches(".cwasm").to_string();
        let digest = std::fs::read_to_string(cache.path().join(format!("{key}.blake3"))).unwrap();
        let record_path = cache.path().join(format!("{key}.checked"));
        let record = std::fs::read_to_string(&record_path).unwrap();
        let lines: Vec<&str> = record.lines().collect();
        assert_eq!(lines[0], digest.trim(), "the artifact's digest first: {record}");
        assert!(lines[1].starts_with("checked wpool "), "{record}");
        assert_eq!(lines[2], format!("init {}", u8::from(first.has_init())), "{record}");
        assert_eq!(lines[3], format!("reducer {}", u8::from(first.is_reducer())), "{record}");
        assert!(lines.iter().any(|l| l.starts_with("export ")), "{record}");
        // Loaded from the record: the same kernel as checked.
        let second = load();
        assert_eq!(second.info(), first.info(), "{name}");
        assert_eq!((second.has_init(), second.is_reducer()), (first.has_init(), first.is_reducer()), "{name}");
        // A record of another version, of another artifact or a cut one is
        // not used: the kernel is checked again and the record rewritten.
        let init = format!("init {}", u8::from(first.has_init()));
        let wrong_init = format!("init {}", u8::from(!first.has_init()));
        for stale in [
            record.replacen("checked wpool ", "checked wpool 0.0.0-", 1).replacen(&init, &wrong_init, 1),
            record.replacen(&lines[0][..8], "00000000", 1).replacen(&init, &wrong_init, 1),
            lines[..4].join("\n") + "\n",
        ] {
            std::fs::write(&record_path, &stale).unwrap();
            let third = load();
            assert_eq!((third.has_init(), third.info()), (first.has_init(), first.info()), "{name}");
            assert_eq!(std::fs::read_to_string(&record_path).unwrap(), record, "{name}: rewritten");
        }
        assert_eq!(artifacts(cache.path()).len(), 1);
        if name == "upper" {
            // A run loads it from the record; its workers map the artifact.
            assert_eq!(map_one(cache.path(), "upper", "abc", None), "ABC\n");
        }
    }
}

#[test]
fn a_kernel_file_loaded_before_is_found_by_its_inode_and_times_without_reading_it() {
    use wpool::{Kernel, Limits, Pool};
    let cache = tempfile::tempdir().unwrap();
    // This test's own process: no other test sees the variable.
    std::env::set_var("WPOOL_CACHE_DIR", cache.path());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k.wasm");
    std::fs::copy(kernel_path("upper"), &file).unwrap();
    let run = |k: &Kernel, limits: Limits, item: &str| {
        let mut p = Pool::builder(k.clone()).workers(1).limits(limits).build().unwrap();
        String::from_utf8(p.map([item]).unwrap().remove(0).unwrap().to_vec()).unwrap()
    };
    let indexes = || {
        let mut v: Vec<String> = std::fs::read_dir(cache.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "source"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        v.sort();
        v
    };

    // A file that changed less than 2 s ago is read and not indexed: it
    // may still be written, or its file system's times may be coarse.
    let fresh = Kernel::from_file(&file).unwrap();
    assert!(fresh.wasm_was_read());
    assert_eq!(indexes(), Vec::<String>::new());
    std::thread::sleep(Duration::from_millis(2100));

    // Read, and indexed by the file's inode and times.
    let first = Kernel::from_file(&file).unwrap();
    assert!(first.wasm_was_read());
    let key = artifacts(cache.path())[0].trim_end_matches(".cwasm").to_string();
    assert_eq!(indexes(), [format!("{key}\n")]);
    // Found through the index: not read, the same kernel, and it runs.
    let second = Kernel::from_file(&file).unwrap();
    assert!(!second.wasm_was_read());
    assert_eq!((second.info(), second.has_init()), (first.info(), first.has_init()));
    assert_eq!(run(&second, Limits::default(), "abc"), "ABC");
    assert!(!second.wasm_was_read(), "local workers get the artifact");
    // Other codegen settings compile the wasm: read then.
    let fuel = Limits { fuel: Some(1 << 30), ..Limits::default() };
    assert_eq!(run(&second, fuel.clone(), "def"), "DEF");
    assert!(second.wasm_was_read());

    // An index naming an artifact that is gone is a miss: read and
    // compiled again.
    for ext in ["cwasm", "blake3", "checked"] {
        std::fs::remove_file(cache.path().join(format!("{key}.{ext}"))).unwrap();
    }
    let again = Kernel::from_file(&file).unwrap();
    assert!(again.wasm_was_read());
    assert_eq!(run(&again, Limits::default(), "ghi"), "GHI");

    // New times, the same bytes: read again (and not indexed, too new).
    let unread = Kernel::from_file(&file).unwrap();
    assert!(!unread.wasm_was_read());
    let f = std::fs::File::options().write(true).open(&file).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(60)).unwrap();
    drop(f);
    assert!(Kernel::from_file(&file).unwrap().wasm_was_read());
    assert_eq!(indexes(), [format!("{key}\n")]);
    // Other bytes in the same file: never the old kernel.
    std::fs::write(&file, std::fs::read(kernel_path("echo")).unwrap()).unwrap();
    let echo = Kernel::from_file(&file).unwrap();
    assert!(echo.wasm_was_read());
    assert_eq!(run(&echo, Limits::default(), "abc"), "abc");
    // A kernel loaded unread whose file changed since cannot be read for
    // other settings: an error naming the file, not the other bytes.
    match Pool::builder(unread).workers(1).limits(fuel).build() {
        Err(e) => {
            let cause = std::error::Error::source(&e).map(|c| c.to_string()).unwrap_or_default();
            assert!(e.to_string().contains("k.wasm"), "{e}");
            assert!(cause.contains("changed since the kernel was loaded"), "{e}: {cause}");
        }
        Ok(_) => panic!("built a pool from a kernel file that changed"),
    }
}

#[test]
fn bash_completes_a_subcommands_flags_and_nested_subcommands() {
    // Subcommands build their arguments only when used: the script must
    // still hold every one of them, and `help`'s nested subcommands.
    let o = run(with_args(wpool(), &["completions", "bash"]), b"");
    assert!(o.status.success(), "{}", stderr(&o));
    let script = temp_file(&o.stdout);
    let complete = |words: &str| {
        let n = words.split(' ').count() - 1;
        let check = Command::new("bash")
            .arg("-c")
            .arg(format!(r#"source "$1" && COMP_WORDS=({words}) COMP_CWORD={n} && _wpool wpool "${{COMP_WORDS[{n}]}}" "${{COMP_WORDS[{}]}}" && echo "${{COMPREPLY[@]}}""#, n - 1))
            .arg("bash")
            .arg(script.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(check.status.success(), "{words}: {}", String::from_utf8_lossy(&check.stderr));
        String::from_utf8_lossy(&check.stdout).trim().to_string()
    };
    assert_eq!(complete("wpool map --time"), "--timeout");
    assert_eq!(complete("wpool pipeline --jobs-per"), "--jobs-per-stage");
    assert!(complete("wpool cache c").split(' ').any(|w| w == "clean"));
    assert!(complete("wpool help cache c").split(' ').any(|w| w == "clean"), "{}", complete("wpool help cache c"));
}

//! Fault matrix, group B: bad input through the `wpool` CLI. Every case
//! gets a clear message naming the thing and the right exit code.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use wpool_tests::*;

fn map_cmd(kernel: &std::path::Path) -> std::process::Command {
    let mut c = wpool();
    c.arg("map").arg(kernel);
    c
}

#[test]
fn b01_missing_kernel_path_exits_2_naming_it() {
    let o = run(map_cmd(std::path::Path::new("/no/such/kernel.wasm")), b"x\n");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("kernel not found: /no/such/kernel.wasm"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}

#[test]
fn b02_text_or_empty_kernel_is_not_a_component() {
    for contents in [&b"hello, I am text\n"[..], &b""[..]] {
        let f = temp_file(contents);
        let o = run(map_cmd(f.path()), b"x\n");
        assert_eq!(o.status.code(), Some(2));
        let err = stderr(&o);
        assert!(err.contains("not a WebAssembly component"), "{err}");
        assert!(err.contains(&f.path().display().to_string()), "{err}");
    }
}

#[test]
fn b03_truncated_or_corrupt_wasm_is_a_validation_error() {
    let good = std::fs::read(kernel_path("upper")).unwrap();
    let truncated = temp_file(&good[..good.len() / 2]);
    let o = run(map_cmd(truncated.path()), b"x\n");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid WebAssembly component"), "{}", stderr(&o));

    let mut corrupt = good.clone();
    for b in corrupt.iter_mut().skip(200).step_by(97) {
        *b ^= 0x5a;
    }
    let corrupt = temp_file(&corrupt);
    let o = run(map_cmd(corrupt.path()), b"x\n");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid WebAssembly component"), "{}", stderr(&o));
}

#[test]
fn b04_core_module_or_other_world_names_the_expected_world() {
    // The smallest valid core module: magic and version 1.
    let core = temp_file(b"\0asm\x01\0\0\0");
    let o = run(map_cmd(core.path()), b"x\n");
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("core WebAssembly module, not a component"), "{err}");
    assert!(err.contains("wpool:kernel/kernel"), "{err}");

    let o = run(map_cmd(&kernel_path("wrong-world")), b"x\n");
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("not a component of world `wpool:kernel/kernel`"), "{err}");
    assert!(err.contains("func(x: u32) -> u32"), "says what differs: {err}");
    assert!(err.contains("func(input: list<u8>) -> result<list<u8>, string>"), "{err}");
}

#[test]
fn b05_unsatisfied_imports_are_listed() {
    for flavour in ["wasip2", "unknown"] {
        let o = run(map_cmd(&kernel_path_of(flavour, "needs-import")), b"x\n");
        assert_eq!(o.status.code(), Some(2));
        let err = stderr(&o);
        assert!(err.contains("imports that wpool does not provide: wpool-test:needs/secrets@0.1.0"), "{err}");
    }
}

#[test]
fn b06_empty_input_exits_0_with_no_output() {
    let o = run(map_cmd(&kernel_path("upper")), b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    let empty = temp_file(b"");
    let mut c = map_cmd(&kernel_path("upper"));
    c.arg(empty.path());
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stdout.is_empty());
}

#[test]
fn b07_missing_input_file_exits_2_before_any_work() {
    let good = temp_file(b"a\nb\n");
    let mut c = map_cmd(&kernel_path("upper"));
    c.arg(good.path()).arg("/no/such/input.txt");
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read input /no/such/input.txt"), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "nothing runs when an input is missing");
}

#[test]
fn b08_item_over_the_size_cap_fails_alone() {
    let mut input = b"small\n".to_vec();
    input.extend(vec![b'x'; 4096]);
    input.extend(b"\nafter\n");
    let mut c = map_cmd(&kernel_path("upper"));
    c.args(["--max-item-size", "1KiB", "--json"]);
    let o = run(c, &input);
    assert_eq!(o.status.code(), Some(1));
    let lines: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["ok"]["text"], "SMALL");
    assert_eq!(lines[1]["error"]["kind"], "item_too_large");
    assert_eq!(lines[1]["index"], 1);
    assert_eq!(lines[2]["ok"]["text"], "AFTER");

    // A result over the cap fails its item alone too, typed, not as a trap.
    let mut c = map_cmd(&kernel_path("hostile"));
    c.args(["--max-item-size", "1MiB", "--json"]);
    let o = run(c, b"result:2\nok\n");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["error"]["kind"], "item_too_large", "{lines:?}");
    assert_eq!(lines[1]["ok"]["text"], "ok");

    // An oversized line is skipped as it is read, never held whole: the
    // host's peak memory stays far below the line's 200 MB.
    let big = tempfile::NamedTempFile::new().unwrap();
    {
        let mut f = std::io::BufWriter::new(big.as_file());
        let block = vec![b'x'; 1 << 20];
        for _ in 0..200 {
            f.write_all(&block).unwrap();
        }
        f.write_all(b"\nafter\n").unwrap();
    }
    let mut c = map_cmd(&kernel_path("upper"));
    c.args(["--max-item-size", "1KiB"]).arg(big.path()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let (status, peak_kib) = wait_with_peak_rss(child);
    assert_eq!(status.code(), Some(1));
    assert!(peak_kib < 100 << 10, "host (or a worker) peaked at {peak_kib} KiB for a 200 MB line over the cap");
}

/// Waits for `child` and returns its status and the peak resident set of it
/// and the children it waited for (its workers), in KiB.
fn wait_with_peak_rss(mut child: std::process::Child) -> (std::process::ExitStatus, i64) {
    use std::os::unix::process::ExitStatusExt;
    // Drain its output so that it never blocks on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let t2 = std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let mut status = 0;
    // SAFETY: rusage is plain data, filled in by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, which nothing else waits for.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(r, child.id() as i32, "wait4: {}", std::io::Error::last_os_error());
    let _ = t1.join();
    let _ = t2.join();
    (std::process::ExitStatus::from_raw(status), usage.ru_maxrss)
}

#[test]
fn b09_bad_flag_values_exit_2_with_the_valid_forms() {
    for (flag, value, hint) in [
        ("-j", "0", "at least 1"),
        ("--timeout", "abc", "500ms"),
        ("--memory", "12XB", "64MiB"),
        ("--chunksize", "0", "auto"),
        ("--jobs", "many", "-j 4"),
    ] {
        let mut c = map_cmd(&kernel_path("upper"));
        c.args([flag, value]);
        let o = run(c, b"x\n");
        assert_eq!(o.status.code(), Some(2), "{flag} {value}");
        let err = stderr(&o);
        assert!(err.contains(hint), "{flag} {value}: {err}");
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn f5_a_max_item_size_no_item_can_have_is_refused_at_parse_time_with_the_number() {
    let mut c = map_cmd(&kernel_path("upper"));
    c.args(["--max-item-size", "3GiB"]);
    let o = run(c, b"x\n");
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("--max-item-size") && err.contains("3221225472 bytes"), "{err}");
    assert!(err.contains("2GiB (2147483648 bytes)"), "names the largest that works: {err}");
    assert!(o.stdout.is_empty());
    // The library refuses it too, before any worker starts.
    let limits = wpool::Limits { max_item_size: 3 << 30, ..wpool::Limits::default() };
    let e = wpool::Pool::builder(kernel("upper")).workers(1).limits(limits).build().unwrap_err();
    assert!(
        matches!(e, wpool::Error::ItemSizeTooLarge { len: 3221225472, max: 2147483648 })
            && e.to_string().contains("3221225472")
            && !e.to_string().contains("--"),
        "{e}"
    );
    // Up to the largest, it is accepted.
    let mut c = map_cmd(&kernel_path("upper"));
    c.args(["--max-item-size", "2GiB"]);
    let o = run(c, b"x\n");
    assert_eq!(stdout(&o), "X\n", "{}", stderr(&o));
}

#[test]
fn b10_non_utf8_results_are_base64_in_json() {
    let mut c = map_cmd(&kernel_path("echo"));
    c.args(["--json", "-0"]);
    let o = run(c, b"\xff\xfe\x00plain\x00");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0], serde_json::json!({"index": 0, "ok": {"bytes": "//4="}}));
    assert_eq!(lines[1], serde_json::json!({"index": 1, "ok": {"text": "plain"}}));
}

#[test]
fn b11_stdout_closed_early_is_a_quiet_exit() {
    let big: Vec<u8> = (0..200_000).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
    let input = temp_file(&big);
    let mut c = map_cmd(&kernel_path("upper"));
    c.arg(input.path()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "LINE 0\n");
    let workers = children_of(pid);
    assert!(!workers.is_empty(), "the run's workers, seen before stdout closes");
    drop(out); // like `| head -1`
    let status = {
        let start = std::time::Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "wpool hung after its stdout closed");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.is_empty(), "quiet: {err}");
    assert!(workers.iter().all(|w| !alive(*w)), "workers cleaned up");
}

#[test]
fn b12_crlf_empty_lines_and_no_final_newline_are_preserved() {
    let o = run(map_cmd(&kernel_path("echo")), b"a\r\n\nb\r\n\nlast");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(o.stdout, b"a\r\n\nb\r\n\nlast\n");
}

#[test]
fn files_mode_makes_each_input_one_item_and_names_it_on_error() {
    let a = temp_file(b"multi\nline\n");
    let b = temp_file(b"err:broken");
    let mut c = wpool();
    c.args(["map", "--files"]).arg(kernel_path("hostile")).arg(a.path()).arg(b.path());
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(o.stdout, b"multi\nline\n\n");
    assert!(stderr(&o).contains(&format!("item 1 ({}): kernel: broken", b.path().display())), "{}", stderr(&o));
}

#[test]
fn inspect_describes_accepted_and_rejected_kernels() {
    let mut c = wpool();
    c.arg("inspect").arg(kernel_path("upper"));
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    assert!(text.contains("wpool:kernel/kernel (accepted)"), "{text}");
    assert!(text.contains("map: func(input: list<u8>) -> result<list<u8>, string>"), "{text}");
    assert!(text.contains("wasi:"), "lists the WASI imports: {text}");

    let mut c = wpool();
    c.arg("inspect").arg(kernel_path("wrong-world"));
    let o = run(c, b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("rejected"), "{}", stdout(&o));
}

fn inspect(name: &str) -> (Option<i32>, String) {
    let mut c = wpool();
    c.arg("inspect").arg(kernel_path(name));
    let o = run(c, b"");
    (o.status.code(), stdout(&o))
}

#[test]
fn f4_inspect_reports_the_worlds_a_component_satisfies_and_the_command_that_takes_it() {
    let (code, text) = inspect("sum");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("worlds:  wpool:kernel/reducer (accepted)\n"), "{text}");
    assert!(text.contains("use:     wpool mapreduce --map MAP.wasm --reduce "), "{text}");
    assert!(text.contains("reduce: func(key: list<u8>, values: list<list<u8>>) -> result<list<u8>, string>"), "{text}");
    assert!(!text.contains("wpool:kernel/kernel"), "a reducer is no map kernel: {text}");

    let (code, text) = inspect("dict");
    assert_eq!(code, Some(0), "{text}");
    // Kernels built with the Rust SDK also export `map-batch`.
    assert!(
        text.contains(
            "worlds:  wpool:kernel/batch-kernel-with-init, wpool:kernel/kernel-with-init, wpool:kernel/batch-kernel, \
             wpool:kernel/kernel (accepted)\n"
        ),
        "{text}"
    );
    assert!(text.contains("use:     wpool map --init FILE "), "{text}");
    assert!(text.contains("init:    called once per kernel instance"), "{text}");
    assert!(text.contains("init: func(config: list<u8>) -> result<_, string>"), "{text}");

    let (code, text) = inspect("upper");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("worlds:  wpool:kernel/batch-kernel, wpool:kernel/kernel (accepted)\n"), "{text}");
    assert!(text.contains("batch:   `map-batch` may be given several small items"), "{text}");
    assert!(text.contains(&format!("use:     wpool map {} [INPUT]...", kernel_path("upper").display())), "{text}");
    assert!(text.contains("wpool pipeline --stage "), "{text}");
    assert!(!text.contains("init"), "{text}");

    // A kernel of the plain `kernel` world (its own bindings, no SDK).
    let (code, text) = inspect("plain");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("worlds:  wpool:kernel/kernel (accepted)\n"), "{text}");
    assert!(!text.contains("batch"), "{text}");

    let (code, text) = inspect("wrong-world");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("worlds:  none: rejected: ") && text.contains("export `map` has type func(x: u32) -> u32"),
        "{text}"
    );
    assert!(!text.contains("use:"), "{text}");
}

#[test]
fn fail_fast_stops_at_the_first_failure() {
    let mut c = map_cmd(&kernel_path("hostile"));
    c.args(["--fail-fast", "-j", "1", "--chunksize", "1"]);
    let o = run(c, b"a\nerr:stop\nb\nc\n");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "a\n");
    assert!(stderr(&o).contains("kernel: stop"));
}

#[test]
fn a_file_before_stdin_is_mapped_without_waiting_for_stdin() {
    use std::io::BufRead;
    let file = temp_file(b"from the file\nand its last line\n");
    let mut cmd = wpool();
    cmd.args(["map", "-j", "1"]).arg(kernel_path("upper")).arg(file.path()).arg("-");
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    // stdin stays open and silent: the file's items come out all the same.
    for expected in ["FROM THE FILE\n", "AND ITS LAST LINE\n"] {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, expected);
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn stdout_on_a_full_disk_exits_2_naming_standard_output() {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let input = temp_file(&(0..100_000).flat_map(|i| format!("{i}\n").into_bytes()).collect::<Vec<u8>>());
    let mut c = map_cmd(&kernel_path("upper"));
    c.arg(input.path()).stdout(full).stderr(std::process::Stdio::piped());
    let o = c.spawn().unwrap().wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("writing results to standard output: No space left on device"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn stdout_closed_by_the_reader_ends_the_run_quietly() {
    use std::io::BufRead;
    let input = temp_file(&(0..200_000).flat_map(|i| format!("{i}\n").into_bytes()).collect::<Vec<u8>>());
    let mut c = map_cmd(&kernel_path("upper"));
    c.arg(input.path()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "0\n");
    drop(out);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "like `head`'s writers: {}", stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

/// Cases of [`fuzz_mutated_kernels_load_or_fail_typed_and_never_break_the_host`]:
/// `WPOOL_FUZZ_CASES`, else 2000.
fn kernel_fuzz_cases() -> u32 {
    std::env::var("WPOOL_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2000)
}

/// One fuzz case through the path `wpool map` takes: load `bytes` as a
/// kernel (artifacts cached in `cache`), start one worker with a 1 s
/// timeout and 64 MiB, `init` it if asked, map `items`. On a thread of its
/// own, so that a hang fails the case instead of the suite.
fn run_fuzz_case(
    name: &'static str,
    bytes: Vec<u8>,
    cache: &std::path::Path,
    init: Option<Vec<u8>>,
    items: &'static [&'static str],
) -> Result<Result<Vec<wpool::ItemResult>, wpool::Error>, proptest::test_runner::TestCaseError> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let dir = cache.to_path_buf();
    std::thread::spawn(move || {
        let outcome = (|| {
            let kernel = wpool::Kernel::from_bytes_with_cache(name, bytes, dir)?;
            let limits = wpool::Limits {
                timeout: Some(Duration::from_secs(1)),
                memory: Some(64 << 20),
                ..wpool::Limits::default()
            };
            let mut builder = wpool::Pool::builder(kernel).workers(1).retries(0).limits(limits);
            if let Some(config) = init {
                builder = builder.init(config);
            }
            builder.build()?.map(items.iter().copied())
        })();
        let _ = tx.send(outcome);
    });
    rx.recv_timeout(Duration::from_secs(120)).map_err(|_| proptest::test_runner::TestCaseError::fail("hung"))
}

/// Hostile components: the bundled kernels with bytes flipped, set,
/// inserted or removed, through the path `wpool map` takes (load, validate,
/// type-check the contract, compile, start a worker, run one item). The
/// host runs in this process: it must never panic or hang; every case ends
/// in a load error, a pool error, a result or a typed item error.
#[test]
fn fuzz_mutated_kernels_load_or_fail_typed_and_never_break_the_host() {
    use proptest::prelude::*;
    let kernels: Vec<Vec<u8>> = ["echo", "upper", "hostile", "wordcount"]
        .iter()
        .map(|k| std::fs::read(kernel_path_of("unknown", k)).unwrap())
        .collect();
    let cache = tempfile::tempdir().unwrap();
    let loaded = std::cell::Cell::new(0u32);
    let ran = std::cell::Cell::new(0u32);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: kernel_fuzz_cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let edits = proptest::collection::vec((any::<u32>(), 0u8..4, any::<u8>()), 1..8);
    let result = runner.run(&(0..kernels.len(), edits), |(k, edits)| {
        let mut bytes = kernels[k].clone();
        for (at, op, value) in edits {
            let at = at as usize % bytes.len();
            match op {
                0 => bytes[at] ^= 1 << (value % 8),
                1 => bytes[at] = value,
                2 => bytes.insert(at, value),
                _ => {
                    bytes.remove(at);
                }
            }
        }
        let outcome = run_fuzz_case("mutant", bytes, cache.path(), None, &["item"])?;
        match outcome {
            Ok(out) => {
                prop_assert_eq!(out.len(), 1);
                loaded.set(loaded.get() + 1);
                ran.set(ran.get() + 1);
            }
            Err(e) => {
                // A load error names the kernel; none is a bare I/O error.
                let text = e.to_string();
                prop_assert!(!matches!(e, wpool::Error::Io(_)), "{}", text);
                if !text.contains("mutant") {
                    loaded.set(loaded.get() + 1);
                }
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "fuzz_mutated_kernels: {} cases, {} loaded, {} ran an item",
        kernel_fuzz_cases(),
        loaded.get(),
        ran.get()
    );
}

/// Cases of [`fuzz_generated_components_load_or_fail_typed_and_never_break_the_host`]:
/// `WPOOL_SMITH_CASES`, else 2000.
fn smith_cases() -> u32 {
    std::env::var("WPOOL_SMITH_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2000)
}

/// The core exports a module needs to become a component of `world` (in
/// `wit/wpool.wit`): each function with its canonical-ABI signature and
/// post-return, `cabi_realloc`, and a one-page `memory`; every body
/// `unreachable`. wasm-smith then generates modules with exactly these
/// exports and random everything else.
fn exports_of(resolve: &wit_parser::Resolve, world: wit_parser::WorldId) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction, MemorySection, MemoryType,
        Module, TypeSection, ValType,
    };
    use wit_parser::abi::{AbiVariant, WasmType};
    use wit_parser::{LiftLowerAbi, ManglingAndAbi, WasmExport, WasmExportKind, WorldItem};
    let mangling = ManglingAndAbi::Legacy(LiftLowerAbi::Sync);
    let val = |t: &WasmType| match t {
        WasmType::I64 | WasmType::PointerOrI64 => ValType::I64,
        WasmType::F32 => ValType::F32,
        WasmType::F64 => ValType::F64,
        _ => ValType::I32,
    };
    let mut funcs: Vec<(String, Vec<ValType>, Vec<ValType>)> = Vec::new();
    for item in resolve.worlds[world].exports.values() {
        let WorldItem::Function(func) = item else { continue };
        let sig = resolve.wasm_signature(AbiVariant::GuestExport, func);
        let results: Vec<ValType> = sig.results.iter().map(val).collect();
        let export = |kind| resolve.wasm_export_name(mangling, WasmExport::Func { interface: None, func, kind });
        funcs.push((export(WasmExportKind::Normal), sig.params.iter().map(val).collect(), results.clone()));
        if !results.is_empty() {
            funcs.push((export(WasmExportKind::PostReturn), results, vec![]));
        }
    }
    funcs.push((resolve.wasm_export_name(mangling, WasmExport::Realloc), vec![ValType::I32; 4], vec![ValType::I32]));
    let (mut types, mut functions, mut exports, mut code) =
        (TypeSection::new(), FunctionSection::new(), ExportSection::new(), CodeSection::new());
    for (i, (name, params, results)) in funcs.iter().enumerate() {
        types.ty().function(params.iter().copied(), results.iter().copied());
        functions.function(i as u32);
        exports.export(name, ExportKind::Func, i as u32);
        let mut body = Function::new([]);
        body.instruction(&Instruction::Unreachable).instruction(&Instruction::End);
        code.function(&body);
    }
    let mut memory = MemorySection::new();
    memory.memory(MemoryType { minimum: 1, maximum: None, memory64: false, shared: false, page_size_log2: None });
    exports.export(&resolve.wasm_export_name(mangling, WasmExport::Memory), ExportKind::Memory, 0);
    let mut module = Module::new();
    module.section(&types).section(&functions).section(&memory).section(&exports).section(&code);
    module.finish()
}

/// Hostile components built from scratch: wasm-smith generates a core
/// module with the exports of one of the contract's worlds (random types,
/// globals, tables, data, function bodies, start function; random features
/// in a quarter of the cases), wit-component wraps it with the world's type, and it
/// goes through the path `wpool map` takes (load, validate, type-check,
/// compile, start a worker, init, run three items). Random code returns
/// random pointers, so lifting results fails in most ways it can; loops are
/// bounded (wasm-smith's fuel) and the timeout catches the rest. The host
/// must never panic or hang: every case ends in a load error, a pool error,
/// results, or typed item errors.
#[test]
fn fuzz_generated_components_load_or_fail_typed_and_never_break_the_host() {
    use proptest::prelude::*;
    let mut resolve = wit_parser::Resolve::new();
    let contract = root().join("wit").join("wpool.wit");
    let package = resolve.push_file(&contract).unwrap();
    let worlds: Vec<(&str, Vec<u8>)> = ["kernel", "kernel-with-init", "batch-kernel", "batch-kernel-with-init"]
        .into_iter()
        .map(|w| {
            let id = resolve.select_world(&[package], Some(w)).unwrap();
            (w, exports_of(&resolve, id))
        })
        .collect();
    let cache = tempfile::tempdir().unwrap();
    let counts = std::cell::RefCell::new(std::collections::BTreeMap::<&str, u32>::new());
    let count = |what| *counts.borrow_mut().entry(what).or_default() += 1;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: smith_cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (0..worlds.len(), 0..4, proptest::collection::vec(any::<u8>(), 64..4096));
    let result = runner.run(&strategy, |(w, features, seed)| {
        let random_features = features == 0;
        let (world_name, exports) = &worlds[w];
        let mut u = arbitrary::Unstructured::new(&seed);
        let mut config = if random_features {
            <wasm_smith::Config as arbitrary::Arbitrary>::arbitrary(&mut u).unwrap_or_default()
        } else {
            // What this wasmtime build accepts (built without GC, so
            // without reference types either).
            wasm_smith::Config {
                reference_types_enabled: false,
                gc_enabled: false,
                exceptions_enabled: false,
                threads_enabled: false,
                memory64_enabled: false,
                wide_arithmetic_enabled: false,
                ..wasm_smith::Config::default()
            }
        };
        config.exports = Some(exports.clone());
        config.max_imports = 0;
        config.max_funcs = config.max_funcs.min(50);
        config.max_instructions = config.max_instructions.min(2_000);
        let Ok(mut module) = wasm_smith::Module::new(config, &mut u) else {
            count("not generated");
            return Ok(());
        };
        if module.ensure_termination(10_000).is_err() {
            count("not generated");
            return Ok(());
        }
        let mut core = module.to_bytes();
        let world = resolve.select_world(&[package], Some(world_name)).unwrap();
        wit_component::embed_component_metadata(&mut core, &resolve, world, wit_component::StringEncoding::UTF8, false)
            .unwrap();
        let component = match wit_component::ComponentEncoder::default().module(&core).and_then(|e| e.encode()) {
            Ok(c) => c,
            Err(_) => {
                count("not encodable");
                return Ok(());
            }
        };
        count("components");
        let init = world_name.contains("init").then(|| b"config".to_vec());
        let outcome = run_fuzz_case("generated", component, cache.path(), init, &["a", "bb", ""])?;
        match outcome {
            Ok(out) => {
                prop_assert_eq!(out.len(), 3);
                count(if out.iter().any(|r| r.is_ok()) { "ran, some ok" } else { "ran, all typed item errors" });
            }
            Err(e) => {
                prop_assert!(!matches!(e, wpool::Error::Io(_)), "{}", e);
                if std::env::var_os("WPOOL_SMITH_SHOW").is_some() {
                    eprintln!("refused ({random_features}): {}", e.to_string().lines().next().unwrap_or(""));
                }
                count("refused with a typed error");
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!("fuzz_generated_components: {} cases: {:?}", smith_cases(), counts.borrow());
    assert!(counts.borrow().get("components").copied().unwrap_or(0) > smith_cases() / 4, "{:?}", counts.borrow());
}

/// `--unordered` (results taken in batches as they come): every result
/// once, in some order, every failure named on stderr, exit 1.
#[test]
fn unordered_output_has_every_result_once_and_every_failure_on_stderr() {
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for i in 0..20_000 {
        if i % 997 == 0 {
            input.extend_from_slice(format!("err:bad {i}\n").as_bytes());
        } else {
            input.extend_from_slice(format!("ok {i}\n").as_bytes());
            expected.push(format!("ok {i}"));
        }
    }
    let mut c = wpool();
    c.args(["map", "-j", "2", "--unordered"]).arg(kernel_path("hostile"));
    let o = run(c, &input);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let mut got: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    let failures = stderr(&o).lines().filter(|l| l.contains(": kernel: bad ")).count();
    assert_eq!(failures, 21, "{}", stderr(&o));
}

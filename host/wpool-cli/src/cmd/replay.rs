//! `wpool replay JOBLOG --item N`: one recorded item run again, alone, in
//! one worker, with the options its run recorded; `--bundle DIR` writes
//! the kernel, the item and the options into DIR instead, and `wpool replay
//! DIR` runs that anywhere (a bug report in one folder).
//!
//! The item runs through `wpool map` itself (this executable, `-j 1`), so
//! that a replay goes exactly the way the run went: same flags, same
//! checks, same output.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rusqlite::OptionalExtension;
use serde_json::{json, Value};

use crate::exit::Exit;
use crate::joblog;

/// Where the item's bytes come from, and how `map` is to read them.
enum Framing {
    Lines,
    Nul,
    /// A whole file: `map --files PATH`.
    File(PathBuf),
}

/// Everything a replay needs, from a joblog or from a bundle.
struct Case {
    /// What is replayed, said first on stderr.
    what: String,
    kernel: PathBuf,
    options: serde_json::Map<String, Value>,
    item: Vec<u8>,
    framing: Framing,
}

pub fn run(
    source: &Path,
    item: Option<u64>,
    run: Option<i64>,
    bundle: Option<&Path>,
    deterministic: bool,
) -> Result<Exit> {
    let case = if source.is_dir() {
        if item.is_some() || run.is_some() || bundle.is_some() {
            anyhow::bail!("{}: a bundle holds one item: no --item, --run or --bundle", source.display());
        }
        from_bundle(source)?
    } else {
        let index = item.with_context(|| format!("{}: which item? (--item N)", source.display()))?;
        from_joblog(source, index, run)?
    };
    if let Some(dir) = bundle {
        write_bundle(&case, dir)?;
        println!("{}: kernel.wasm, item, bundle.json (run it with `wpool replay {}`)", dir.display(), dir.display());
        return Ok(Exit::Success);
    }
    crate::say(format_args!("wpool: replaying {}, alone in one worker", case.what));
    replay(&case, deterministic)
}

fn from_joblog(path: &Path, index: u64, run: Option<i64>) -> Result<Case> {
    let db = joblog::open_existing(path)?;
    // By default, the last run that finished the item (after --resume the
    // last run may have replayed it, not run it).
    let run = match run {
        Some(run) => Some(run),
        None => db
            .query_row("SELECT run FROM items WHERE idx = ?1 ORDER BY run DESC LIMIT 1", [index as i64], |r| r.get(0))
            .optional()?,
    };
    let run_row: Option<(i64, String, String, String, String)> = db
        .query_row(
            "SELECT id, kernel, kernel_sha256, options, cwd FROM runs WHERE ?1 IS NULL OR id = ?1
             ORDER BY id DESC LIMIT 1",
            [run],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((run, kernel, kernel_sha, options, cwd)) = run_row else {
        match run {
            Some(run) => anyhow::bail!("{}: no run {run}", path.display()),
            None => anyhow::bail!("{}: records no run", path.display()),
        }
    };
    let item_row: Option<(String, Option<Vec<u8>>)> = db
        .query_row("SELECT origin, input_sha256 FROM items WHERE run = ?1 AND idx = ?2", [run, index as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let Some((origin, input_sha)) = item_row else {
        anyhow::bail!("{}: run {run} recorded no item {index} (it did not finish, or there is none)", path.display());
    };
    if kernel.contains(" | ") {
        anyhow::bail!(
            "{}: run {run} ran several kernels (a pipeline or MapReduce): replay runs items of `wpool map` runs",
            path.display()
        );
    }
    let cwd = PathBuf::from(cwd);
    let kernel = cwd.join(kernel);
    if joblog::file_sha256(&kernel)? != kernel_sha {
        anyhow::bail!("{}: not the kernel that run {run} ran (its SHA-256 differs)", kernel.display());
    }
    let options = match serde_json::from_str(&options) {
        Ok(Value::Object(map)) => map,
        _ => anyhow::bail!("{}: run {run}: unreadable options", path.display()),
    };
    let split = options.get("split").and_then(Value::as_str).unwrap_or("lines");
    let (bytes, framing) =
        read_origin(&cwd, &origin, split).with_context(|| format!("item {index} ({origin}): reading it again"))?;
    if input_sha.as_deref() != Some(&joblog::input_sha256(&bytes)[..]) {
        anyhow::bail!("item {index} ({origin}) changed since run {run} (its SHA-256 differs)");
    }
    Ok(Case {
        what: format!("item {index} ({origin}) of run {run} in {}", path.display()),
        kernel,
        options,
        item: bytes,
        framing,
    })
}

/// Reads an item again from where it came from: `file:line N`, `file:record
/// N` or (whole files) `file`.
fn read_origin(cwd: &Path, origin: &str, split: &str) -> Result<(Vec<u8>, Framing)> {
    if origin.starts_with("<stdin>") {
        anyhow::bail!("it came from standard input, which cannot be read again");
    }
    if split == "files" {
        let path = cwd.join(origin);
        return Ok((std::fs::read(&path).with_context(|| path.display().to_string())?, Framing::File(path)));
    }
    let (name, n, sep, framing) = match split {
        "nul" => {
            let (name, n) = origin.rsplit_once(":record ").context("not a `file:record N` origin")?;
            (name, n, 0u8, Framing::Nul)
        }
        _ => {
            let (name, n) = origin.rsplit_once(':').context("not a `file:line` origin")?;
            (name, n, b'\n', Framing::Lines)
        }
    };
    let n: usize = n.parse().context("not a record number")?;
    let path = cwd.join(name);
    let file = std::fs::File::open(&path).with_context(|| path.display().to_string())?;
    let mut reader = std::io::BufReader::new(file);
    let mut record = Vec::new();
    for _ in 0..n {
        record.clear();
        if reader.read_until(sep, &mut record)? == 0 {
            anyhow::bail!("{} has fewer than {n} records now", path.display());
        }
    }
    if record.last() == Some(&sep) {
        record.pop();
    }
    Ok((record, framing))
}

const BUNDLE: &str = "bundle.json";

fn write_bundle(case: &Case, dir: &Path) -> Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        anyhow::bail!("--bundle {}: not empty", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("--bundle {}", dir.display()))?;
    std::fs::copy(&case.kernel, dir.join("kernel.wasm"))
        .with_context(|| format!("--bundle: copying {}", case.kernel.display()))?;
    std::fs::write(dir.join("item"), &case.item)?;
    let mut options = case.options.clone();
    // The files the options name travel with the bundle.
    for name in ["init", "data"] {
        if let Some(file) = options.get(name).and_then(Value::as_str).map(PathBuf::from) {
            std::fs::copy(&file, dir.join(name)).with_context(|| format!("--bundle: copying {}", file.display()))?;
            options.insert(name.into(), json!(name));
        }
    }
    if options.get("allow_dir").and_then(Value::as_array).is_some_and(|dirs| !dirs.is_empty()) {
        crate::say(format_args!(
            "wpool: --bundle: the run was granted directories (--allow-dir); they are not in the bundle, and a \
             replay from it runs without them"
        ));
        options.insert("allow_dir".into(), json!([]));
    }
    let framing = match case.framing {
        Framing::Lines => "lines",
        Framing::Nul => "nul",
        Framing::File(_) => "files",
    };
    let manifest = json!({ "wpool_version": env!("CARGO_PKG_VERSION"), "split": framing, "options": options });
    std::fs::write(dir.join(BUNDLE), serde_json::to_vec_pretty(&manifest)?)?;
    Ok(())
}

fn from_bundle(dir: &Path) -> Result<Case> {
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.join(BUNDLE)).with_context(|| format!("{}: not a bundle (no {BUNDLE})", dir.display()))?,
    )
    .with_context(|| format!("{}/{BUNDLE}", dir.display()))?;
    let Some(Value::Object(mut options)) = manifest.get("options").cloned() else {
        anyhow::bail!("{}/{BUNDLE}: no options", dir.display());
    };
    for name in ["init", "data"] {
        if options.contains_key(name) && !options[name].is_null() {
            options.insert(name.into(), json!(dir.join(name)));
        }
    }
    let item_path = dir.join("item");
    let item = std::fs::read(&item_path).with_context(|| item_path.display().to_string())?;
    let framing = match manifest.get("split").and_then(Value::as_str) {
        Some("files") => Framing::File(item_path),
        Some("nul") => Framing::Nul,
        _ => Framing::Lines,
    };
    Ok(Case {
        what: format!("the item of bundle {}", dir.display()),
        kernel: dir.join("kernel.wasm"),
        options,
        item,
        framing,
    })
}

/// `wpool map -j 1` with the recorded options over the one item; exits
/// with its status.
fn replay(case: &Case, deterministic: bool) -> Result<Exit> {
    let o = &case.options;
    let mut args: Vec<std::ffi::OsString> = vec!["map".into(), "-j".into(), "1".into()];
    let mut flag = |name: &str, value: Option<String>| {
        args.push(name.into());
        if let Some(v) = value {
            args.push(v.into());
        }
    };
    let num = |key: &str| o.get(key).and_then(Value::as_u64);
    let yes = |key: &str| o.get(key).and_then(Value::as_bool).unwrap_or(false);
    if let Some(ns) = num("timeout_ns") {
        flag("--timeout", Some(format!("{:.3}us", ns as f64 / 1e3)));
    }
    for (key, name) in [
        ("memory", "--memory"),
        ("fuel", "--fuel"),
        ("max_item_size", "--max-item-size"),
        ("max_items_per_instance", "--max-items-per-instance"),
        ("retries", "--retries"),
        ("seed", "--seed"),
    ] {
        if let Some(n) = num(key) {
            flag(name, Some(n.to_string()));
        }
    }
    for (key, name) in [("isolate", "--isolate"), ("allow_clock", "--allow-clock"), ("allow_random", "--allow-random")]
    {
        if yes(key) {
            flag(name, None);
        }
    }
    if deterministic && !yes("deterministic") {
        // What --deterministic excludes, the run had: a replay under it
        // would not be that run's.
        for (key, name) in [
            ("allow_clock", "--allow-clock"),
            ("allow_random", "--allow-random"),
            ("max_items_per_instance", "--max-items-per-instance"),
        ] {
            if yes(key) || num(key).is_some() {
                anyhow::bail!("--deterministic: the run had {name}, which --deterministic excludes");
            }
        }
    }
    if yes("deterministic") || deterministic {
        flag("--deterministic", None);
    }
    for (key, name) in [("env", "--env"), ("allow_dir", "--allow-dir")] {
        for v in o.get(key).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            flag(name, Some(v.to_string()));
        }
    }
    for (key, name) in [("data", "--data"), ("init", "--init")] {
        if let Some(path) = o.get(key).and_then(Value::as_str) {
            flag(name, Some(path.to_string()));
        }
    }
    let mut cmd = std::process::Command::new(std::env::current_exe().context("finding the wpool executable")?);
    cmd.args(&args);
    let stdin = match &case.framing {
        Framing::File(path) => {
            cmd.arg("--files").arg(&case.kernel).arg(path);
            None
        }
        Framing::Nul => {
            cmd.arg("-0").arg(&case.kernel).arg("-");
            Some([&case.item[..], b"\0"].concat())
        }
        Framing::Lines => {
            cmd.arg(&case.kernel).arg("-");
            Some([&case.item[..], b"\n"].concat())
        }
    };
    cmd.stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() });
    let mut child = cmd.spawn().context("starting `wpool map` for the replay")?;
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("piped");
        std::thread::spawn(move || pipe.write_all(&bytes));
    }
    let status = child.wait()?;
    let _ = std::io::stdout().flush();
    // The map run said what happened; its status is the replay's.
    match status.code() {
        Some(0) => Ok(Exit::Success),
        Some(1) => Ok(Exit::Failed),
        Some(code) => std::process::exit(code),
        None => {
            use std::os::unix::process::ExitStatusExt;
            Ok(Exit::Signal(status.signal().unwrap_or(libc::SIGKILL)))
        }
    }
}

//! The README's "Writing a kernel", followed literally: its files written
//! into an empty directory, its commands run by bash, its output compared.
//! Only `/path/to/wpool` is replaced, by this checkout. The build directory
//! (`target/`, a link) is shared between runs so that only the first one
//! compiles the SDK's dependencies.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use wpool_tests::*;

/// What the section holds, by the name in its `<!-- readme-kernel: NAME -->`
/// markers: the files, `run ROUTE` command blocks and the `output`.
fn section() -> BTreeMap<String, String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme.find("\n## Writing a kernel\n").expect("README has a \"Writing a kernel\" section");
    let rest = &readme[start + 1..];
    let section = &rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)];
    let mut blocks = BTreeMap::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.trim().strip_prefix("<!-- readme-kernel: ").and_then(|l| l.strip_suffix(" -->")) else {
            continue;
        };
        let fence = lines.next().unwrap_or_default();
        assert!(fence.trim_start().starts_with("```"), "the block `{name}` must follow its marker, got {fence:?}");
        // A block in a list item is indented; its text is not.
        let indent = &fence[..fence.len() - fence.trim_start().len()];
        let mut text = String::new();
        for line in lines.by_ref() {
            if line.trim_start().starts_with("```") {
                break;
            }
            text.push_str(line.strip_prefix(indent).unwrap_or(line));
            text.push('\n');
        }
        assert!(blocks.insert(name.to_string(), text).is_none(), "two blocks named `{name}`");
    }
    blocks
}

/// Builds and runs the kernel by the README's `run ROUTE` commands.
fn follow(route: &str) {
    let blocks = section();
    let checkout = root().display().to_string();
    let here = |text: &str| text.replace("/path/to/wpool", &checkout);
    for name in ["Cargo.toml", "src/lib.rs", "output"] {
        assert!(blocks.contains_key(name), "README's kernel section lacks the `{name}` block: {blocks:?}");
    }
    let script = blocks.get(&format!("run {route}")).unwrap_or_else(|| panic!("no `run {route}` block"));

    let project = tempfile::tempdir().unwrap();
    for name in ["Cargo.toml", "src/lib.rs"] {
        let path = project.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, here(&blocks[name])).unwrap();
    }
    let shared = target_dir().join("readme-kernel");
    std::fs::create_dir_all(&shared).unwrap();
    // A kernel left by an earlier run must not pass for this one's.
    let triple = if route == "wasip2" { "wasm32-wasip2" } else { "wasm32-unknown-unknown" };
    let _ = std::fs::remove_file(shared.join(triple).join("release").join("upper.wasm"));
    std::os::unix::fs::symlink(&shared, project.path().join("target")).unwrap();

    let cache = tempfile::tempdir().unwrap();
    let path = format!("{}:{}", wpool_bin().parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let mut bash = Command::new("bash");
    bash.args(["-euo", "pipefail", "-c"])
        .arg(here(script))
        .current_dir(project.path())
        .env("PATH", path)
        .env("WPOOL_CACHE_DIR", cache.path())
        // Tests stay on this machine: cargo uses the registry copy that
        // scripts/setup.sh fetched, and rustup, whose targets setup.sh
        // added, would fail here rather than download.
        .env("CARGO_NET_OFFLINE", "true")
        .env("RUSTUP_DIST_SERVER", "http://127.0.0.1:9")
        .env("RUSTUP_UPDATE_ROOT", "http://127.0.0.1:9")
        // A reader's shell has none of the settings of this test's build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    let o = run_with(bash, b"", Duration::from_secs(900));
    assert!(o.status.success(), "README route {route} failed:\n{}\n{}", stdout(&o), stderr(&o));
    // Progress and cargo's messages go to stderr; stdout is wpool's results.
    assert_eq!(stdout(&o), blocks["output"], "README route {route}; stderr:\n{}", stderr(&o));
    assert!(project.path().join(route_output(route)).exists());
}

/// Where the README says the route's kernel is.
fn route_output(route: &str) -> &'static Path {
    match route {
        "wasip2" => Path::new("target/wasm32-wasip2/release/upper.wasm"),
        _ => Path::new("upper.wasm"),
    }
}

#[test]
fn readme_kernel_builds_for_wasip2_and_runs() {
    follow("wasip2");
}

#[test]
fn readme_kernel_builds_for_unknown_unknown_as_a_component_and_runs() {
    follow("unknown");
}

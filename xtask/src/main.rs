//! Project tasks that need more than cargo: `cargo xtask kernels` builds the
//! guest kernels for both targets and turns the `wasm32-unknown-unknown` core
//! modules into import-free components; `cargo xtask component CORE OUT`
//! does that last step for a kernel of one's own (README, "Writing a
//! kernel").
//!
//! Output: `target/kernels/wasip2/NAME.wasm` (components that import WASI
//! 0.2) and `target/kernels/unknown/NAME.wasm` (components without imports).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("kernels") => kernels(),
        Some("component") if args.len() == 3 => component(Path::new(&args[1]), Path::new(&args[2])),
        _ => {
            eprintln!("usage: cargo xtask kernels\n       cargo xtask component CORE.wasm OUT.wasm");
            std::process::exit(2);
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the repository root").to_path_buf()
}

fn kernels() -> Result<()> {
    let root = root();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let guest_target = target_dir.join("guest");
    let out = target_dir.join("kernels");
    for (target, flavour) in [("wasm32-wasip2", "wasip2"), ("wasm32-unknown-unknown", "unknown")] {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(root.join("guest-kernels"))
            .args(["build", "--release", "--workspace", "--target", target, "--target-dir"])
            .arg(&guest_target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .context("running cargo for the guest kernels")?;
        if !status.success() {
            bail!("building guest kernels for {target} failed (is the target installed? run scripts/setup.sh)");
        }
        let built = guest_target.join(target).join("release");
        let dest = out.join(flavour);
        std::fs::create_dir_all(&dest)?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&built)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "wasm") {
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().replace('_', "-");
            let bytes = std::fs::read(&path)?;
            let component = if flavour == "unknown" { encode(&bytes, &path)? } else { bytes };
            write_if_changed(&dest.join(&name), &component)?;
            names.push(name);
        }
        names.sort();
        println!("{}: {}", dest.display(), names.join(" "));
    }
    python_kernel(&root, &target_dir, &out.join("python"))
}

/// A `wasm32-unknown-unknown` core module (with the component type that
/// wit-bindgen embeds) as a component without imports.
fn component(core: &Path, out: &Path) -> Result<()> {
    let bytes = std::fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    let component = encode(&bytes, core)?;
    std::fs::write(out, component).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

fn encode(core: &[u8], path: &Path) -> Result<Vec<u8>> {
    wit_component::ComponentEncoder::default()
        .module(core)
        .and_then(|e| e.validate(true).encode())
        .with_context(|| format!("turning {} into a component", path.display()))
}

/// The Python example kernel, built with componentize-py from the venv that
/// `scripts/setup.sh` makes. Rebuilt only when its source or the WIT changed.
fn python_kernel(root: &Path, target_dir: &Path, dest: &Path) -> Result<()> {
    let tool = target_dir.join("pyenv").join("bin").join("componentize-py");
    if !tool.exists() {
        bail!("{} is missing: run scripts/setup.sh", tool.display());
    }
    let src = root.join("guest-kernels").join("python");
    let wit = root.join("wit");
    let out = dest.join("reverse.wasm");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let newest_input = [src.join("app.py"), wit.join("wpool.wit")].iter().filter_map(|p| modified(p)).max();
    if modified(&out).is_some() && modified(&out) >= newest_input {
        println!("{}: reverse.wasm (up to date)", dest.display());
        return Ok(());
    }
    std::fs::create_dir_all(dest)?;
    let tmp = dest.join("reverse.wasm.tmp");
    let status = Command::new(&tool)
        .current_dir(&src)
        .arg("-d")
        .arg(&wit)
        .args(["-w", "kernel", "componentize", "app", "-o"])
        .arg(&tmp)
        .status()
        .context("running componentize-py")?;
    if !status.success() {
        bail!("componentize-py failed on {}", src.display());
    }
    std::fs::rename(&tmp, &out)?;
    println!("{}: reverse.wasm", dest.display());
    Ok(())
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    let tmp = path.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

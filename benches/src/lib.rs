//! Shared helpers of the benches.

use std::path::PathBuf;

/// A kernel built by `cargo xtask kernels`.
pub fn kernel(name: &str) -> wpool::Kernel {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let path = target.join("kernels").join("wasip2").join(format!("{name}.wasm"));
    wpool::Kernel::from_file(&path).unwrap_or_else(|e| panic!("{e} (run `cargo xtask kernels`)"))
}

/// The median of `reps` runs of `f`, each returning one figure (seconds,
/// MB/s, …).
pub fn median(reps: usize, mut f: impl FnMut() -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let mut v = (0..reps).map(|_| f()).collect::<anyhow::Result<Vec<f64>>>()?;
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

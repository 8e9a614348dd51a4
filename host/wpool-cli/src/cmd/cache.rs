//! `wpool cache`: where the compiled-artifact cache is, how much it holds,
//! and cleaning it. The counting and removing are the library's.

use std::io::{self, Write};

use anyhow::Result;
use wpool::cache::{self, Cache};

use crate::exit::Exit;
use crate::flags::CacheCmd;

pub fn run(cmd: Option<CacheCmd>) -> Result<Exit> {
    let cache = Cache::open_default()?;
    let mut out = io::stdout().lock();
    match cmd {
        None => {
            let usage = cache.usage()?;
            writeln!(out, "directory: {}", cache.dir().display())?;
            writeln!(out, "artifacts: {}", usage.artifacts)?;
            writeln!(out, "size:      {} bytes ({})", usage.bytes, human(usage.bytes))?;
            writeln!(out, "cap:       {} bytes ({}, {})", cache.max_bytes(), human(cache.max_bytes()), cap_source())?;
        }
        Some(CacheCmd::Clean) => {
            let cleaned = cache.clean()?;
            writeln!(
                out,
                "removed {} artifacts ({} bytes) from {}",
                cleaned.removed,
                cleaned.bytes,
                cache.dir().display()
            )?;
            if cleaned.in_use > 0 {
                writeln!(out, "kept {} in use by a running wpool", cleaned.in_use)?;
            }
        }
    }
    Ok(Exit::Success)
}

fn cap_source() -> String {
    match std::env::var(cache::MAX_ENV) {
        Ok(v) if !v.is_empty() => format!("{}={v}", cache::MAX_ENV),
        _ => format!("default; set {} to change", cache::MAX_ENV),
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

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
            writeln!(out, "size:      {}", both(usage.bytes))?;
            let cap = cache.max_bytes();
            writeln!(out, "cap:       {cap} bytes ({}, {})", wpool::Limits::format_size(cap), cap_source())?;
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

/// `12345 bytes (12.1 KiB)`; `1000 bytes` alone below a KiB.
fn both(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} bytes"),
        _ => format!("{bytes} bytes ({})", wpool::Limits::format_size(bytes)),
    }
}

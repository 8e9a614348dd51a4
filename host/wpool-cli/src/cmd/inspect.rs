//! `wpool inspect KERNEL`: what a component is, which worlds of the
//! contract it satisfies, what it imports and exports, which commands take
//! it, and (with `--sandbox`) how a worker confines itself here.

use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result};
use wpool::inspect::World;
use wpool::{Kernel, Pool};

use crate::exit::Exit;

pub fn run(path: &Path, sandbox: bool) -> Result<Exit> {
    let ins = Kernel::inspect(path)?;
    let mut out = io::stdout().lock();
    writeln!(out, "kernel:  {}", path.display())?;
    writeln!(out, "size:    {} bytes", ins.info.size)?;
    writeln!(out, "format:  {}", ins.info.format)?;
    match &ins.rejection {
        None => {
            let names: Vec<&str> = ins.worlds.iter().map(|w| w.name()).collect();
            writeln!(out, "worlds:  {} (accepted)", names.join(", "))?;
            for (label, line) in usage(path, &ins.worlds) {
                writeln!(out, "{label:9}{line}")?;
            }
        }
        Some(e) => writeln!(out, "worlds:  none: rejected: {e}")?,
    }
    let list = |items: &[String]| if items.is_empty() { vec!["(none)".to_string()] } else { items.to_vec() };
    for (i, imp) in list(&ins.info.imports).iter().enumerate() {
        writeln!(out, "{:9}{imp}", if i == 0 { "imports:" } else { "" })?;
    }
    for (i, exp) in list(&ins.info.exports).iter().enumerate() {
        writeln!(out, "{:9}{exp}", if i == 0 { "exports:" } else { "" })?;
    }
    if sandbox && ins.rejection.is_none() {
        let pool = Pool::builder(Kernel::from_file(path)?).workers(1).build()?;
        let status = pool.sandbox_status().context("the worker reported no sandbox status")?;
        writeln!(out, "sandbox: no_new_privs: {}", status.no_new_privs)?;
        writeln!(out, "         seccomp:      {}", status.seccomp)?;
        writeln!(out, "         landlock:     {:?}", status.landlock)?;
        if !status.detail.is_empty() {
            writeln!(out, "         detail:       {}", status.detail)?;
        }
    }
    Ok(if ins.rejection.is_none() { Exit::Success } else { Exit::Failed })
}

/// Which commands take a kernel of these worlds (the first is how wpool
/// runs it), and what the host does with its optional exports, for
/// `inspect`: (label, line).
fn usage(path: &Path, worlds: &[World]) -> Vec<(&'static str, String)> {
    let k = path.display();
    let Some(&world) = worlds.first() else { return vec![] };
    if world == World::Reducer {
        return vec![
            ("use:", format!("wpool mapreduce --map MAP.wasm --reduce {k} [INPUT]...")),
            ("", "(no `map`: not for wpool map or wpool pipeline)".into()),
        ];
    }
    let init = if world.has_init() { "--init FILE " } else { "" };
    let mut lines = vec![
        ("use:", format!("wpool map {init}{k} [INPUT]...")),
        ("", format!("wpool pipeline --stage {k} --stage ... [INPUT]...")),
        ("", format!("wpool mapreduce --map {k} --reduce REDUCER.wasm [INPUT]...")),
    ];
    if world.has_init() {
        lines.push((
            "init:",
            "called once per kernel instance, before any item, with FILE's bytes (empty without --init, and in \
             pipeline and mapreduce)"
                .into(),
        ));
    }
    if worlds.iter().any(|w| matches!(w, World::BatchKernel | World::BatchKernelWithInit)) {
        lines.push(("batch:", "`map-batch` may be given several small items in one call".into()));
    }
    lines
}

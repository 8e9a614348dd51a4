//! One module per command; [`driver`] is what `map`, `pipeline` and
//! `mapreduce` share (flags → pools, input, printer, signals → exit).

mod bench;
mod cache;
mod completions;
mod driver;
mod inspect;
mod map;
mod mapreduce;
mod pipeline;
mod replay;

use anyhow::Result;

use crate::exit::Exit;
use crate::flags::Command;

/// Runs a parsed command.
pub fn run(command: Command) -> Result<Exit> {
    match command {
        Command::Map(cmd) => map::run(*cmd),
        Command::Pipeline(cmd) => pipeline::run(*cmd),
        Command::Mapreduce(cmd) => mapreduce::run(*cmd),
        Command::Bench(cmd) => bench::run(*cmd),
        Command::Joblog { file, all, json } => crate::joblog::summary(&file, json, all).map(|()| Exit::Success),
        Command::Replay { source, item, run, bundle, deterministic } => {
            replay::run(&source, item, run, bundle.as_deref(), deterministic)
        }
        Command::Inspect { kernel, sandbox } => inspect::run(&kernel, sandbox),
        Command::Cache { action } => cache::run(action),
        Command::Completions { shell } => completions::run(shell),
    }
}

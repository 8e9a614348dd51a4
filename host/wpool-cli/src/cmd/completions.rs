//! `wpool completions SHELL`: the shell's completion script, generated
//! from the same clap definition that parses the arguments, so it never
//! falls behind the flags.

use std::io::{self, Write};

use anyhow::Result;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::exit::Exit;

pub fn run(shell: Shell) -> Result<Exit> {
    // Into a buffer first: `generate` panics on a write error, and a
    // closed pipe (`wpool completions bash | head`) is not one worth a panic.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut crate::flags::Cli::command(), "wpool", &mut script);
    io::stdout().lock().write_all(&script)?;
    Ok(Exit::Success)
}

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
    clap_complete::generate(shell, &mut whole_command(), "wpool", &mut script);
    io::stdout().lock().write_all(&script)?;
    Ok(Exit::Success)
}

/// The whole command tree. Subcommands add their arguments only when they
/// are built (see `flags::Command`), after their parent made its `help`
/// subcommand from them: the script is made from a root whose subcommands
/// were built first, in a tree of their own.
fn whole_command() -> clap::Command {
    let mut built = crate::flags::Cli::command();
    built.build();
    let mut cmd = crate::flags::Cli::command();
    for sub in built.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = String::from(sub.get_name());
        let sub = sub.clone();
        cmd = cmd.mut_subcommand(name, move |_| sub);
    }
    cmd
}

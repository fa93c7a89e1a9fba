//! The `token-authority` binary: parse the command line and run the command (`cli`).

use std::process::ExitCode;

use clap::Parser as _;
use token_authority::config::Cli;

fn main() -> ExitCode {
    token_authority::cli::run(Cli::parse().command)
}

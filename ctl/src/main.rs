//! `cairnctl`: parses the command line and hands it to [`cairnctl::cli::run`].

use std::io::{self, Write};
use std::process::ExitCode;

use cairnctl::cli::{self, Cli, CliError};
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = io::stdout().lock();
    match cli::run(cli, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(message)) => Cli::command()
            .error(ErrorKind::MissingRequiredArgument, message)
            .exit(),
        // The reader went away (e.g. `cairnctl device list | head`): nothing left to tell.
        Err(CliError::Output(error)) if error.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(error) => {
            let _ = stdout.flush();
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

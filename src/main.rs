use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cradle::cli::Cli::parse();
    match cradle::cli::run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(err) => {
            if cradle::cli::common::is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("{}", cradle::cli::common::error_line(&err));
            ExitCode::from(cradle::error::exit_code_for(&err) as u8)
        }
    }
}

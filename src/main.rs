use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cradle::cli::Cli::parse();
    match cradle::cli::run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(err) => {
            // A closed pipe (`cradle … | head`) is not a failure.
            if err.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            // One line: the context chain joined by ": ".
            eprintln!("cradle: error: {err:#}");
            ExitCode::from(cradle::error::exit_code_for(&err) as u8)
        }
    }
}

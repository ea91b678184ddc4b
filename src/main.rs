//! exchange-sync's entry point: parse flags, set up logging, hand over to the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    exchange_sync::allocator::limit_arenas();
    let mut args = std::env::args();
    let program = args.next().unwrap_or_else(|| "exchange-sync".into());
    let args: Vec<String> = args.collect();
    let cli = match exchange_sync::cli::parse(&program, &args) {
        Ok(cli) => cli,
        Err(early) => {
            // Help goes to stdout with exit 0; usage errors to stderr with exit 2.
            return if early.status.is_ok() {
                println!("{}", early.output);
                ExitCode::SUCCESS
            } else {
                eprintln!("{}", early.output);
                ExitCode::from(2)
            };
        }
    };
    exchange_sync::logging::init(cli.debug_level);
    exchange_sync::app::run(&cli, &|name| std::env::var(name).ok())
}

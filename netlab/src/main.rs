use std::process::ExitCode;

use clap::Parser;
use netlab::cli::Cli;

fn main() -> ExitCode {
    // A container runtime runs netlab as its CNI plugin: the command is in
    // the environment, and there are no arguments.
    if std::env::var_os(netlab::cni::COMMAND_ENV).is_some() && std::env::args_os().len() == 1 {
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
        return netlab::cni::main();
    }
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
    match cli.command.execute() {
        Ok(code) => code,
        Err(err) => {
            // A reader that closed the pipe (`netlab conntrack | head`)
            // wanted no more: a clean exit, as ripgrep and `cat` make it.
            let closed_pipe = err.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if closed_pipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("netlab: {err:#}");
            ExitCode::FAILURE
        }
    }
}

//! The `lb` binary; everything lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    lb::cli::main()
}

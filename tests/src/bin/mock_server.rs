//! The server binary under test: the same `main_impl` as `lrpymrpc-mock-server`.

fn main() -> std::process::ExitCode {
    lrpymrpc_mock_server::cli::main_impl()
}

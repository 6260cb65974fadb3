//! `lrpymrpc-mock-server`: everything lives in the library's [`lrpymrpc_mock_server::cli`].

fn main() -> std::process::ExitCode {
    lrpymrpc_mock_server::cli::main_impl()
}

//! `lrpymrpc-server`, the server's name (`lrpymrpc-mock-server` is the same binary under
//! its first name): everything lives in the library's [`lrpymrpc_mock_server::cli`].

fn main() -> std::process::ExitCode {
    lrpymrpc_mock_server::cli::main_impl()
}

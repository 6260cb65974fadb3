//! `lrpymrpc-mock-server`, the server's first name, kept for the units and scripts
//! that type it (`lrpymrpc-server` is the same binary): everything lives in the library's [`lrpymrpc_mock_server::cli`].

fn main() -> std::process::ExitCode {
    lrpymrpc_mock_server::cli::main_impl()
}

//! The `lrpymrpc` binary: a thin shell over the library's [`lrpymrpc::main_impl`].

fn main() -> std::process::ExitCode {
    lrpymrpc::main_impl()
}

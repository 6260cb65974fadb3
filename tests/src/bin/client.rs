//! The client binary under test: the same `main_impl` as `lrpymrpc`.

fn main() -> std::process::ExitCode {
    lrpymrpc::main_impl()
}

//! The `lrpymrpc` binary: a thin shell over the library's [`lrpymrpc::main_impl`].

fn main() -> std::process::ExitCode {
    one_malloc_arena();
    lrpymrpc::main_impl()
}

/// glibc gives every thread that allocates an arena of its own, which keeps what it
/// freed: the hashing, reading, sending and unpacking threads of one job each held
/// their own peak. One arena shared by all kept the peak RSS of a 200 MB
/// content-addressed round trip at 14.8 MB instead of 16.4 to 17.4 MB, at no cost in
/// CPU time (measured: `docs/benchmarks.md`). Called before any thread starts.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a setting of the allocator; no thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

//! What commands may hold at once: cores, memory and named license pools (`--cpus`,
//! `--mem`, `--license spectre=3`). A step asks for some (`Ask`, from
//! `ExecuteRequest.resources`, the server's default grant when it asks for nothing);
//! its command starts only when all of it is free, first come first served across
//! clients and CNs (`Pool::acquire`, one queue: what the steps ahead wait for is set
//! aside for them, so a later step passes them only with what they do not need), and
//! holds it (`Grant`) until its processes are gone. A waiting step is told why, in words: its position and what it
//! waits for. A request larger than the server could ever give is refused at once,
//! naming the resource and the capacity (`Capacity::refusal`).

mod capacity;
pub mod machine;
mod queue;

pub use capacity::{Ask, Capacity, PerCn, is_license_name, job_env};
pub use queue::{Grant, Pool, Snapshot};

/// `1 core`, `2 cores`.
fn plural(count: u32, what: &str) -> String {
    match count {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
}

#[cfg(test)]
mod tests;

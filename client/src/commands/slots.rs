//! `lrpymrpc slots`: how many steps the configured servers can start now, for `make
//! -j$(lrpymrpc slots)`: per server, the fewest of its free job slots and of the steps
//! its free cores, memory and licenses hold (each step asking what `--cpus`, `--mem`,
//! `--license` say, or the server's default grant); a legacy server counts as its
//! declared `/SLOTS` (or one). Prints the sum, at least one (`make -j0` is an error);
//! `--verbose` says each server's count and what limits it.

use std::process::ExitCode;

use lrpymrpc_proto::v1::CapabilitiesResponse;

use crate::cli::Args;
use crate::job::Job;

pub fn run(args: Args) -> ExitCode {
    super::durable_jobs::with_job(args, |job, out| async move {
        let declared: Vec<Option<u32>> = match job.servers.is_empty() {
            true => vec![None],
            false => job.servers.iter().map(|(_, slots)| *slots).collect(),
        };
        let mut total: u64 = 0;
        for (peer, declared) in super::durable_jobs::peers(&job).into_iter().zip(declared) {
            let session = super::durable_jobs::connect(&job, &out, &peer).await?;
            let (count, why) = match session.capabilities() {
                Some(capabilities) => startable(&job, capabilities),
                None => (declared.unwrap_or(1), "a legacy server: its declared slots".to_string()),
            };
            out.verbose(&format!("{peer}: {count} ({why})"));
            total += u64::from(count);
        }
        println!("{}", total.max(1));
        Ok(())
    })
}

/// How many steps like the job's this server can start now, and what limits it.
fn startable(job: &Job, capabilities: &CapabilitiesResponse) -> (u32, String) {
    let load = capabilities.load.unwrap_or_default();
    if load.draining {
        return (0, "shutting down".into());
    }
    let mut limits = vec![(load.free_slots, "free job slots".to_string())];
    if let Some(capacity) = crate::remote::resources::capacity(Some(capabilities)) {
        let asked = job.resources.clone().unwrap_or_default();
        let cpus = match asked.cpus {
            0 => capacity.default_cpus.max(1),
            cpus => cpus,
        };
        limits.push((capacity.free_cpus / cpus, format!("{} free cores, {cpus} a step", capacity.free_cpus)));
        if let Some(steps) = capacity.free_memory_bytes.checked_div(asked.memory_bytes) {
            limits.push((u32::try_from(steps).unwrap_or(u32::MAX), "free memory".into()));
        }
        for license in &asked.licenses {
            let free = capacity.licenses.iter().find(|pool| pool.name == license.name).map_or(0, |pool| pool.free);
            limits.push((free / license.count.max(1), format!("free `{}` licenses", license.name)));
        }
    }
    let (count, why) = limits.into_iter().min_by_key(|(count, _)| *count).unwrap_or((0, String::new()));
    (count, format!("limited by {why}"))
}

//! The one queue for cores, memory and licenses (`Pool`): first come first served
//! across clients and certificates, what earlier waiters need set aside for them (a
//! certificate at its cap sets nothing aside), the reason a step waits said as it
//! changes, and the `Grant` a step holds until its processes are gone.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lrpymrpc_units::human_bytes;

use super::capacity::{Ask, Capacity, PerCn};
use super::plural;

/// The resources free now, and the steps waiting for them in the order they asked.
#[derive(Debug)]
struct Free {
    /// Each core by index, `true` while nobody holds it.
    cores: Vec<bool>,
    memory_bytes: u64,
    licenses: BTreeMap<String, u32>,
    /// The waiting steps in the order they asked, with what they ask.
    queue: VecDeque<(u64, Ask)>,
    next_ticket: u64,
    /// What each certificate holds now: cores and licenses (for the per-CN caps).
    held: std::collections::HashMap<String, (u32, BTreeMap<String, u32>)>,
}

impl Free {
    fn free_cores(&self) -> u32 {
        u32::try_from(self.cores.iter().filter(|free| **free).count()).unwrap_or(u32::MAX)
    }

    /// Why `ask` would take its owner past a per-CN cap, in words; `None` when it would not.
    fn over_cap(&self, ask: &Ask, caps: &PerCn) -> Option<String> {
        let (cpus, licenses) = match self.held.get(&ask.owner) {
            Some((cpus, licenses)) => (*cpus, Some(licenses)),
            None => (0, None),
        };
        if let Some(cap) = caps.cpus.filter(|cap| cpus + ask.cpus > *cap) {
            return Some(format!("waiting: your certificate holds {cpus} of the {cap} cores one may hold"));
        }
        for (name, count) in &ask.licenses {
            let held = licenses.and_then(|licenses| licenses.get(name)).copied().unwrap_or(0);
            if let Some(cap) = caps.licenses.get(name).filter(|cap| held + count > **cap) {
                return Some(format!(
                    "waiting: your certificate holds {held} of the {cap} {name} licenses one may hold"
                ));
            }
        }
        None
    }

    /// Whether `ask` fits what is free once what `ahead` asks is set aside for them.
    fn fits_after(&self, ask: &Ask, ahead: &[&Ask]) -> bool {
        let cores = ahead.iter().fold(self.free_cores(), |left, other| left.saturating_sub(other.cpus));
        let memory = ahead.iter().fold(self.memory_bytes, |left, other| left.saturating_sub(other.memory_bytes));
        let licenses_fit = ask.licenses.iter().all(|(name, count)| {
            let free = self.licenses.get(name).copied().unwrap_or(0);
            let set_aside: u32 = ahead.iter().filter_map(|other| other.licenses.get(name)).sum();
            free.saturating_sub(set_aside) >= *count
        });
        cores >= ask.cpus && memory >= ask.memory_bytes && licenses_fit
    }

    /// What of `ask` is missing now, in words; `None` when all of it is free.
    fn missing(&self, ask: &Ask, capacity: &Capacity) -> Option<String> {
        for (name, count) in &ask.licenses {
            let free = self.licenses.get(name).copied().unwrap_or(0);
            if free < *count {
                let total = capacity.licenses.get(name).copied().unwrap_or(0);
                return Some(format!("waiting: license {name} {}/{total} in use", total - free));
            }
        }
        let cores = self.free_cores();
        if cores < ask.cpus {
            return Some(format!("waiting for {} ({cores} free)", plural(ask.cpus, "core")));
        }
        if self.memory_bytes < ask.memory_bytes {
            return Some(format!(
                "waiting for {} of memory ({} free)",
                human_bytes(ask.memory_bytes),
                human_bytes(self.memory_bytes)
            ));
        }
        None
    }
}

/// The server's resources and its one queue.
#[derive(Debug)]
pub struct Pool {
    capacity: Capacity,
    /// Whether this server meters what runs here; not when another scheduler (Slurm)
    /// decides what runs: then every step is granted at once, and pinned to nothing.
    metered: bool,
    /// The machine's CPU ids a core index stands for (the server's own affinity).
    cpu_ids: Vec<usize>,
    free: Mutex<Free>,
    changed: tokio::sync::Notify,
}

/// What a step holds while its command runs; given back on drop.
#[derive(Debug)]
pub struct Grant {
    pool: Arc<Pool>,
    /// What the step asked for and was granted (held here, or by another scheduler).
    asked: Ask,
    /// The core indices held here (none when the pool is not metered).
    cores: Vec<usize>,
}

impl Grant {
    /// The machine's CPUs the command may run on (as many as it was granted cores).
    pub fn cpu_ids(&self) -> Vec<usize> {
        let ids = &self.pool.cpu_ids;
        let mut chosen: Vec<usize> = self.cores.iter().map(|core| ids[core % ids.len().max(1)]).collect();
        chosen.sort_unstable();
        chosen.dedup();
        chosen
    }

    /// How many cores the command was granted.
    pub fn cpus(&self) -> u32 {
        self.asked.cpus
    }

    /// The memory the command may use; 0: no limit.
    pub fn memory_bytes(&self) -> u64 {
        self.asked.memory_bytes
    }

    /// The licenses it holds, by pool.
    pub fn licenses(&self) -> &BTreeMap<String, u32> {
        &self.asked.licenses
    }

    /// The longest it may run, when it asked.
    pub fn walltime(&self) -> Option<Duration> {
        self.asked.walltime
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        // An unmetered pool (another scheduler decides) holds nothing to give back.
        if !self.pool.metered {
            return;
        }
        let mut free = self.pool.free();
        for core in &self.cores {
            if let Some(slot) = free.cores.get_mut(*core) {
                *slot = true;
            }
        }
        free.memory_bytes += self.asked.memory_bytes;
        for (name, count) in &self.asked.licenses {
            *free.licenses.entry(name.clone()).or_default() += count;
        }
        if let Some(held) = free.held.get_mut(&self.asked.owner) {
            held.0 = held.0.saturating_sub(self.asked.cpus);
            for (name, count) in &self.asked.licenses {
                if let Some(pool) = held.1.get_mut(name) {
                    *pool = pool.saturating_sub(*count);
                }
            }
            if held.0 == 0 && held.1.values().all(|count| *count == 0) {
                free.held.remove(&self.asked.owner);
            }
        }
        drop(free);
        self.pool.changed.notify_waiters();
    }
}

/// A place in the queue; leaving it (granted, or the client gone) takes it out.
struct Ticket<'a> {
    pool: &'a Pool,
    number: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut free = self.pool.free();
        free.queue.retain(|(ticket, _)| *ticket != self.number);
        drop(free);
        self.pool.changed.notify_waiters();
    }
}

/// What is held and free now, for capabilities, `jobs` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub free_cpus: u32,
    pub free_memory_bytes: u64,
    pub free_licenses: BTreeMap<String, u32>,
    pub waiting: u32,
}

impl Pool {
    pub fn new(capacity: Capacity, cpu_ids: Vec<usize>, metered: bool) -> Pool {
        let free = Free {
            cores: vec![true; capacity.cpus as usize],
            memory_bytes: capacity.memory_bytes,
            licenses: capacity.licenses.clone(),
            queue: VecDeque::new(),
            next_ticket: 0,
            held: std::collections::HashMap::new(),
        };
        Pool { capacity, metered, cpu_ids, free: Mutex::new(free), changed: tokio::sync::Notify::new() }
    }

    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    fn free(&self) -> MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn snapshot(&self) -> Snapshot {
        let free = self.free();
        Snapshot {
            free_cpus: free.free_cores(),
            free_memory_bytes: free.memory_bytes,
            free_licenses: free.licenses.clone(),
            waiting: u32::try_from(free.queue.len()).unwrap_or(u32::MAX),
        }
    }

    /// Waits until all of `ask` is free with what the steps ahead in line wait for set
    /// aside, then holds it. `waiting` hears, each time it changes, why the step waits (its position and
    /// what it waits for). Dropping the future leaves the queue. `ask` must fit the
    /// capacity ([`Capacity::refusal`]), or it waits for ever.
    pub async fn acquire(self: &Arc<Self>, ask: &Ask, mut waiting: impl FnMut(String)) -> Grant {
        if !self.metered {
            return Grant { pool: self.clone(), asked: ask.clone(), cores: Vec::new() };
        }
        let number = {
            let mut free = self.free();
            let number = free.next_ticket;
            free.next_ticket += 1;
            free.queue.push_back((number, ask.clone()));
            number
        };
        let ticket = Ticket { pool: self, number };
        let mut said = String::new();
        loop {
            // Registered before looking, so a change between the look and the wait wakes it.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut free = self.free();
                let position = free.queue.iter().position(|(t, _)| *t == ticket.number).unwrap_or(0);
                // A step held back by its own certificate's cap sets nothing aside:
                // one user past a cap never holds the others up.
                let caps = &self.capacity.per_cn;
                let earlier: Vec<&Ask> = free
                    .queue
                    .iter()
                    .take(position)
                    .map(|(_, earlier)| earlier)
                    .filter(|earlier| free.over_cap(earlier, caps).is_none())
                    .collect();
                let fits = free.fits_after(ask, &earlier);
                let ahead = earlier.len();
                let missing = free.over_cap(ask, caps).or_else(|| free.missing(ask, &self.capacity));
                if fits && missing.is_none() {
                    let grant = self.take(&mut free, ask);
                    drop(free);
                    drop(ticket);
                    return grant;
                }
                let why = match (missing, ahead) {
                    (Some(missing), 0) => missing,
                    (Some(missing), ahead) => format!("{missing}, {ahead} ahead of you"),
                    (None, ahead) => format!("waiting: {ahead} ahead of you"),
                };
                if why != said {
                    waiting(why.clone());
                    said = why;
                }
            }
            changed.await;
        }
    }

    fn take(self: &Arc<Self>, free: &mut Free, ask: &Ask) -> Grant {
        let mut cores = Vec::new();
        for (index, slot) in free.cores.iter_mut().enumerate() {
            if cores.len() == ask.cpus as usize {
                break;
            }
            if *slot {
                *slot = false;
                cores.push(index);
            }
        }
        free.memory_bytes -= ask.memory_bytes;
        for (name, count) in &ask.licenses {
            if let Some(left) = free.licenses.get_mut(name) {
                *left -= count;
            }
        }
        let held = free.held.entry(ask.owner.clone()).or_default();
        held.0 += ask.cpus;
        for (name, count) in &ask.licenses {
            *held.1.entry(name.clone()).or_default() += count;
        }
        Grant { pool: self.clone(), asked: ask.clone(), cores }
    }
}

//! What commands may hold at once: cores, memory and named license pools (`--cpus`,
//! `--mem`, `--license spectre=3`). A step asks for some (`Ask`, from
//! `ExecuteRequest.resources`, the server's default grant when it asks for nothing);
//! its command starts only when all of it is free, first come first served across
//! clients and CNs (`Pool::acquire`, one queue: what the steps ahead wait for is set
//! aside for them, so a later step passes them only with what they do not need), and
//! holds it (`Grant`) until its processes are gone. A waiting step is told why, in words: its position and what it
//! waits for. A request larger than the server could ever give is refused at once,
//! naming the resource and the capacity (`Capacity::refusal`).

pub mod machine;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lrpymrpc_units::human_bytes;

/// The longest license pool name, and the most of one pool one step may ask for.
const MAX_LICENSE_NAME: usize = 64;
const MAX_LICENSE_COUNT: u32 = 10_000;

/// What the server may hand out at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub licenses: BTreeMap<String, u32>,
    /// What a step that asks for no cores gets.
    pub default_cpus: u32,
    /// The most one certificate may hold at once (`--max-cpus-per-cn`,
    /// `--license-per-cn`), so no user takes every license for ever.
    pub per_cn: PerCn,
}

/// Caps on what one certificate (CN) may hold at once; none by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerCn {
    pub cpus: Option<u32>,
    pub licenses: BTreeMap<String, u32>,
}

/// What one step asks for, with the server's defaults filled in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ask {
    /// Whose step it is (the certificate's CN; empty in plaintext), for the per-CN caps.
    pub owner: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub licenses: BTreeMap<String, u32>,
    pub walltime: Option<Duration>,
}

/// Whether `name` may name a license pool: letters, digits, `_ . -`, at most 64.
pub fn is_license_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LICENSE_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl Ask {
    /// The request of an Execute call (`None`: a peer that asks for nothing), checked:
    /// license names and counts must be sane; zero cores means the default grant.
    pub fn from_wire(
        resources: Option<&lrpymrpc_proto::Resources>,
        capacity: &Capacity,
        owner: &str,
    ) -> Result<Ask, String> {
        let Some(resources) = resources else {
            return Ok(Ask { owner: owner.to_string(), cpus: capacity.default_cpus, ..Ask::default() });
        };
        let mut licenses = BTreeMap::new();
        for license in &resources.licenses {
            if !is_license_name(&license.name) {
                return Err(format!(
                    "license name `{}` is not a pool name (letters, digits, `_`, `.`, `-`; at most {MAX_LICENSE_NAME})",
                    license.name.escape_debug()
                ));
            }
            if license.count == 0 || license.count > MAX_LICENSE_COUNT {
                return Err(format!(
                    "license {}: a count of {} is not from 1 to {MAX_LICENSE_COUNT}",
                    license.name, license.count
                ));
            }
            let total: &mut u32 = licenses.entry(license.name.clone()).or_default();
            *total = total.saturating_add(license.count);
        }
        Ok(Ask {
            owner: owner.to_string(),
            cpus: match resources.cpus {
                0 => capacity.default_cpus,
                cpus => cpus,
            },
            memory_bytes: resources.memory_bytes,
            licenses,
            walltime: (resources.walltime_seconds > 0).then(|| Duration::from_secs(resources.walltime_seconds)),
        })
    }
}

impl Ask {
    /// The request as the wire says it (for `ListJobs`).
    pub fn to_wire(&self) -> lrpymrpc_proto::Resources {
        lrpymrpc_proto::Resources {
            cpus: self.cpus,
            memory_bytes: self.memory_bytes,
            licenses: self
                .licenses
                .iter()
                .map(|(name, count)| lrpymrpc_proto::License { name: name.clone(), count: *count })
                .collect(),
            walltime_seconds: self.walltime.map_or(0, |walltime| walltime.as_secs()),
        }
    }
}

impl Capacity {
    /// This machine's CPUs and memory, one core by default, no license.
    pub fn of_machine() -> Capacity {
        Capacity {
            cpus: u32::try_from(machine::cpu_ids().len()).unwrap_or(u32::MAX).max(1),
            memory_bytes: machine::memory_bytes(),
            licenses: BTreeMap::new(),
            default_cpus: 1,
            per_cn: PerCn::default(),
        }
    }

    /// The capacity `--cpus`, `--mem`, `--license NAME=COUNT` and `--default-cpus`
    /// describe, this machine's where not given; a mistake named by its option.
    pub fn from_options(
        cpus: Option<u32>,
        memory_bytes: Option<u64>,
        licenses: &[String],
        default_cpus: u32,
    ) -> Result<Capacity, String> {
        let machine = Capacity::of_machine();
        let mut capacity = Capacity {
            cpus: cpus.unwrap_or(machine.cpus),
            memory_bytes: memory_bytes.unwrap_or(machine.memory_bytes),
            licenses: BTreeMap::new(),
            default_cpus,
            per_cn: PerCn::default(),
        };
        for pool in licenses {
            let parsed =
                pool.split_once('=').and_then(|(name, count)| Some((name.trim(), count.trim().parse::<u32>().ok()?)));
            match parsed {
                Some((name, count)) if is_license_name(name) && (1..=MAX_LICENSE_COUNT).contains(&count) => {
                    if capacity.licenses.insert(name.to_string(), count).is_some() {
                        return Err(format!("--license {pool}: the pool `{name}` is given twice"));
                    }
                }
                _ => {
                    return Err(format!(
                        "--license {pool}: not NAME=COUNT with a pool name (letters, digits, `_ . -`) and a count \
                         from 1 to {MAX_LICENSE_COUNT}\nhint: --license spectre=3"
                    ));
                }
            }
        }
        if capacity.default_cpus > capacity.cpus {
            return Err(format!(
                "--default-cpus {} is more than the {} cores commands may hold (--cpus)",
                capacity.default_cpus, capacity.cpus
            ));
        }
        if capacity.memory_bytes == 0 {
            return Err("--mem: this machine's memory is unknown; give it\nhint: --mem 64G".into());
        }
        Ok(capacity)
    }

    /// The capacity in words, for the start-up log and `check-config`.
    pub fn describe(&self) -> String {
        let licenses = match self.licenses.is_empty() {
            true => "no license pools".to_string(),
            false => {
                let pools: Vec<String> = self.licenses.iter().map(|(name, n)| format!("{name}={n}")).collect();
                format!("licenses {}", pools.join(", "))
            }
        };
        format!(
            "{} cores, {} of memory, {licenses}; a step asking for nothing gets {}",
            self.cpus,
            human_bytes(self.memory_bytes),
            plural(self.default_cpus, "core")
        )
    }

    /// Why `ask` can never run here (more than the server has of something), naming the
    /// resource, what was asked and what there is; `None` when it can.
    pub fn refusal(&self, ask: &Ask) -> Option<String> {
        if ask.cpus > self.cpus {
            return Some(format!("the step asks for {} cores; this server has {} (--cpus)", ask.cpus, self.cpus));
        }
        if ask.memory_bytes > self.memory_bytes {
            return Some(format!(
                "the step asks for {} of memory; this server has {} (--mem)",
                human_bytes(ask.memory_bytes),
                human_bytes(self.memory_bytes)
            ));
        }
        for (name, count) in &ask.licenses {
            match self.licenses.get(name) {
                None => {
                    let known = match self.licenses.is_empty() {
                        true => "none".to_string(),
                        false => self.licenses.keys().cloned().collect::<Vec<_>>().join(", "),
                    };
                    return Some(format!("the step asks for license `{name}`; this server has {known} (--license)"));
                }
                Some(total) if count > total => {
                    return Some(format!(
                        "the step asks for {count} of license `{name}`; this server has {total} (--license)"
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(cap) = self.per_cn.cpus.filter(|cap| ask.cpus > *cap) {
            return Some(format!(
                "the step asks for {} cores; one certificate may hold {cap} (--max-cpus-per-cn)",
                ask.cpus
            ));
        }
        for (name, count) in &ask.licenses {
            if let Some(cap) = self.per_cn.licenses.get(name).filter(|cap| count > *cap) {
                return Some(format!(
                    "the step asks for {count} of license `{name}`; one certificate may hold {cap} (--license-per-cn)"
                ));
            }
        }
        None
    }

    /// Takes the per-CN caps of `--max-cpus-per-cn` and `--license-per-cn NAME=COUNT`.
    pub fn with_per_cn(mut self, cpus: Option<u32>, licenses: &[String]) -> Result<Capacity, String> {
        self.per_cn.cpus = cpus;
        for given in licenses {
            let parsed =
                given.split_once('=').and_then(|(name, count)| Some((name.trim(), count.trim().parse::<u32>().ok()?)));
            match parsed {
                Some((name, count)) if self.licenses.contains_key(name) && count >= 1 => {
                    self.per_cn.licenses.insert(name.to_string(), count);
                }
                _ => {
                    return Err(format!(
                        "--license-per-cn {given}: not NAME=COUNT for a pool of --license and a count from 1\n\
                         hint: --license spectre=3 --license-per-cn spectre=2"
                    ));
                }
            }
        }
        Ok(self)
    }
}

/// The variables of `--job-env NAME=VALUE`, checked: a name a shell would take, no
/// NUL byte.
pub fn job_env(given: &[String]) -> Result<Vec<(String, String)>, String> {
    given
        .iter()
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair.as_str(), ""));
            let shell_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            match (pair.contains('='), shell_name && !value.contains('\0')) {
                (true, true) => Ok((name.to_string(), value.to_string())),
                _ => Err(format!(
                    "--job-env {pair}: not NAME=VALUE with a variable name\nhint: --job-env OMP_WAIT_POLICY=passive"
                )),
            }
        })
        .collect()
}

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
        let (cpus, licenses) = self.held.get(&ask.owner).cloned().unwrap_or_default();
        if let Some(cap) = caps.cpus.filter(|cap| cpus + ask.cpus > *cap) {
            return Some(format!("waiting: your certificate holds {cpus} of the {cap} cores one may hold"));
        }
        for (name, count) in &ask.licenses {
            let held = licenses.get(name).copied().unwrap_or(0);
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

fn plural(count: u32, what: &str) -> String {
    match count {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
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
    /// Whether this server holds `asked` (and gives it back on drop).
    held: bool,
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
        if !self.held {
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
            return Grant { pool: self.clone(), asked: ask.clone(), cores: Vec::new(), held: false };
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
        Grant { pool: self.clone(), asked: ask.clone(), cores, held: true }
    }
}

#[cfg(test)]
mod tests;

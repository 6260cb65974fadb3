//! What commands may hold at once and what one step asks for: `Capacity` (`--cpus`,
//! `--mem`, `--license NAME=COUNT`, `--default-cpus`, the per-certificate caps), `Ask`
//! (a step's request as the wire brings it, the defaults filled in), why a request
//! could never run here (`Capacity::refusal`), and `--job-env`.

use std::collections::BTreeMap;
use std::time::Duration;

use lrpymrpc_units::human_bytes;

use super::{machine, plural};

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

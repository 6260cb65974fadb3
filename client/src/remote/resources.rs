//! What a step asks of a server's cores, memory and licenses (`--cpus`, `--mem`,
//! `--license`, `--walltime`), as the request the extension carries, and whether a
//! server could ever give it: a server that never could is passed over (or, alone,
//! the step is refused) before anything is uploaded.

use lrpymrpc_proto::v1::{CapabilitiesResponse, Capacity};
use lrpymrpc_proto::{License, Resources};
use lrpymrpc_units::human_bytes;

use crate::exit::ClientError;

/// The request `--cpus`, `--mem`, `--license` and `--walltime` make; `None` when
/// none of them was given (the server's defaults apply).
pub fn request(
    cpus: Option<u32>,
    mem: Option<u64>,
    licenses: &[String],
    walltime: Option<std::time::Duration>,
) -> Result<Option<Resources>, ClientError> {
    let mut asked = Vec::new();
    for given in licenses.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
        let (name, count) = match given.split_once(':') {
            Some((name, count)) => (name, count.parse::<u32>().ok().filter(|n| (1..=10_000).contains(n))),
            None => (given, Some(1)),
        };
        let named = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        match (named, count) {
            (true, Some(count)) => asked.push(License { name: name.to_string(), count }),
            _ => {
                return Err(ClientError::Usage {
                    message: format!("--license {given}: not NAME or NAME:COUNT (a pool name, a count from 1)"),
                    hint: Some("--license spectre, or --license hspice:2".into()),
                });
            }
        }
    }
    if cpus.is_none() && mem.is_none() && asked.is_empty() && walltime.is_none() {
        return Ok(None);
    }
    Ok(Some(Resources {
        cpus: cpus.unwrap_or(0),
        memory_bytes: mem.unwrap_or(0),
        licenses: asked,
        walltime_seconds: walltime.map_or(0, |w| w.as_secs().max(1)),
    }))
}

/// What the server can give, when it hears resource requests at all.
pub fn capacity(capabilities: Option<&CapabilitiesResponse>) -> Option<&Capacity> {
    let capabilities = capabilities?;
    match capabilities.features.as_ref().is_some_and(|f| f.resources) {
        true => capabilities.capacity.as_ref(),
        false => None,
    }
}

/// Why `request` could never run on a server of `capacity`, naming the option and
/// what the server has; `None` when it could.
pub fn never_fits(request: &Resources, capacity: &Capacity) -> Option<String> {
    if request.cpus > capacity.cpus {
        return Some(format!("--cpus {}: the server has {} cores for commands", request.cpus, capacity.cpus));
    }
    if request.memory_bytes > capacity.memory_bytes {
        return Some(format!(
            "--mem {}: the server has {} for commands",
            human_bytes(request.memory_bytes),
            human_bytes(capacity.memory_bytes)
        ));
    }
    for license in &request.licenses {
        match capacity.licenses.iter().find(|pool| pool.name == license.name) {
            None => {
                let pools: Vec<String> = capacity.licenses.iter().map(|p| format!("{}={}", p.name, p.total)).collect();
                let has = if pools.is_empty() { "no license pools".to_string() } else { pools.join(", ") };
                return Some(format!("--license {}: the server has no such pool ({has})", license.name));
            }
            Some(pool) if license.count > pool.total => {
                return Some(format!(
                    "--license {}:{}: the server has {} of it",
                    license.name, license.count, pool.total
                ));
            }
            Some(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use lrpymrpc_proto::v1::LicensePool;

    #[test]
    fn requests_are_read_and_what_never_fits_is_named() {
        assert_eq!(request(None, None, &[], None).unwrap(), None);
        let asked = request(Some(2), None, &["spectre".into(), "hspice:2".into()], None).unwrap().unwrap();
        assert_eq!((asked.cpus, asked.licenses.len(), asked.licenses[1].count), (2, 2, 2));
        for bad in ["a b", ":2", "x:0", "x:many"] {
            assert!(request(None, None, &[bad.into()], None).is_err(), "{bad}");
        }
        let capacity = Capacity {
            cpus: 3,
            memory_bytes: 8 << 30,
            licenses: vec![LicensePool { name: "spectre".into(), total: 2, free: 2 }],
            ..Default::default()
        };
        assert_eq!(never_fits(&asked, &capacity).unwrap(), "--license hspice: the server has no such pool (spectre=2)");
        let big = Resources { cpus: 4, ..Default::default() };
        assert_eq!(never_fits(&big, &capacity).unwrap(), "--cpus 4: the server has 3 cores for commands");
        let fits =
            Resources { cpus: 3, licenses: vec![License { name: "spectre".into(), count: 2 }], ..Default::default() };
        assert_eq!(never_fits(&fits, &capacity), None);
    }
}

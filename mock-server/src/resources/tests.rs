use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

fn capacity(cpus: u32, licenses: &[(&str, u32)]) -> Capacity {
    Capacity {
        cpus,
        memory_bytes: 8 << 30,
        licenses: licenses.iter().map(|(name, count)| (name.to_string(), *count)).collect(),
        default_cpus: 1,
        per_cn: PerCn::default(),
    }
}

fn ask(cpus: u32, licenses: &[(&str, u32)]) -> Ask {
    Ask {
        cpus,
        licenses: licenses.iter().map(|(name, count)| (name.to_string(), *count)).collect::<BTreeMap<_, _>>(),
        ..Ask::default()
    }
}

#[test]
fn what_can_never_run_is_refused_naming_the_resource_and_the_capacity() {
    let capacity = capacity(3, &[("spectre", 2)]);
    assert_eq!(capacity.refusal(&ask(3, &[("spectre", 2)])), None);
    assert_eq!(capacity.refusal(&ask(4, &[])).unwrap(), "the step asks for 4 cores; this server has 3 (--cpus)");
    assert_eq!(
        capacity.refusal(&ask(1, &[("spectre", 3)])).unwrap(),
        "the step asks for 3 of license `spectre`; this server has 2 (--license)"
    );
    assert_eq!(
        capacity.refusal(&ask(1, &[("hspice", 1)])).unwrap(),
        "the step asks for license `hspice`; this server has spectre (--license)"
    );
    let memory = Ask { memory_bytes: 9 << 30, ..ask(1, &[]) };
    assert!(capacity.refusal(&memory).unwrap().contains("9.00 GiB of memory; this server has 8.00 GiB"));
}

#[test]
fn requests_from_the_wire_get_defaults_and_bad_ones_are_named() {
    let capacity = Capacity { default_cpus: 2, ..capacity(4, &[]) };
    assert_eq!(Ask::from_wire(None, &capacity, "alice").unwrap().cpus, 2);
    let license = |name: &str, count| lrpymrpc_proto::License { name: name.into(), count };
    let wire = lrpymrpc_proto::Resources {
        cpus: 0,
        licenses: vec![license("spectre", 1), license("spectre", 2)],
        walltime_seconds: 90,
        ..Default::default()
    };
    let got = Ask::from_wire(Some(&wire), &capacity, "alice").unwrap();
    assert_eq!((got.cpus, got.licenses["spectre"], got.walltime), (2, 3, Some(Duration::from_secs(90))));
    for bad in [license("a b", 1), license("", 1), license("x\n", 1), license("ok", 0), license("ok", 10_001)] {
        let wire = lrpymrpc_proto::Resources { licenses: vec![bad.clone()], ..Default::default() };
        assert!(Ask::from_wire(Some(&wire), &capacity, "alice").is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn steps_wait_in_the_order_they_asked_and_say_why() {
    let pool = Arc::new(Pool::new(capacity(3, &[("hspice", 1)]), vec![0, 1], true));
    let first = pool.acquire(&ask(2, &[]), |_| panic!("the first step waits for nothing")).await;
    assert_eq!((first.cpus(), pool.snapshot().free_cpus), (2, 1));
    // Two cores are not free: the second waits, and says so.
    let said = Arc::new(Mutex::new(Vec::new()));
    let heard = said.clone();
    let second_pool = pool.clone();
    let second = tokio::spawn(async move {
        second_pool.acquire(&ask(2, &[]), move |why| heard.lock().unwrap().push(why)).await.cpus()
    });
    while said.lock().unwrap().is_empty() {
        tokio::task::yield_now().await;
    }
    assert_eq!(said.lock().unwrap()[0], "waiting for 2 cores (1 free)");
    // A one-core step behind it waits its turn, though a core is free.
    let third_said = Arc::new(Mutex::new(Vec::new()));
    let heard = third_said.clone();
    let third_pool = pool.clone();
    let third = tokio::spawn(async move {
        third_pool.acquire(&ask(1, &[]), move |why| heard.lock().unwrap().push(why)).await.cpus()
    });
    while third_said.lock().unwrap().is_empty() {
        tokio::task::yield_now().await;
    }
    assert_eq!(third_said.lock().unwrap()[0], "waiting: 1 ahead of you");
    assert_eq!(pool.snapshot().waiting, 2);
    drop(first);
    assert_eq!(second.await.unwrap(), 2);
    assert_eq!(third.await.unwrap(), 1);
    assert_eq!(pool.snapshot().free_cpus, 3, "every grant given back");
}

#[tokio::test]
async fn a_license_held_makes_the_next_wait_while_cores_are_free_and_a_gone_step_leaves_the_queue() {
    let pool = Arc::new(Pool::new(capacity(3, &[("hspice", 1)]), vec![0], true));
    let holder = pool.acquire(&ask(1, &[("hspice", 1)]), |_| {}).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let waiting_pool = pool.clone();
    let waiter = tokio::spawn(async move {
        waiting_pool.acquire(&ask(1, &[("hspice", 1)]), move |why| drop(tx.send(why))).await;
    });
    assert_eq!(rx.recv().await.unwrap(), "waiting: license hspice 1/1 in use");
    assert_eq!(pool.snapshot().free_cpus, 2);
    // The client goes away: its place goes with it.
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(pool.snapshot().waiting, 0);
    drop(holder);
    let again = pool.acquire(&ask(1, &[("hspice", 1)]), |_| panic!("free again")).await;
    // Core indices past the machine's CPUs share them.
    assert_eq!(again.cpu_ids(), vec![0]);
}

// A certificate at its cap waits, says so, and holds nobody else up; what it could
// never hold is refused.
#[tokio::test]
async fn a_certificate_at_its_cap_waits_without_holding_others_up() {
    let mut capacity = capacity(4, &[("spectre", 3)]);
    capacity = capacity.with_per_cn(None, &["spectre=1".to_string()]).unwrap();
    let as_user = |owner: &str| Ask { owner: owner.into(), ..ask(1, &[("spectre", 1)]) };
    assert!(
        capacity.refusal(&ask(1, &[("spectre", 2)])).unwrap().contains("one certificate may hold 1 (--license-per-cn)")
    );
    let pool = Arc::new(Pool::new(capacity, vec![0, 1], true));
    let first = pool.acquire(&as_user("mallory"), |_| {}).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let again = pool.clone();
    let second = tokio::spawn(async move { again.acquire(&as_user("mallory"), move |why| drop(tx.send(why))).await });
    assert_eq!(rx.recv().await.unwrap(), "waiting: your certificate holds 1 of the 1 spectre licenses one may hold");
    // Another user behind mallory's second step is not held up by it.
    let other = pool.acquire(&as_user("alice"), |why| panic!("alice waited: {why}")).await;
    drop((first, other));
    drop(second.await.unwrap());
    assert_eq!(pool.snapshot().free_licenses["spectre"], 3);
    assert!(Capacity::of_machine().with_per_cn(None, &["nosuch=1".to_string()]).is_err());
}

//! Work taken in turns per client certificate: at most a few of one CN's at once, the
//! rest of its calls waiting, so one user's costly calls (a hostile tree to check)
//! take that user's time and never the others'. Other CNs have turns of their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Turns of one kind of work, per CN.
#[derive(Debug)]
pub struct Turns {
    at_once: usize,
    by_cn: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Turns {
    /// At most `at_once` of one CN's at a time.
    pub fn new(at_once: usize) -> Turns {
        Turns { at_once, by_cn: Mutex::default() }
    }

    /// Waits for `cn`'s turn; it lasts while the permit is held.
    pub async fn turn(&self, cn: &str) -> OwnedSemaphorePermit {
        let semaphore = {
            let mut by_cn = self.by_cn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            by_cn.entry(cn.to_string()).or_insert_with(|| Arc::new(Semaphore::new(self.at_once))).clone()
        };
        semaphore.acquire_owned().await.expect("the semaphore is never closed")
    }
}

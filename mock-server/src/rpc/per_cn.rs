//! Bounds per client certificate, so one user's costly or many calls take that user's
//! time and never the others': work taken in turns (`Turns`: at most a few of one
//! CN's at once, the rest waiting; CreateJob's tree checks), and streams held open
//! (`StreamSlots`: UploadBlobs, refused beyond the bound).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::JobError;

/// Trees of one CN checked at once (CreateJob); its other CreateJobs wait.
pub const PLANS_PER_CN: usize = 2;

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

/// UploadBlobs streams at once, overall.
pub const MAX_STREAMS: usize = 64;
/// UploadBlobs streams at once of one client certificate (our client opens up to 4).
pub const MAX_STREAMS_PER_CN: usize = 8;
/// The streams open now, overall and per CN.
#[derive(Debug, Default)]
pub struct StreamSlots {
    open: Mutex<(usize, HashMap<String, usize>)>,
}

/// One open stream; its slot is given back when it drops.
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    cn: String,
}

impl StreamSlots {
    /// A slot for a stream of `cn`, or why not.
    pub fn take(self: &Arc<Self>, cn: &str) -> Result<StreamSlot, JobError> {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (all, by_cn) = &mut *open;
        if *all >= MAX_STREAMS {
            return Err(JobError::TooManyBlobStreams { limit: MAX_STREAMS, whose: "on this server" });
        }
        let of_cn = by_cn.entry(cn.to_string()).or_default();
        if *of_cn >= MAX_STREAMS_PER_CN {
            return Err(JobError::TooManyBlobStreams { limit: MAX_STREAMS_PER_CN, whose: "of one certificate" });
        }
        *of_cn += 1;
        *all += 1;
        Ok(StreamSlot { slots: self.clone(), cn: cn.to_string() })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (all, by_cn) = &mut *open;
        *all = all.saturating_sub(1);
        if let Some(of_cn) = by_cn.get_mut(&self.cn) {
            *of_cn = of_cn.saturating_sub(1);
            if *of_cn == 0 {
                by_cn.remove(&self.cn);
            }
        }
    }
}

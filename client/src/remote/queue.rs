//! Waiting for a free slot: a server that is full (every `--max-jobs` slot taken, or
//! every slot this certificate may hold) is a queue, not a failure, so `make -j16`
//! against fewer slots runs every step, the later ones when earlier ones end. The
//! client looks again after a short, growing, jittered pause (no thundering herd when
//! a slot frees), for at most `--queue-timeout`; it says once that it waits.

use std::time::{Duration, Instant};

use crate::exit::ClientError;
use crate::output::Output;
use crate::remote::session::Session;

/// The first pause before looking again; it grows by half up to [`LONGEST_PAUSE`]. A
/// look is one small call, so a step waits at most about half a second past the
/// moment a slot frees, and a hundred waiting steps cost a server 200 calls a second.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_millis(500);

/// One step's wait for a slot.
pub struct SlotWait {
    started: Instant,
    limit: Duration,
    pause: Duration,
    said: bool,
}

impl SlotWait {
    pub fn new(limit: Duration) -> SlotWait {
        SlotWait { started: Instant::now(), limit, pause: FIRST_PAUSE, said: false }
    }

    /// Pauses before the next look at `full` (the servers, by name); `false`, without
    /// pausing, once `--queue-timeout` has passed.
    pub async fn pause(&mut self, full: &str, out: &Output) -> bool {
        let waited = self.started.elapsed();
        if waited >= self.limit {
            return false;
        }
        if !self.said {
            self.said = true;
            out.note(&format!(
                "{full}: every slot is taken; waiting for one (at most {}, --queue-timeout)",
                lrpymrpc_units::human_duration(self.limit)
            ));
        }
        let pause = jittered(self.pause).min(self.limit - waited);
        tokio::time::sleep(pause).await;
        self.pause = (self.pause * 3 / 2).min(LONGEST_PAUSE);
        true
    }

    /// The refusal the wait ends with, saying how long it waited when it did.
    pub fn gave_up(&self, refused: ClientError) -> ClientError {
        match self.said {
            true => refused.queued_for(self.started.elapsed()),
            false => refused,
        }
    }

    /// Says how long the step waited, when it did.
    pub fn done(&self, out: &Output) {
        if self.said {
            out.note(&format!("a slot was free after {}", lrpymrpc_units::human_duration(self.started.elapsed())));
        }
    }
}

/// Whether a refusal means the server is full for this caller now (not out of disk,
/// not draining): asked of the server again, since both are `RESOURCE_EXHAUSTED`. A
/// legacy server, which says nothing of its load, is never taken for full.
pub async fn is_full(session: &Session, error: &ClientError) -> bool {
    let ClientError::Server { code: tonic::Code::ResourceExhausted, .. } = error else { return false };
    matches!(session.load().await, Some(load) if load.free_slots == 0 && !load.draining)
}

/// `pause` give or take a half: steps that found the same server full do not all come
/// back at the same moment.
fn jittered(pause: Duration) -> Duration {
    pause / 2 + pause.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_either_way() {
        for _ in 0..100 {
            let pause = jittered(Duration::from_millis(1000));
            assert!(pause >= Duration::from_millis(500) && pause < Duration::from_millis(1500), "{pause:?}");
        }
    }
}

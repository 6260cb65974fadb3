//! What the server counts, for Prometheus (`--metrics-listen ADDR`, off by default):
//! jobs by state and outcome, refusals by reason, bytes moved, step durations, the
//! environment cache, the content store, the action cache, and the cores, memory and
//! licenses commands hold. Labels only ever hold
//! values from small fixed sets (never a job id, a CMD or a path); the CN only with
//! `--metrics-per-cn`. The exposition format is prometheus-client's; the endpoint is
//! served through the server's one HTTP stack (`web::metrics`).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::warn;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CnOutcome {
    pub cn: LabelText,
    pub outcome: &'static str,
}

/// A label value from outside (a certificate's CN), escaped as the exposition format
/// asks (a backslash, a double quote and a line break each behind a backslash):
/// prometheus-client writes values as they are, and a CN such as `q",outcome="x`
/// would otherwise break the whole scrape.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct LabelText(pub String);

impl prometheus_client::encoding::EncodeLabelValue for LabelText {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// A license pool by name: the administrator's (`--license`), a small fixed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Pool {
    pub license: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Step {
    pub step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Event {
    pub event: &'static str,
}

/// Durations from 10 ms to about 7 hours, four times wider each.
fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 4.0, 11))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    per_cn: bool,
    /// Commands running now, and jobs uploaded whose command has not started (set
    /// when scraped).
    pub jobs_running: Gauge,
    pub jobs_waiting: Gauge,
    pub jobs_finished: Family<Outcome, Counter>,
    pub jobs_finished_by_cn: Family<CnOutcome, Counter>,
    pub refusals: Family<Reason, Counter>,
    pub uploaded_bytes: Counter,
    pub downloaded_bytes: Counter,
    pub step_seconds: Family<Step, Histogram, fn() -> Histogram>,
    pub env_cache: Family<Event, Counter>,
    /// Bytes in the content store (set when scraped).
    pub store_bytes: Gauge,
    /// Files of content-addressed uploads the server had, and did not have.
    pub store_files: Family<Event, Counter>,
    pub action_cache: Family<Event, Counter>,
    /// Cores, memory and licenses commands hold now, and steps waiting for them (set
    /// when scraped).
    pub cores_in_use: Gauge,
    pub memory_in_use_bytes: Gauge,
    pub licenses_in_use: Family<Pool, Gauge>,
    pub steps_waiting_for_resources: Gauge,
}

impl Metrics {
    pub fn new(per_cn: bool) -> Metrics {
        let mut registry = Registry::with_prefix("lrpymrpc");
        let metrics = Metrics {
            registry: Registry::default(),
            per_cn,
            jobs_running: Gauge::default(),
            jobs_waiting: Gauge::default(),
            jobs_finished: Family::default(),
            jobs_finished_by_cn: Family::default(),
            refusals: Family::default(),
            uploaded_bytes: Counter::default(),
            downloaded_bytes: Counter::default(),
            step_seconds: Family::new_with_constructor(step_histogram as fn() -> Histogram),
            env_cache: Family::default(),
            store_bytes: Gauge::default(),
            store_files: Family::default(),
            action_cache: Family::default(),
            cores_in_use: Gauge::default(),
            memory_in_use_bytes: Gauge::default(),
            licenses_in_use: Family::default(),
            steps_waiting_for_resources: Gauge::default(),
        };
        registry.register("jobs_running", "Commands running now", metrics.jobs_running.clone());
        registry.register("jobs_waiting", "Jobs uploaded whose command has not started", metrics.jobs_waiting.clone());
        registry.register(
            "jobs_finished",
            "Execute steps ended, by outcome (success, failure, signal, error, cancelled, cached)",
            metrics.jobs_finished.clone(),
        );
        if per_cn {
            registry.register(
                "jobs_finished_by_cn",
                "Execute steps ended, by client certificate CN and outcome (--metrics-per-cn)",
                metrics.jobs_finished_by_cn.clone(),
            );
        }
        registry.register(
            "refusals",
            "Calls and connections refused, by reason (permission, identity, busy, draining, handshake, unauthenticated, \
             request)",
            metrics.refusals.clone(),
        );
        registry.register("uploaded_bytes", "Bytes received in uploads (as sent)", metrics.uploaded_bytes.clone());
        registry.register("downloaded_bytes", "Bytes of results sent (as sent)", metrics.downloaded_bytes.clone());
        registry.register(
            "step_duration_seconds",
            "How long steps took (upload, pip, command, download)",
            metrics.step_seconds.clone(),
        );
        registry.register(
            "env_cache",
            "Python environments: reused (hit), built for the cache (build), built for one job (unshared)",
            metrics.env_cache.clone(),
        );
        registry.register(
            "store_bytes",
            "What the content store's blobs take on disk, in whole 4 KiB blocks",
            metrics.store_bytes.clone(),
        );
        registry.register(
            "store_files",
            "Files of content-addressed uploads the server had (present) or asked for (missing)",
            metrics.store_files.clone(),
        );
        registry.register(
            "action_cache",
            "Action cache lookups: served (hit), run (miss), runs recorded (recorded)",
            metrics.action_cache.clone(),
        );
        registry.register("cores_in_use", "Cores commands hold now (--cpus)", metrics.cores_in_use.clone());
        registry.register(
            "memory_in_use_bytes",
            "Memory commands have reserved now (--mem)",
            metrics.memory_in_use_bytes.clone(),
        );
        registry.register("licenses_in_use", "Licenses commands hold now, by pool", metrics.licenses_in_use.clone());
        registry.register(
            "steps_waiting_for_resources",
            "Steps waiting for cores, memory or licenses",
            metrics.steps_waiting_for_resources.clone(),
        );
        Metrics { registry, ..metrics }
    }

    /// Counts an Execute step's end.
    pub fn finished(&self, cn: &str, outcome: &'static str) {
        self.jobs_finished.get_or_create(&Outcome { outcome }).inc();
        if self.per_cn {
            self.jobs_finished_by_cn.get_or_create(&CnOutcome { cn: LabelText(cn.to_string()), outcome }).inc();
        }
    }

    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&Reason { reason }).inc();
    }

    /// Counts a refusal of a call, when `error` is one (a failure is not).
    pub fn refused_for(&self, error: &crate::error::JobError) {
        use crate::error::JobError;
        let reason = match error {
            JobError::NotAllowed { .. } => "permission",
            JobError::NoIdentity(_) => "identity",
            JobError::Busy { .. } | JobError::BusyForCn { .. } => "busy",
            JobError::Draining => "draining",
            JobError::BadJobId(_) | JobError::BadResultPath { .. } | JobError::BadRepoUrl { .. } => "request",
            _ => return,
        };
        self.refused(reason);
    }

    pub fn step(&self, step: &'static str, took: Duration) {
        self.step_seconds.get_or_create(&Step { step }).observe(took.as_secs_f64());
    }

    pub fn count(family: &Family<Event, Counter>, event: &'static str, by: u64) {
        family.get_or_create(&Event { event }).inc_by(by);
    }

    /// The text exposition of everything.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            warn!(error = %error, "cannot encode the metrics");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_what_moved_and_nothing_per_cn_unless_asked() {
        let metrics = Metrics::new(false);
        metrics.finished("alice", "success");
        metrics.refused("permission");
        metrics.step("command", Duration::from_millis(1500));
        metrics.uploaded_bytes.inc_by(42);
        let text = metrics.encode();
        assert!(text.contains("lrpymrpc_jobs_finished_total{outcome=\"success\"} 1"), "{text}");
        assert!(text.contains("lrpymrpc_refusals_total{reason=\"permission\"} 1"), "{text}");
        assert!(text.contains("lrpymrpc_uploaded_bytes_total 42"), "{text}");
        assert!(text.contains("lrpymrpc_step_duration_seconds_count{step=\"command\"} 1"), "{text}");
        assert!(!text.contains("alice"), "{text}");
        let per_cn = Metrics::new(true);
        per_cn.finished("alice", "success");
        assert!(per_cn.encode().contains("cn=\"alice\""));
        per_cn.finished("q\",outcome=\"x\\\n", "success");
        assert!(per_cn.encode().contains(r#"cn="q\",outcome=\"x\\\n",outcome="success""#), "{}", per_cn.encode());
    }
}

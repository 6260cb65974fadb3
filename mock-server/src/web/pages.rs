//! The status page's HTML and SVG, written with maud: every value from outside (a CN,
//! a reason, a license name) is escaped by the template itself, never pasted into
//! markup with `format!`. The page is whole without scripts; `live.js` only swaps in
//! the fragment the event stream sends (the same [`overview`] markup).

use std::time::Duration;

use lrpymrpc_proto::v1::{StatusJob, StatusResponse};
use lrpymrpc_units::{human_bytes, human_duration};
use maud::{DOCTYPE, Markup, html};

use super::history::{SPAN, Sample, unix_seconds};

/// The most waiting and running jobs listed each: a huge queue stays a bounded page
/// (the rest are counted).
pub const MAX_LISTED: usize = 200;

/// A whole page around `body`.
pub fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                link rel="stylesheet" href="/style.css";
                script src="/live.js" defer {}
            }
            body {
                h1 { (title) }
                (body)
            }
        }
    }
}

/// The overview: capacity and use, the queue with its reasons, what runs, and the
/// last 24 hours. `samples` are the history, oldest first.
pub fn overview(status: &StatusResponse, samples: &[Sample]) -> Markup {
    let capacity = status.capacity.clone().unwrap_or_default();
    let load = status.load.unwrap_or_default();
    let (waiting, running): (Vec<&StatusJob>, Vec<&StatusJob>) = status.jobs.iter().partition(|job| job.waiting);
    html! {
        section id="server" {
            p {
                strong { (status.server) } " · executor " (status.executor)
                " · " (load.running_jobs) " of " (load.max_jobs) " jobs running"
                @if load.draining { " · " strong class="draining" { "draining: no new jobs" } }
            }
            table class="use" {
                (meter_row("cores", u64::from(capacity.cpus - capacity.free_cpus.min(capacity.cpus)), u64::from(capacity.cpus), &|n| n.to_string()))
                (meter_row("memory", capacity.memory_bytes.saturating_sub(capacity.free_memory_bytes), capacity.memory_bytes, &|n| human_bytes(n)))
                @for pool in &capacity.licenses {
                    (meter_row(&format!("license {}", pool.name), u64::from(pool.total.saturating_sub(pool.free)), u64::from(pool.total), &|n| n.to_string()))
                }
            }
        }
        section id="queue" {
            h2 { "Waiting (" (waiting.len()) ")" }
            @if waiting.is_empty() {
                p class="none" { "Nothing waits." }
            } @else {
                table {
                    thead { tr { th { "#" } th { "CN" } th { "asks for" } th { "why it waits" } th { "waiting for" } } }
                    tbody {
                        @for job in waiting.iter().take(MAX_LISTED) {
                            tr class="waiting" {
                                td { (job.position) }
                                td class="cn" { (job.cn) }
                                td { (asked(job)) }
                                td class="reason" { (job.reason) }
                                td { (elapsed(job)) }
                            }
                        }
                    }
                }
                @if waiting.len() > MAX_LISTED { p { "and " (waiting.len() - MAX_LISTED) " more" } }
            }
        }
        section id="running" {
            h2 { "Running (" (running.len()) ")" }
            @if running.is_empty() {
                p class="none" { "Nothing runs." }
            } @else {
                table {
                    thead { tr { th { "CN" } th { "holds" } th { "running for" } } }
                    tbody {
                        @for job in running.iter().take(MAX_LISTED) {
                            tr class="running" {
                                td class="cn" { (job.cn) }
                                td { (asked(job)) }
                                td { (elapsed(job)) }
                            }
                        }
                    }
                }
                @if running.len() > MAX_LISTED { p { "and " (running.len() - MAX_LISTED) " more" } }
            }
        }
        section id="history" {
            h2 { "The last 24 hours" }
            (plot("cores in use", samples, u64::from(capacity.cpus), &|s| u64::from(s.cores), &|n| n.to_string()))
            (plot("memory in use", samples, capacity.memory_bytes, &|s| s.memory_bytes, &|n| human_bytes(n)))
            @for pool in &capacity.licenses {
                (plot(&format!("license {} in use", pool.name), samples, u64::from(pool.total),
                      &|s| u64::from(s.licenses.get(&pool.name).copied().unwrap_or(0)), &|n| n.to_string()))
            }
            (plot("steps waiting", samples, samples.iter().map(|s| u64::from(s.waiting)).max().unwrap_or(0).max(1),
                  &|s| u64::from(s.waiting), &|n| n.to_string()))
        }
    }
}

/// What a job's own page shows (its owner's link only leads here).
pub struct JobView<'a> {
    pub cn: &'a str,
    pub run_name: &'a str,
    pub command: &'a str,
    /// Where it stands, in words.
    pub state: &'a str,
    /// Its output so far (the newest lines kept).
    pub lines: &'a [String],
    /// Where its live output is read from.
    pub events: &'a str,
}

/// A job's own page: its command, where it stands and its output, which `live.js`
/// extends line by line (as text) from `events`.
pub fn job(job: &JobView<'_>) -> Markup {
    html! {
        table class="job" {
            tr { th { "CN" } td class="cn" { (job.cn) } }
            @if !job.run_name.is_empty() { tr { th { "run" } td { (job.run_name) } } }
            tr { th { "command" } td { code { (job.command) } } }
            tr { th { "state" } td id="state" { (job.state) } }
        }
        h2 { "Output" }
        pre id="output" data-events=(job.events) {
            @for line in job.lines { (line) "\n" }
        }
    }
}

fn meter_row(what: &str, used: u64, total: u64, show: &dyn Fn(u64) -> String) -> Markup {
    html! {
        tr {
            th { (what) }
            td { meter min="0" max=(total.max(1)) value=(used) title=(format!("{} of {}", show(used), show(total))) {} }
            td { (show(used)) "/" (show(total)) " in use" }
        }
    }
}

/// What a job asked for, as the terminal says it: `2 cores, 512.0 MiB, spectre:1`.
fn asked(job: &StatusJob) -> String {
    let resources = job.resources.clone().unwrap_or_default();
    let mut parts = vec![match resources.cpus {
        1 => "1 core".to_string(),
        n => format!("{n} cores"),
    }];
    if resources.memory_bytes > 0 {
        parts.push(human_bytes(resources.memory_bytes));
    }
    parts.extend(resources.licenses.iter().map(|license| format!("{}:{}", license.name, license.count)));
    parts.join(", ")
}

fn elapsed(job: &StatusJob) -> String {
    human_duration(Duration::from_secs(job.duration_ms / 1000))
}

/// A line plot of `value` over the last [`SPAN`] as SVG, from 0 to `top`.
fn plot(
    title: &str,
    samples: &[Sample],
    top: u64,
    value: &dyn Fn(&Sample) -> u64,
    show: &dyn Fn(u64) -> String,
) -> Markup {
    const WIDTH: f64 = 600.0;
    const HEIGHT: f64 = 80.0;
    let now = unix_seconds(std::time::SystemTime::now());
    let since = now.saturating_sub(SPAN.as_secs());
    let top = top.max(1);
    let points: Vec<String> = samples
        .iter()
        .filter(|sample| sample.unix_seconds >= since)
        .map(|sample| {
            let x = (sample.unix_seconds - since) as f64 / SPAN.as_secs() as f64 * WIDTH;
            let y = HEIGHT - value(sample).min(top) as f64 / top as f64 * HEIGHT;
            format!("{x:.1},{y:.1}")
        })
        .collect();
    // The area under the line, down to the axis from its first to its last point.
    let area = match (points.first(), points.last()) {
        (Some(first), Some(last)) => {
            let x = |point: &String| point.split(',').next().unwrap_or("0").to_string();
            format!("{},{HEIGHT} {} {},{HEIGHT}", x(first), points.join(" "), x(last))
        }
        _ => String::new(),
    };
    let last = samples.last().map(value);
    html! {
        figure class="plot" {
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(title) {
                title { (title) }
                rect class="frame" x="0" y="0" width=(WIDTH) height=(HEIGHT) {}
                @if !points.is_empty() {
                    polygon class="area" points=(area) {}
                    polyline class="line" points=(points.join(" ")) {}
                }
            }
            figcaption {
                (title) " (of " (show(top)) "), 24 h ago to now"
                @if let Some(last) = last { ": " (show(last)) " now" } @else { ": no samples yet" }
            }
        }
    }
}

/// A busy server's status and a day of its samples (for the benchmark and tests):
/// `waiting` steps in the queue, `running` running, `samples` a minute apart, each job
/// asking for cores, memory and a license.
#[cfg(any(test, feature = "testing"))]
pub fn busy_example(waiting: usize, running: usize, samples: usize) -> (StatusResponse, Vec<Sample>) {
    use lrpymrpc_proto::v1::{Capacity, LicensePool};
    let job = |n: usize, waiting: bool| StatusJob {
        cn: format!("designer-{}", n % 40),
        waiting,
        position: if waiting { u32::try_from(n + 1).unwrap_or(u32::MAX) } else { 0 },
        reason: if waiting { "waiting: license spectre 3/3 in use, 2 ahead of you".into() } else { String::new() },
        resources: Some(lrpymrpc_proto::Resources {
            cpus: 2,
            memory_bytes: 4 << 30,
            licenses: vec![lrpymrpc_proto::License { name: "spectre".into(), count: 1 }],
            walltime_seconds: 0,
        }),
        duration_ms: 1000 * n as u64,
        ..Default::default()
    };
    let status = StatusResponse {
        server: "lrpymrpc-server 0.1.0".into(),
        executor: "local".into(),
        capacity: Some(Capacity {
            cpus: 64,
            free_cpus: 2,
            memory_bytes: 256 << 30,
            free_memory_bytes: 20 << 30,
            licenses: vec![LicensePool { name: "spectre".into(), total: 3, free: 0 }],
            ..Default::default()
        }),
        load: None,
        jobs: (0..waiting).map(|n| job(n, true)).chain((0..running).map(|n| job(n, false))).collect(),
        page_port: 0,
    };
    let now = unix_seconds(std::time::SystemTime::now());
    let samples = (0..samples as u64)
        .map(|minute| Sample {
            unix_seconds: now.saturating_sub((samples as u64 - minute) * 60),
            cores: u32::try_from(minute % 64).unwrap_or(0),
            memory_bytes: (minute % 200) << 30,
            waiting: u32::try_from(minute % 1000).unwrap_or(0),
            licenses: [("spectre".to_string(), u32::try_from(minute % 4).unwrap_or(0))].into(),
        })
        .collect();
    (status, samples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lrpymrpc_proto::v1::{Capacity, LicensePool};

    // Every field a user or a command can set reaches the page as text, never as
    // markup: the CN (from a certificate), the reason (which names licenses), the
    // license pool's name.
    #[test]
    fn text_from_outside_is_escaped_in_every_view() {
        let hostile = "<script>alert(1)</script>\"'&";
        let status = StatusResponse {
            server: "lrpymrpc-server 1".into(),
            executor: "local".into(),
            capacity: Some(Capacity {
                cpus: 2,
                licenses: vec![LicensePool { name: hostile.into(), total: 1, free: 0 }],
                ..Default::default()
            }),
            load: None,
            jobs: vec![
                StatusJob {
                    cn: hostile.into(),
                    waiting: true,
                    position: 1,
                    reason: hostile.into(),
                    ..Default::default()
                },
                StatusJob { cn: hostile.into(), ..Default::default() },
            ],
            page_port: 0,
        };
        let sample = Sample {
            unix_seconds: unix_seconds(std::time::SystemTime::now()),
            cores: 1,
            memory_bytes: 0,
            waiting: 1,
            licenses: [(hostile.to_string(), 1)].into(),
        };
        let html = page("status", overview(&status, &[sample])).into_string();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;"), "{html}");
        assert!(html.contains("<polyline"), "{html}");
    }

    #[test]
    fn a_thousand_waiting_jobs_list_a_bounded_page() {
        let (status, samples) = busy_example(1000, 100, 1440);
        let html = overview(&status, &samples).into_string();
        assert_eq!(html.matches("<tr class=\"waiting\">").count(), MAX_LISTED);
        assert!(html.contains("Waiting (1000)") && html.contains("and 800 more"), "{html}");
        assert_eq!(html.matches("<tr class=\"running\">").count(), 100);
    }
}

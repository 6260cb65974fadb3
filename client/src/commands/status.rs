//! `lrpymrpc status`: what each configured server's compute is doing, asked with the
//! extension service's `Status` over the usual mutual TLS: reachable or why not, its
//! version and executor, cores, memory and each license pool (total and free), the
//! steps waiting for resources in queue order with the reason and how long, and what
//! runs. The caller's own jobs are marked and shown whole (job id, command, run name);
//! another CN's show only CN, state, resources and times (the server sends no more).
//! `--json` prints one document (schema `lrpymrpc-status/1`) for scripts; `--watch`
//! asks again every 2 s, redrawn in place on a terminal, until Ctrl-C. A legacy
//! server shows as such. Exits 0 only when every server answered (or, watching, when
//! Ctrl-C ended it).

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use lrpymrpc_proto::v1::{StatusJob, StatusResponse};
use lrpymrpc_units::{human_bytes, human_duration};

use crate::cli::Args;
use crate::exit::ClientError;
use crate::output::clean_text;

/// The JSON document's schema name and version.
const SCHEMA: &str = "lrpymrpc-status/1";

/// What one server said, or why it said nothing.
enum Answer {
    Status(Box<StatusResponse>),
    /// Answers only the original calls (or an older server of ours without `Status`).
    Legacy,
    Unreachable(String),
}

/// How often `--watch` asks again.
const WATCH_EVERY: Duration = Duration::from_secs(2);

pub fn run(args: Args, json: bool, watch: bool) -> ExitCode {
    super::durable_jobs::with_job(args, |job, out| async move {
        if watch {
            use std::io::{IsTerminal, Write};
            let terminal = std::io::stdout().is_terminal();
            let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .map_err(|error| ClientError::local(format!("cannot handle Ctrl-C: {error}")))?;
            // Watching until Ctrl-C is what was asked: stopping it is no failure.
            loop {
                let answers = ask_all(&job, &out).await;
                let report = as_text(&answers);
                let mut stdout = std::io::stdout().lock();
                let _ = match terminal {
                    // Home and clear, then the report: redrawn in place.
                    true => write!(stdout, "\x1b[H\x1b[2J{report}"),
                    false => write!(stdout, "\n{report}"),
                };
                let _ = stdout.flush();
                drop(stdout);
                tokio::select! {
                    () = tokio::time::sleep(WATCH_EVERY) => {}
                    _ = interrupt.recv() => return Ok(()),
                }
            }
        }
        let answers = ask_all(&job, &out).await;
        let unanswered = answers.iter().filter(|(_, answer)| matches!(answer, Answer::Unreachable(_))).count();
        match json {
            true => println!("{}", as_json(&answers)),
            false => print!("{}", as_text(&answers)),
        }
        match unanswered {
            0 => Ok(()),
            n => Err(ClientError::local(format!("{n} of {} server(s) did not answer", answers.len()))),
        }
    })
}

/// Every configured server's answer, in the order configured.
async fn ask_all(job: &crate::job::Job, out: &crate::output::Output) -> Vec<(String, Answer)> {
    let mut answers = Vec::new();
    for peer in super::durable_jobs::peers(job) {
        let answer = match super::durable_jobs::connect(job, out, &peer).await {
            Err(error) => Answer::Unreachable(error.to_string()),
            Ok(session) if !session.has_status() => Answer::Legacy,
            Ok(session) => match session.status().await {
                Ok(mut status) => {
                    // Own jobs' page links as whole URLs, at the host this client dials
                    // (a path only a page-serving server gives, and only to the owner).
                    for job in status.jobs.iter_mut().filter(|job| job.own && !job.page_path.is_empty()) {
                        job.page_path = match status.page_port {
                            0 => String::new(),
                            port => super::durable_jobs::page_url(&peer, port, &job.page_path),
                        };
                    }
                    Answer::Status(Box::new(status))
                }
                Err(error) => Answer::Unreachable(error.to_string()),
            },
        };
        answers.push((peer.to_string(), answer));
    }
    answers
}

/// The text report: a block per server.
fn as_text(answers: &[(String, Answer)]) -> String {
    let mut text = String::new();
    for (server, answer) in answers {
        let status = match answer {
            Answer::Unreachable(why) => {
                let _ = writeln!(text, "{server}: not reachable: {}", clean_text(why));
                continue;
            }
            Answer::Legacy => {
                let _ = writeln!(text, "{server}: a legacy server (it says nothing of its compute)");
                continue;
            }
            Answer::Status(status) => status,
        };
        let _ = writeln!(text, "{server}: {}, executor {}", clean_text(&status.server), clean_text(&status.executor));
        if let Some(capacity) = &status.capacity {
            let mut pools = vec![
                format!("cores {}/{} free", capacity.free_cpus, capacity.cpus),
                format!(
                    "memory {} of {} free",
                    human_bytes(capacity.free_memory_bytes),
                    human_bytes(capacity.memory_bytes)
                ),
            ];
            for pool in &capacity.licenses {
                pools.push(format!(
                    "{} {}/{} in use",
                    clean_text(&pool.name),
                    pool.total - pool.free.min(pool.total),
                    pool.total
                ));
            }
            let _ = writeln!(text, "  {}", pools.join(", "));
        }
        if status.jobs.is_empty() {
            let _ = writeln!(text, "  nothing waits or runs");
        }
        for job in &status.jobs {
            let _ = writeln!(text, "  {}", job_line(job));
        }
    }
    text
}

/// One job: waiting (place, reason) or running; whose; what it asked for; how long.
fn job_line(job: &StatusJob) -> String {
    let state = match job.waiting {
        true => format!("WAITING #{}", job.position),
        false => "RUNNING".to_string(),
    };
    let whose = match job.own {
        true => format!("{} (you)", clean_text(&job.cn)),
        false => clean_text(&job.cn),
    };
    let mut line = format!(
        "{state:<11} {whose:<24} {:<28} for {}",
        asks(job),
        human_duration(Duration::from_millis(job.duration_ms))
    );
    if job.waiting {
        let _ = write!(line, "  {}", clean_text(&job.reason));
    }
    if job.own {
        let _ = write!(line, "  job {}", clean_text(&job.unique_id));
        if !job.run_name.is_empty() {
            let _ = write!(line, " run {}", clean_text(&job.run_name));
        }
        let _ = write!(line, "  `{}`", clean_text(&job.command));
        if !job.page_path.is_empty() {
            let _ = write!(line, "  page {}", clean_text(&job.page_path));
        }
    }
    line
}

/// What a job asked for, in words (`2 cores, 1.0 GiB, spectre:1`).
fn asks(job: &StatusJob) -> String {
    let Some(asked) = &job.resources else { return "-".into() };
    let mut words = vec![match asked.cpus {
        1 => "1 core".to_string(),
        cpus => format!("{cpus} cores"),
    }];
    if asked.memory_bytes > 0 {
        words.push(human_bytes(asked.memory_bytes));
    }
    words.extend(asked.licenses.iter().map(|license| format!("{}:{}", clean_text(&license.name), license.count)));
    words.join(", ")
}

/// The JSON document (`lrpymrpc-status/1`, docs/protocol.md).
fn as_json(answers: &[(String, Answer)]) -> String {
    let servers: Vec<String> = answers
        .iter()
        .map(|(server, answer)| match answer {
            Answer::Unreachable(why) => {
                format!("{{\"server\":{},\"reachable\":false,\"error\":{}}}", string(server), string(why))
            }
            Answer::Legacy => format!("{{\"server\":{},\"reachable\":true,\"legacy\":true}}", string(server)),
            Answer::Status(status) => {
                let capacity = status.capacity.clone().unwrap_or_default();
                let licenses: Vec<String> = capacity
                    .licenses
                    .iter()
                    .map(|pool| {
                        format!("{{\"name\":{},\"total\":{},\"free\":{}}}", string(&pool.name), pool.total, pool.free)
                    })
                    .collect();
                let jobs: Vec<String> = status.jobs.iter().map(job_json).collect();
                format!(
                    "{{\"server\":{},\"reachable\":true,\"legacy\":false,\"version\":{},\"executor\":{},\
                     \"capacity\":{{\"cpus\":{},\"free_cpus\":{},\"memory_bytes\":{},\"free_memory_bytes\":{},\
                     \"licenses\":[{}]}},\"jobs\":[{}]}}",
                    string(server),
                    string(&status.server),
                    string(&status.executor),
                    capacity.cpus,
                    capacity.free_cpus,
                    capacity.memory_bytes,
                    capacity.free_memory_bytes,
                    licenses.join(","),
                    jobs.join(",")
                )
            }
        })
        .collect();
    format!("{{\"schema\":{},\"servers\":[{}]}}", string(SCHEMA), servers.join(","))
}

fn job_json(job: &StatusJob) -> String {
    let asked = job.resources.clone().unwrap_or_default();
    let licenses: Vec<String> = asked
        .licenses
        .iter()
        .map(|license| format!("{{\"name\":{},\"count\":{}}}", string(&license.name), license.count))
        .collect();
    format!(
        "{{\"cn\":{},\"own\":{},\"state\":{},\"position\":{},\"reason\":{},\"cpus\":{},\"memory_bytes\":{},\
         \"licenses\":[{}],\"started_unix_seconds\":{},\"duration_ms\":{},\"job_id\":{},\"command\":{},\"run_name\":{},\
         \"page_url\":{}}}",
        string(&job.cn),
        job.own,
        string(if job.waiting { "waiting" } else { "running" }),
        job.position,
        string(&job.reason),
        asked.cpus,
        asked.memory_bytes,
        licenses.join(","),
        job.started_unix_seconds,
        job.duration_ms,
        string(&job.unique_id),
        string(&job.command),
        string(&job.run_name),
        string(&job.page_path)
    )
}

/// A JSON string: quotes, backslashes and control characters escaped, whatever the
/// server sent.
fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped_whatever_they_hold() {
        assert_eq!(string("a\"b\\c\n\u{1b}[2J</script>"), "\"a\\\"b\\\\c\\u000a\\u001b[2J</script>\"");
    }
}

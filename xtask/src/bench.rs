//! `cargo xtask bench`: the performance numbers, measured against reference pipelines
//! on the same data in the same run. Release binaries, a mock server over mutual TLS
//! on loopback, workloads generated from a fixed seed in a temporary directory:
//!
//! - W1: a small job (10 files, about 10 KB, a trivial command, a small result), repeated.
//! - W2: about 200 MB in 2,000 files (half text, half random bytes, three levels deep):
//!   upload, a remote `cp -r`, download; wall time, client CPU time and peak RSS.
//! - W3: 8 concurrent W1 jobs with distinct RUN_NAMEs.
//! - W4 (`--big`): W2 at 2 GB, to show the client's memory stays flat; W4c the same
//!   content-addressed, into a cold store.
//! - W5: a job whose REPO_URL is a local wheel, first run versus repeated run.
//! - W2c: W2 with content-addressed upload into a cold store (a fresh server each run).
//! - W6: then one file of W2 replaced by 10 KB and the job run again: the bytes and the
//!   time of the upload step against the first upload's.
//! - W7: then the unchanged tree again, with a warm stat cache: the upload step's time
//!   and the client's CPU time on 2,000 files.
//! - W2n: W2 through a link with 10 ms of delay each way (`link.rs`), as to a server on
//!   another machine, as a tar.gz and content-addressed.
//!
//! - W8: eight 1 s steps with `make -j8` over four servers of two slots each, against
//!   one server of two slots.
//! - W11: W1 through Slurm (`--executor slurm`, a one-node cluster started for it), as
//!   a batch job and as an srun step
//!   against the local executor; skipped where Slurm is not installed.
//! - W10: a 5 s step run again with `--cache` against a server with an action cache.
//! - W13: what the server's resource queue costs one step (a grant taken and given
//!   back with another step waiting), against the 5 ms a step may spend on it.
//! - W12: two steps at once of a 2-thread OpenMP program that waits often, on this
//!   machine's cores: locally as they are, locally hand-tuned, and through a server
//!   with its defaults (issue 34).
//! - W9: 300,000 output lines from the grpcio server of `tests/python/`: our client
//!   against a grpcio client working as the Python client does, on the same server.
//! - W14: 300,000 output lines through our client and server (through the run's
//!   supervisor and its output file, issue 30), against the command into a pipe here.
//! - W15: W1 through Grid Engine (`--executor gridengine`, a one-node cluster started
//!   for it), against the local executor (issue 31).
//! - W16: the status page's overview of a server with 1,000 waiting steps, 100
//!   running and a day of samples, rendered (what each page load and each live update
//!   costs), against the 10 ms issue 33 allows.
//!
//! W1 to W5 send a tar.gz (`--no-cas`), as to the Python server.
//! References: `python3 -c pass` (the floor of any interpreter-based client),
//! `tar c | tar x`, `tar c | gzip -1`, and the `tar c | pigz -1 | gunzip | tar x` round
//! trip (twice: our job moves the bytes up and down), with gzip when pigz is missing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::deployment::{self, Binaries, MockServer};
use crate::workspace_root;

/// A content-addressed job: what it cost, and its upload step.
struct TreeRun {
    sample: Sample,
    upload: Duration,
    sent_bytes: u64,
    /// How long the client took to walk and hash the tree (`--verbose`), which it
    /// begins while it connects.
    tree_built: Option<Duration>,
}

/// W13: a step's grant taken and given back 10,000 times, with another step always
/// waiting in the queue (so every release wakes a waiter), per step.
fn scheduling_cost() -> anyhow::Result<Row> {
    use lrpymrpc_mock_server::resources::{Ask, Capacity, Pool};
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let capacity = Capacity { cpus: 1, memory_bytes: 1 << 30, ..Capacity::of_machine() };
    let pool = std::sync::Arc::new(Pool::new(capacity, vec![0], true));
    let ask = Ask { cpus: 1, ..Ask::default() };
    const STEPS: u32 = 10_000;
    let per_step = runtime.block_on(async {
        let start = Instant::now();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (pool, ask) = (pool.clone(), ask.clone());
                tokio::spawn(async move {
                    for _ in 0..STEPS / 2 {
                        drop(pool.acquire(&ask, |_| {}).await);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await?;
        }
        Ok::<_, anyhow::Error>(start.elapsed() / STEPS)
    })?;
    Ok(Row {
        name: "W13 resource queue, per step".into(),
        samples: vec![per_step],
        reference: Some(("the 5 ms a step may spend on it".into(), Duration::from_millis(5))),
        note: format!(
            "{:.1} µs a step; {STEPS} grants on one core, two steps always contending",
            per_step.as_secs_f64() * 1e6
        ),
    })
}

/// W16: the status page's overview of a busy server (1,000 waiting, 100 running, a
/// day of samples) rendered 200 times; the median.
fn status_page_render() -> Row {
    use lrpymrpc_mock_server::web::pages;
    let (status, samples) = pages::busy_example(1000, 100, 1440);
    const RENDERS: usize = 200;
    let mut bytes = 0;
    let mut times: Vec<Duration> = (0..RENDERS)
        .map(|_| {
            let start = Instant::now();
            let html = pages::overview(&status, &samples).into_string();
            let took = start.elapsed();
            bytes = std::hint::black_box(html).len();
            took
        })
        .collect();
    times.sort();
    let median = times[RENDERS / 2];
    Row {
        name: "W16 status page, 1,000 waiting".into(),
        samples: vec![median],
        reference: Some(("the 10 ms issue 33 allows".into(), Duration::from_millis(10))),
        note: format!(
            "median of {RENDERS} renders, slowest {:.2} ms; {} of HTML (200 of each list shown, the rest counted), 4 plots of 1,440 samples",
            times[RENDERS - 1].as_secs_f64() * 1e3,
            lrpymrpc_units::human_bytes(bytes as u64)
        ),
    }
}

/// What one run of the client cost.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: u64,
}

/// Options of `cargo xtask bench`.
#[derive(Debug, Clone)]
pub struct Options {
    pub big: bool,
    pub repeats: usize,
    /// Workload names to run (W1, W2c, ...); empty: all.
    pub only: Vec<String>,
}

impl Options {
    /// Whether any of `names` was asked for.
    fn wants(&self, names: &[&str]) -> bool {
        self.only.is_empty() || self.only.iter().any(|only| names.iter().any(|name| only.eq_ignore_ascii_case(name)))
    }
}

pub fn run(options: Options) -> anyhow::Result<()> {
    eprintln!("xtask bench: building release binaries");
    let Binaries { client, server } = deployment::build(true)?;
    let scratch = tempfile::Builder::new().prefix("lrpymrpc-bench-").tempdir()?;
    // The server's certificate also names this machine's network address, for W2n.
    let network = crate::link::local_network_address();
    let names: Vec<String> = network.iter().map(|ip| ip.to_string()).collect();
    let (tls, jobs) = deployment::certificates_and_root_for(scratch.path(), "bench", &names)?;
    let running = MockServer::start(&server, &jobs, &tls, &["--max-jobs", "32"])?;
    let bench =
        Bench { client, server, tls, port: running.port().to_string(), scratch: scratch.path().to_path_buf(), network };
    bench.all(options)
}

struct Bench {
    client: PathBuf,
    server: PathBuf,
    tls: PathBuf,
    port: String,
    scratch: PathBuf,
    /// This machine's network address, if it has one (W2n).
    network: Option<std::net::IpAddr>,
}

struct Row {
    name: String,
    samples: Vec<Duration>,
    reference: Option<(String, Duration)>,
    note: String,
}

impl Bench {
    fn all(&self, options: Options) -> anyhow::Result<()> {
        let mut rows = Vec::new();
        let repeats = options.repeats.max(1);
        if options.wants(&["W1", "W3"]) {
            rows.extend(self.small_jobs(repeats)?);
        }
        let w2 = self.scratch.join("w2");
        if options.wants(&["W2", "W2n", "W2c", "W6", "W7"]) {
            generate(&w2.join("source"), 2000, 100 * 1024, 10, 10)?;
        }
        if options.wants(&["W2"]) {
            eprintln!("xtask bench: W2, 200 MB round trip");
            rows.extend(self.round_trip("W2 200 MB round trip", &w2, repeats)?);
        }
        if options.big && options.wants(&["W4"]) {
            eprintln!("xtask bench: W4, 2 GB round trip");
            let w4 = self.scratch.join("w4");
            generate(&w4.join("source"), 2000, 1024 * 1024, 10, 10)?;
            rows.extend(self.round_trip("W4 2 GB round trip", &w4, 1)?);
            eprintln!("xtask bench: W4c, 2 GB round trip, content-addressed");
            rows.push(self.cold_tree_round_trip("W4c 2 GB round trip, content-addressed, cold store", &w4, 1)?);
            std::fs::remove_dir_all(&w4)?;
        }
        if options.wants(&["W2n"]) {
            eprintln!("xtask bench: W2n, 200 MB round trip over a 20 ms link");
            rows.extend(self.over_a_link(&w2, repeats)?);
        }
        if options.wants(&["W2c", "W6", "W7"]) {
            eprintln!("xtask bench: W2c, W6, W7: content-addressed upload");
            rows.extend(self.content_addressed(&w2, repeats)?);
        }
        if options.wants(&["W9"]) {
            eprintln!("xtask bench: W9, 300,000 output lines from a grpcio server");
            rows.extend(self.output_heavy()?);
        }
        if options.wants(&["W8"]) {
            eprintln!("xtask bench: W8, eight 1 s steps with make -j8 over four servers against one");
            rows.push(self.several_servers(repeats)?);
        }
        if options.wants(&["W11"]) {
            match lrpymrpc_mock_server::executor::slurm_cluster::unavailable() {
                None => {
                    eprintln!("xtask bench: W11, a small job through Slurm against the local executor");
                    rows.extend(self.through_slurm(repeats)?);
                }
                Some(why) => eprintln!("xtask bench: W11 skipped: {why}"),
            }
        }
        if options.wants(&["W15"]) {
            match lrpymrpc_mock_server::executor::gridengine_cluster::unavailable() {
                None => {
                    eprintln!("xtask bench: W15, a small job through Grid Engine against the local executor");
                    rows.push(self.through_grid_engine(repeats)?);
                }
                Some(why) => eprintln!("xtask bench: W15 skipped: {why}"),
            }
        }
        if options.wants(&["W10"]) {
            eprintln!("xtask bench: W10, a 5 s step run again with the action cache");
            rows.push(self.action_cache(repeats)?);
        }
        if options.wants(&["W12"]) {
            eprintln!("xtask bench: W12, two 2-thread OpenMP steps at once, local and through the server");
            rows.extend(self.openmp_pair(repeats)?);
        }
        if options.wants(&["W14"]) {
            eprintln!("xtask bench: W14, 300,000 output lines through our server");
            rows.push(self.output_lines(repeats)?);
        }
        if options.wants(&["W13"]) {
            eprintln!("xtask bench: W13, what the resource queue costs a step");
            rows.push(scheduling_cost()?);
        }
        if options.wants(&["W16"]) {
            eprintln!("xtask bench: W16, the status page's overview of 1,000 waiting steps");
            rows.push(status_page_render());
        }
        if options.wants(&["W5"]) {
            eprintln!("xtask bench: W5, REPO_URL with a local wheel");
            rows.push(self.environment_reuse(repeats)?);
        }
        print_table(&rows);
        Ok(())
    }

    /// W14: 300,000 output lines through our client and server (the output through
    /// the run's supervisor and its file), against the same command into a pipe here.
    fn output_lines(&self, repeats: usize) -> anyhow::Result<Row> {
        let dir = self.scratch.join("w14");
        std::fs::create_dir_all(dir.join("source"))?;
        std::fs::write(dir.join("source/input.txt"), "input\n")?;
        let command = "seq 300000";
        let local = median(&time_repeated(repeats, || {
            run_quiet(Command::new("sh").args(["-c", &format!("{command} | cat")]))
        })?);
        let samples = (0..repeats).map(|_| self.job(&dir, &[], command)).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Row {
            name: "W14 300,000 output lines, whole job".into(),
            samples: samples.iter().map(|s| s.wall).collect(),
            reference: Some(("the command into a pipe here".into(), local)),
            note: cpu_and_rss(&samples),
        })
    }

    /// W1 and W3, against the floor an interpreter-based client cannot go below.
    fn small_jobs(&self, repeats: usize) -> anyhow::Result<Vec<Row>> {
        let mut rows = Vec::new();
        let python = median(&time_repeated(repeats * 2, || run_quiet(Command::new("python3").args(["-c", "pass"])))?);

        eprintln!("xtask bench: W1, a small job");
        let w1 = self.scratch.join("w1");
        generate(&w1.join("source"), 10, 1024, 1, 1)?;
        let w1_samples = (0..repeats * 2)
            .map(|_| self.job(&w1, &[], "mkdir -p build && cp source/d0/e0/f0 build/"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        rows.push(Row {
            name: "W1 small job, mutual TLS".into(),
            samples: w1_samples.iter().map(|s| s.wall).collect(),
            reference: Some(("python3 -c pass".into(), python)),
            note: format!("client peak RSS {} KiB", max_rss(&w1_samples)),
        });

        eprintln!("xtask bench: W3, 8 concurrent small jobs");
        let w3: Vec<Duration> = (0..repeats)
            .map(|_| {
                let start = Instant::now();
                let children: Vec<_> = (0..8)
                    .map(|n| {
                        self.spawn_job(
                            &w1,
                            &["--RUN_NAME", &format!("run{n}")],
                            "mkdir -p build && cp source/d0/e0/f0 build/",
                        )
                    })
                    .collect::<anyhow::Result<_>>()?;
                for child in children {
                    wait_sample(child, start)?;
                }
                Ok(start.elapsed())
            })
            .collect::<anyhow::Result<_>>()?;
        rows.push(Row {
            name: "W3 8 concurrent small jobs".into(),
            samples: w3,
            reference: Some(("8 x W1 median".into(), median(&rows[0].samples) * 8)),
            note: String::new(),
        });
        Ok(rows)
    }

    /// W2 and W4: the job, then the reference pipelines on the same bytes.
    fn round_trip(&self, name: &str, dir: &Path, repeats: usize) -> anyhow::Result<Vec<Row>> {
        let samples =
            (0..repeats).map(|_| self.job(dir, &[], "cp -r source build")).collect::<anyhow::Result<Vec<_>>>()?;
        std::fs::remove_dir_all(dir.join("build")).ok();
        let source = dir.join("source");
        let out = self.scratch.join("reference-out");
        let pipeline = |script: &str| -> anyhow::Result<Duration> {
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out)?;
            let start = Instant::now();
            run_quiet(Command::new("sh").arg("-c").arg(script).env("SRC", &source).env("OUT", &out))?;
            Ok(start.elapsed())
        };
        let compressor = if which::which("pigz").is_ok() { "pigz -1" } else { "gzip -1" };
        let decompressor = if which::which("pigz").is_ok() { "pigz -d" } else { "gunzip" };
        let plain = median(&time_repeated(repeats, || pipeline(r#"tar cf - -C "$SRC" . | tar xf - -C "$OUT""#))?);
        let gzip = median(&time_repeated(repeats, || pipeline(r#"tar cf - -C "$SRC" . | gzip -1 > /dev/null"#))?);
        let round = median(&time_repeated(repeats, || {
            pipeline(&format!(r#"tar cf - -C "$SRC" . | {compressor} | {decompressor} | tar xf - -C "$OUT""#))
        })?);
        let _ = std::fs::remove_dir_all(&out);
        let cpu = median(&samples.iter().map(|s| s.cpu).collect::<Vec<_>>());
        Ok(vec![
            Row {
                name: name.into(),
                samples: samples.iter().map(|s| s.wall).collect(),
                reference: Some((format!("2 x tar|{compressor}|{decompressor}|tar x"), round * 2)),
                note: format!("client CPU {}, peak RSS {} KiB", seconds(cpu), max_rss(&samples)),
            },
            Row {
                name: "  reference: tar c | tar x".into(),
                samples: vec![plain],
                reference: None,
                note: String::new(),
            },
            Row {
                name: "  reference: tar c | gzip -1".into(),
                samples: vec![gzip],
                reference: None,
                note: String::new(),
            },
        ])
    }

    /// W8: `make -j8` of eight 1 s steps over four servers of two slots each, against
    /// the same build on one server of two slots (the steps beyond the slots wait for
    /// one, `--queue-timeout`). Whole builds, wall time.
    fn several_servers(&self, repeats: usize) -> anyhow::Result<Row> {
        let servers: Vec<MockServer> = (0..4)
            .map(|n| {
                let root = self.scratch.join(format!("w8-jobs-{n}"));
                std::fs::create_dir_all(&root)?;
                MockServer::start(&self.server, &root, &self.tls, &["--max-jobs", "2"])
            })
            .collect::<anyhow::Result<_>>()?;
        let dir = self.scratch.join("w8");
        let mut makefile = String::from("all: $(STEPS)\n");
        let steps: Vec<String> = (1..=8).map(|n| format!("s{n}")).collect();
        makefile.insert_str(0, &format!("STEPS = {}\n", steps.join(" ")));
        makefile.push_str(".PHONY: all $(STEPS)\n$(STEPS):\n\tcd $@ && \"$(CLIENT)\" --SERVER_IP \"$(SERVERS)\" --TLS_CONFIG_DIR \"$(TLS)\" --quiet --SOURCE source --RESULT out --CMD 'sleep 1; mkdir out; echo $@ > out/step'\n");
        for step in &steps {
            generate(&dir.join(step).join("source"), 10, 1024, 1, 1)?;
        }
        std::fs::write(dir.join("Makefile"), makefile)?;
        let build = |servers: &[&MockServer]| -> anyhow::Result<Duration> {
            let list: Vec<&str> = servers.iter().map(|server| server.address.as_str()).collect();
            let mut make = Command::new("make");
            make.current_dir(&dir)
                .arg("-j8")
                .arg(format!("CLIENT={}", self.client.display()))
                .arg(format!("SERVERS={}", list.join(" ")))
                .arg(format!("TLS={}", self.tls.display()))
                .env("LRPYMRPC_CONFIG", "")
                .env("XDG_STATE_HOME", self.scratch.join("w8-state"))
                .env("XDG_CACHE_HOME", self.scratch.join("cache"))
                .env_remove("MAKEFLAGS");
            run_quiet(&mut make)
        };
        let one = time_repeated(repeats, || build(&[&servers[0]]))?;
        let four = time_repeated(repeats, || build(&servers.iter().collect::<Vec<_>>()))?;
        Ok(Row {
            name: "W8 make -j8, eight 1 s steps, four 2-slot servers".into(),
            samples: four,
            reference: Some(("one 2-slot server".into(), median(&one))),
            note: "whole builds; target: at most 35% of one server's time".into(),
        })
    }

    /// W11: W1's small job on servers with `--executor slurm` (a one-node cluster of
    /// our own on this machine, `batch_sched_delay=0`), as a batch job (the default) and
    /// as an srun step, against the same job on the local executor, one after the other
    /// in each round: what Slurm adds to a job.
    fn through_slurm(&self, repeats: usize) -> anyhow::Result<Vec<Row>> {
        use lrpymrpc_mock_server::executor::slurm_cluster::OneNodeCluster;
        let cluster = OneNodeCluster::start(&self.scratch.join("w11-slurm"), 2, &[])?;
        let vars = [("SLURM_CONF", cluster.conf())];
        let server = |submit: &str| -> anyhow::Result<MockServer> {
            let root = self.scratch.join(format!("w11-jobs-{submit}"));
            std::fs::create_dir_all(&root)?;
            let args = ["--executor", "slurm", "--slurm-submit", submit];
            MockServer::start_with_env(&self.server, &root, &self.tls, &args, &vars)
        };
        let (sbatch, srun) = (server("sbatch")?, server("srun")?);
        let dir = self.scratch.join("w11");
        generate(&dir.join("source"), 10, 1024, 1, 1)?;
        let command = "mkdir -p build && cp source/d0/e0/f0 build/";
        let (mut local, mut batched, mut stepped) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..repeats * 3 {
            local.push(self.job(&dir, &[], command)?.wall);
            batched.push(self.job(&dir, &["--SERVER_PORT", sbatch.port()], command)?.wall);
            stepped.push(self.job(&dir, &["--SERVER_PORT", srun.port()], command)?.wall);
        }
        let row = |name: &str, samples: Vec<Duration>, note: &str| {
            let extra = median(&samples).saturating_sub(median(&local));
            Row {
                name: name.into(),
                samples,
                reference: Some(("local executor".into(), median(&local))),
                note: format!("Slurm adds {} a job; {note}", seconds(extra)),
            }
        };
        Ok(vec![
            row("W11 small job through Slurm, sbatch", batched, "Slurm schedules batch jobs once a second at most"),
            row("W11 small job through Slurm, --slurm-submit srun", stepped, "target: at most 50 ms"),
        ])
    }

    /// W15: W1's small job on a server with `--executor gridengine` (a one-node cluster
    /// of our own on this machine, a scheduler pass a second), against the same job on
    /// the local executor, one after the other in each round: what Grid Engine adds.
    fn through_grid_engine(&self, repeats: usize) -> anyhow::Result<Row> {
        use lrpymrpc_mock_server::executor::gridengine_cluster::OneNodeGridEngine;
        let cluster = OneNodeGridEngine::start(&self.scratch.join("w15-sge"), 2, &[])?;
        let root = self.scratch.join("w15-jobs");
        std::fs::create_dir_all(&root)?;
        let vars: Vec<(&str, &Path)> =
            cluster.env().iter().map(|(name, value)| (name.as_str(), Path::new(value.as_str()))).collect();
        let args = ["--executor", "gridengine"];
        let grid = MockServer::start_with_env(&self.server, &root, &self.tls, &args, &vars)?;
        let dir = self.scratch.join("w15");
        generate(&dir.join("source"), 10, 1024, 1, 1)?;
        let command = "mkdir -p build && cp source/d0/e0/f0 build/";
        let (mut local, mut through) = (Vec::new(), Vec::new());
        for _ in 0..repeats * 3 {
            local.push(self.job(&dir, &[], command)?.wall);
            through.push(self.job(&dir, &["--SERVER_PORT", grid.port()], command)?.wall);
        }
        let extra = median(&through).saturating_sub(median(&local));
        Ok(Row {
            name: "W15 small job through Grid Engine".into(),
            samples: through,
            reference: Some(("local executor".into(), median(&local))),
            note: format!(
                "Grid Engine adds {} a job; the scheduler runs at each submit (flush_submit_sec 1)",
                seconds(extra)
            ),
        })
    }

    /// W12: two steps at once of a 2-thread OpenMP program that waits often
    /// (`omp_standin.c`, built with `gcc -fopenmp`), as `make -j2` on two cores runs
    /// them: locally as they are, locally hand-tuned (`OMP_WAIT_POLICY=passive`), and
    /// through a server with default settings (each step granted one core, pinned to
    /// it). Skipped without gcc.
    fn openmp_pair(&self, repeats: usize) -> anyhow::Result<Vec<Row>> {
        let dir = self.scratch.join("w12");
        std::fs::create_dir_all(dir.join("source"))?;
        std::fs::write(dir.join("source/input.txt"), "input\n")?;
        let program = dir.join("omp-standin");
        let source = workspace_root().join("xtask/src/omp_standin.c");
        let built = Command::new("gcc").args(["-O2", "-fopenmp", "-o"]).arg(&program).arg(&source).status();
        if !built.is_ok_and(|status| status.success()) {
            eprintln!("xtask bench: W12 skipped: `gcc -fopenmp` cannot build {}", source.display());
            return Ok(Vec::new());
        }
        let regions = "20000";
        // `pinned`: each on a core of its own (`taskset -c N`), as a hand-tuned run might.
        let pair_locally = |env: &[(&str, &str)], pinned: bool| -> anyhow::Result<Duration> {
            let start = Instant::now();
            let children: Vec<_> = (0..2)
                .map(|n| {
                    let mut command = match pinned {
                        true => {
                            let mut taskset = Command::new("taskset");
                            taskset.args(["-c", &n.to_string()]).arg(&program);
                            taskset
                        }
                        false => Command::new(&program),
                    };
                    command.arg(regions).envs(env.iter().copied()).stdout(Stdio::null()).spawn()
                })
                .collect::<Result<_, _>>()?;
            for mut child in children {
                if !child.wait()?.success() {
                    bail!("the OpenMP stand-in failed");
                }
            }
            Ok(start.elapsed())
        };
        let alone = time_repeated(repeats, || {
            let start = Instant::now();
            run_quiet(Command::new(&program).arg(regions))?;
            Ok(start.elapsed())
        })?;
        let untuned = time_repeated(repeats, || pair_locally(&[], false))?;
        let passive = median(&time_repeated(repeats, || pair_locally(&[("OMP_WAIT_POLICY", "passive")], false))?);
        let pinned = match run_quiet(Command::new("taskset").args(["-c", "0", "true"])) {
            Ok(_) => Some(median(&time_repeated(repeats, || pair_locally(&[], true))?)),
            Err(_) => None,
        };
        // The best hand-tuned local run is the reference.
        let (tuned_name, tuned_median) = match pinned {
            Some(pinned) if pinned < passive => ("local, each pinned to a core (taskset)", pinned),
            _ => ("local, OMP_WAIT_POLICY=passive", passive),
        };
        let tuning = format!(
            "hand-tuned: passive {}, pinned {}",
            seconds(passive),
            pinned.map_or_else(|| "(no taskset)".to_string(), seconds)
        );
        let root = self.scratch.join("w12-jobs");
        std::fs::create_dir_all(&root)?;
        let server = MockServer::start(&self.server, &root, &self.tls, &[])?;
        let command = format!("{} {regions}", program.display());
        let through_server = time_repeated(repeats, || {
            let start = Instant::now();
            let children: Vec<_> = (0..2)
                .map(|n| {
                    let mut client = self.command(&dir, &["--RUN_NAME", &format!("run{n}"), "--quiet"], &command);
                    client.args(["--SERVER_PORT", server.port()]).spawn()
                })
                .collect::<Result<_, _>>()?;
            for child in children {
                wait_sample(child, start)?;
            }
            Ok(start.elapsed())
        })?;
        Ok(vec![
            Row {
                name: "W12 two OpenMP steps at once, local, as they are".into(),
                samples: untuned,
                reference: Some((tuned_name.into(), tuned_median)),
                note: format!("one alone: {}; {tuning}", seconds(median(&alone))),
            },
            Row {
                name: "W12 two OpenMP steps at once, server defaults".into(),
                samples: through_server,
                reference: Some((tuned_name.into(), tuned_median)),
                note: "each step granted one core and pinned to it; whole jobs".into(),
            },
        ])
    }

    /// W10: a 5 s step with a small result, run with `--cache` against a server with
    /// an action cache: the first run against the repeated ones, whole jobs.
    fn action_cache(&self, repeats: usize) -> anyhow::Result<Row> {
        let root = self.scratch.join("action-cache-jobs");
        std::fs::create_dir_all(&root)?;
        let server = MockServer::start(&self.server, &root, &self.tls, &["--action-cache"])?;
        let dir = self.scratch.join("w10");
        generate(&dir.join("source"), 10, 1024, 1, 1)?;
        let command = "sleep 5; mkdir -p build; cat source/*/*/* > build/joined";
        let job = || -> anyhow::Result<Duration> {
            let start = Instant::now();
            let mut client = self.command(&dir, &["--cache"], command);
            client.env("XDG_CACHE_HOME", self.scratch.join("cache")).args(["--SERVER_PORT", server.port()]);
            Ok(wait_sample(client.spawn()?, start)?.wall)
        };
        let first = job()?;
        let repeated: Vec<Duration> = (0..repeats).map(|_| job()).collect::<anyhow::Result<_>>()?;
        Ok(Row {
            name: "W10 a 5 s step again, action cache".into(),
            samples: repeated,
            reference: Some(("first run".into(), first)),
            note: "whole jobs: upload (nothing), served, results downloaded".into(),
        })
    }

    /// W9: 300,000 output lines through the grpcio server of `tests/python/` (the
    /// Python server's behaviour: one message per line), our client against the
    /// grpcio client that works as the Python client does, once each on the same server.
    /// Skipped without a Python that has grpcio (`LRPYMRPC_GRPCIO_PYTHON`, as `.ci/run`
    /// makes it).
    fn output_heavy(&self) -> anyhow::Result<Vec<Row>> {
        let python = std::env::var_os("LRPYMRPC_GRPCIO_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
        if run_quiet(Command::new(&python).args(["-c", "import grpc, grpc_tools"])).is_err() {
            eprintln!("xtask bench: W9 skipped: {} has no grpcio (set LRPYMRPC_GRPCIO_PYTHON)", python.display());
            return Ok(Vec::new());
        }
        let repo = workspace_root();
        let root = self.scratch.join("grpcio-jobs");
        std::fs::create_dir_all(&root)?;
        let mut server = Command::new(&python)
            .arg(repo.join("tests/python/grpcio_server.py"))
            .arg("--proto")
            .arg(repo.join("proto/file_service.proto"))
            .arg("--root")
            .arg(&root)
            .arg("--server-cert")
            .arg(lrpymrpc_certs::layout::server_cert(&self.tls))
            .arg("--server-key")
            .arg(lrpymrpc_certs::layout::server_key(&self.tls))
            .arg("--ca")
            .arg(lrpymrpc_certs::layout::ca_cert(&self.tls))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut first = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(server.stdout.take().context("the grpcio server's stdout")?),
            &mut first,
        )?;
        let port = first.trim().rsplit(':').next().unwrap_or_default().to_string();
        let dir = self.scratch.join("w9");
        std::fs::create_dir_all(dir.join("source"))?;
        std::fs::write(dir.join("source/input.txt"), "input\n")?;
        let command = "seq 300000";
        let measured = (|| -> anyhow::Result<(Sample, Sample)> {
            let start = Instant::now();
            let mut ours = self.command(&dir, &[], command);
            ours.args(["--SERVER_PORT", &port]);
            let ours = wait_sample(ours.spawn()?, start)?;
            let start = Instant::now();
            let theirs = Command::new(&python)
                .current_dir(&dir)
                .arg(repo.join("tests/python/grpcio_client.py"))
                .arg("--proto")
                .arg(repo.join("proto/file_service.proto"))
                .args(["--server", &format!("127.0.0.1:{port}"), "--tls-dir"])
                .arg(&self.tls)
                .args(["--source", "source", "--result", "build", "--cmd", command])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            Ok((ours, wait_sample(theirs, start)?))
        })();
        let _ = server.kill();
        let _ = server.wait();
        let (ours, theirs) = measured?;
        Ok(vec![Row {
            name: "W9 300,000 output lines from a grpcio server".into(),
            samples: vec![ours.wall],
            reference: Some(("grpcio client, as the Python client".into(), theirs.wall)),
            note: format!("client CPU {} (the grpcio client's: {})", seconds(ours.cpu), seconds(theirs.cpu)),
        }])
    }

    /// W4c: a content-addressed round trip into a cold store (a fresh server, no stat
    /// cache), for the client's peak RSS at 2 GB.
    fn cold_tree_round_trip(&self, name: &str, dir: &Path, repeats: usize) -> anyhow::Result<Row> {
        let mut runs = Vec::new();
        for n in 0..repeats {
            let root = self.scratch.join(format!("big-cas-jobs-{n}"));
            std::fs::create_dir_all(&root)?;
            let server = MockServer::start(&self.server, &root, &self.tls, &["--max-jobs", "32"])?;
            let _ = std::fs::remove_dir_all(self.scratch.join("cache"));
            runs.push(self.tree_job(dir, server.port(), "cp -r source build")?);
            std::fs::remove_dir_all(dir.join("build")).ok();
            drop(server);
            std::fs::remove_dir_all(&root).ok();
        }
        let samples: Vec<Sample> = runs.iter().map(|r| r.sample).collect();
        Ok(Row {
            name: name.into(),
            samples: samples.iter().map(|s| s.wall).collect(),
            reference: None,
            note: cpu_and_rss(&samples),
        })
    }

    /// W2n: W2's round trip through a link with 10 ms of delay each way, the client
    /// dialling this machine's network address (so it treats the server as remote:
    /// its network-sized receive window, several blob streams, compression where it
    /// pays), as a tar.gz and content-addressed into a cold store.
    fn over_a_link(&self, dir: &Path, repeats: usize) -> anyhow::Result<Vec<Row>> {
        let Some(ip) = self.network else {
            eprintln!("xtask bench: W2n skipped: this machine has no network address besides loopback");
            return Ok(Vec::new());
        };
        let fresh_server = |n: usize| -> anyhow::Result<MockServer> {
            let root = self.scratch.join(format!("link-jobs-{n}"));
            std::fs::create_dir_all(&root)?;
            MockServer::start(&self.server, &root, &self.tls, &["--max-jobs", "32"])
        };
        let delay = Duration::from_millis(10);
        let mut rows = Vec::new();
        for (name, extra) in [("tar.gz", "--no-cas"), ("content-addressed, cold store", "")] {
            let mut samples = Vec::new();
            for n in 0..repeats {
                let server = fresh_server(n)?;
                let target: std::net::SocketAddr = server.address.parse()?;
                let link = crate::link::SlowLink::start(std::net::SocketAddr::new(ip, 0), target, delay)?;
                let _ = std::fs::remove_dir_all(self.scratch.join("cache"));
                let start = Instant::now();
                let mut client = self.command(dir, &[], "cp -r source build");
                client
                    .env("XDG_CACHE_HOME", self.scratch.join("cache"))
                    .args(["--SERVER_IP", &ip.to_string(), "--SERVER_PORT", &link.addr.port().to_string()])
                    .args(extra.split_whitespace())
                    .arg("--quiet");
                samples.push(wait_sample(client.spawn()?, start)?);
                std::fs::remove_dir_all(dir.join("build")).ok();
            }
            rows.push(Row {
                name: format!("W2n 200 MB round trip, 20 ms round-trip link, {name}"),
                samples: samples.iter().map(|s| s.wall).collect(),
                reference: None,
                note: cpu_and_rss(&samples),
            });
        }
        Ok(rows)
    }

    /// W2c, W6 and W7 on W2's tree: a cold store each run (a fresh server), then one
    /// 10 KB file changed, then nothing changed.
    fn content_addressed(&self, dir: &Path, repeats: usize) -> anyhow::Result<Vec<Row>> {
        let fresh_server = |n: usize| -> anyhow::Result<MockServer> {
            let root = self.scratch.join(format!("cas-jobs-{n}"));
            std::fs::create_dir_all(&root)?;
            MockServer::start(&self.server, &root, &self.tls, &["--max-jobs", "32"])
        };
        let cache = self.scratch.join("cache");
        let mut cold = Vec::new();
        for n in 0..repeats {
            let server = fresh_server(n)?;
            let _ = std::fs::remove_dir_all(&cache);
            cold.push(self.tree_job(dir, server.port(), "cp -r source build")?);
            std::fs::remove_dir_all(dir.join("build")).ok();
        }
        // The last server's store is warm; the stat cache too.
        // A real step runs for a while; meanwhile the server makes its spare copy of the
        // tree (see mock-server `spares.rs`). `STEP` stands for that step; the
        // back-to-back run follows a job that ran nothing.
        const STEP: &str = "sleep 2";
        let server = fresh_server(repeats)?;
        let first = self.tree_job(dir, server.port(), STEP)?;
        let changed = dir.join("source/d0/e0/f0");
        std::fs::write(&changed, vec![b'x'; 10 * 1024])?;
        let second = self.tree_job(dir, server.port(), "true")?;
        std::fs::write(&changed, vec![b'y'; 10 * 1024])?;
        let back_to_back = self.tree_job(dir, server.port(), STEP)?;
        let unchanged: Vec<TreeRun> =
            (0..repeats.max(5)).map(|_| self.tree_job(dir, server.port(), STEP)).collect::<anyhow::Result<_>>()?;
        let cpu = median(&cold.iter().map(|r| r.sample.cpu).collect::<Vec<_>>());
        let w7_cpu = median(&unchanged.iter().map(|r| r.sample.cpu).collect::<Vec<_>>());
        let w7_tree = median(&unchanged.iter().filter_map(|r| r.tree_built).collect::<Vec<_>>());
        Ok(vec![
            Row {
                name: "W2c 200 MB round trip, content-addressed, cold store".into(),
                samples: cold.iter().map(|r| r.sample.wall).collect(),
                reference: None,
                note: format!(
                    "client CPU {}, peak RSS {} KiB",
                    seconds(cpu),
                    cold.iter().map(|r| r.sample.max_rss_kib).max().unwrap_or(0)
                ),
            },
            Row {
                name: "W6 one 10 KB file changed, upload step".into(),
                samples: vec![second.upload],
                reference: Some(("first upload step".into(), first.upload.max(cold[0].upload))),
                note: format!(
                    "after a 2 s step; sent {} of {} the first time ({:.3}%)",
                    lrpymrpc_units::human_bytes(second.sent_bytes),
                    lrpymrpc_units::human_bytes(cold[0].sent_bytes),
                    100.0 * second.sent_bytes as f64 / cold[0].sent_bytes.max(1) as f64
                ),
            },
            Row {
                name: "W6 the same, back to back".into(),
                samples: vec![back_to_back.upload],
                reference: Some(("first upload step".into(), first.upload.max(cold[0].upload))),
                note: "right after a job that ran nothing: waits for the server's spare copy".into(),
            },
            Row {
                name: "W7 unchanged tree, upload step".into(),
                samples: unchanged.iter().map(|r| r.upload).collect(),
                reference: None,
                note: format!(
                    "after a 2 s step; the tree built in {} (begun while connecting); client CPU for the whole job {}, \
                     warm stat cache",
                    seconds(w7_tree),
                    seconds(w7_cpu)
                ),
            },
        ])
    }

    /// A job with content-addressed upload (the client's own stat cache under the
    /// scratch directory); the upload step's time and bytes from its summary line.
    fn tree_job(&self, dir: &Path, port: &str, command: &str) -> anyhow::Result<TreeRun> {
        let start = Instant::now();
        let mut client = self.command(dir, &[], command);
        client.env("XDG_CACHE_HOME", self.scratch.join("cache")).args(["--SERVER_PORT", port, "--verbose"]);
        let mut child = client.spawn()?;
        let mut stderr = String::new();
        if let Some(pipe) = child.stderr.as_mut() {
            std::io::Read::read_to_string(pipe, &mut stderr)?;
        }
        let sample = wait_sample(child, start)?;
        let summary = stderr
            .lines()
            .find_map(|line| line.strip_prefix("lrpymrpc: uploaded "))
            .with_context(|| format!("no upload summary in: {stderr}"))?;
        let upload = summary
            .split(" in ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|secs| secs.parse::<f64>().ok())
            .map(Duration::from_secs_f64)
            .with_context(|| format!("no time in: {summary}"))?;
        let sent_bytes = if summary.starts_with("nothing") {
            0
        } else if let Some(inner) = summary.split_once('(').and_then(|(_, rest)| rest.split_once(" of ")) {
            lrpymrpc_units::parse_size(inner.0).map_err(anyhow::Error::msg)?
        } else {
            let size = summary.split(", ").nth(1).and_then(|rest| rest.split(" in ").next()).unwrap_or_default();
            lrpymrpc_units::parse_size(size).map_err(anyhow::Error::msg)?
        };
        // "hashed 0 files (0 B) in 9 ms, begun while connecting; ..."
        let tree_built = stderr
            .lines()
            .find_map(|line| line.strip_prefix("lrpymrpc: hashed "))
            .and_then(|rest| rest.split(" in ").nth(1))
            .and_then(|rest| rest.split([',', ';']).next())
            .and_then(|took| match took.split_once(' ') {
                Some((ms, "ms")) => ms.parse::<f64>().ok().map(|ms| ms / 1000.0),
                Some((s, "s")) => s.parse::<f64>().ok(),
                _ => None,
            })
            .map(Duration::from_secs_f64);
        Ok(TreeRun { sample, upload, sent_bytes, tree_built })
    }

    /// W5: the execute step of a job with REPO_URL, first (pip) versus repeated (cache).
    fn environment_reuse(&self, repeats: usize) -> anyhow::Result<Row> {
        let dir = self.scratch.join("w5");
        let package = dir.join("pkg/benchtool");
        std::fs::create_dir_all(&package)?;
        std::fs::write(package.join("__init__.py"), "VALUE = 42\n")?;
        let example = workspace_root().join("examples/cellchar/make_wheel.py");
        run_quiet(
            Command::new("python3").arg(example).arg(&package).args(["benchtool", "0.1.0"]).arg(dir.join("source")),
        )?;
        let repo_url = ["--REPO_URL", "benchtool=./source/benchtool-0.1.0-py3-none-any.whl"];
        let command = "python -c 'import benchtool'";
        let first = self.execute_time(&dir, &repo_url, command)?;
        let repeated: Vec<Duration> =
            (0..repeats).map(|_| self.execute_time(&dir, &repo_url, command)).collect::<anyhow::Result<_>>()?;
        Ok(Row {
            name: "W5 repeated job, execute step".into(),
            samples: repeated,
            reference: Some(("first run's execute step".into(), first)),
            note: "same REPO_URL: the cached environment".into(),
        })
    }

    /// The client's own timing of the execute step (`--verbose`).
    fn execute_time(&self, dir: &Path, extra: &[&str], command: &str) -> anyhow::Result<Duration> {
        let output = self.command(dir, extra, command).arg("--verbose").output()?;
        if !output.status.success() {
            bail!("the W5 job failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let seconds = stderr
            .lines()
            .find_map(|line| line.strip_prefix("lrpymrpc: execute took ")?.split(' ').next()?.parse::<f64>().ok())
            .context("no `execute took` line")?;
        Ok(Duration::from_secs_f64(seconds))
    }

    fn command(&self, dir: &Path, extra: &[&str], command: &str) -> Command {
        let mut client = Command::new(&self.client);
        client
            .current_dir(dir)
            .env("LRPYMRPC_CONFIG", "")
            .args(["--SERVER_IP", "127.0.0.1", "--SERVER_PORT", &self.port, "--TLS_CONFIG_DIR"])
            .arg(&self.tls)
            .args(["--SOURCE", "source", "--RESULT", "build", "--CMD", command])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        client
    }

    fn spawn_job(&self, dir: &Path, extra: &[&str], command: &str) -> anyhow::Result<std::process::Child> {
        // With --quiet, stderr holds errors only: a pipe's buffer is plenty.
        Ok(self.command(dir, extra, command).args(["--quiet", "--no-cas"]).spawn()?)
    }

    fn job(&self, dir: &Path, extra: &[&str], command: &str) -> anyhow::Result<Sample> {
        let start = Instant::now();
        let child = self.spawn_job(dir, extra, command)?;
        wait_sample(child, start)
    }
}

/// Waits for a child with `wait4`, for its own CPU time and peak RSS.
/// "client CPU 2.1 s, peak RSS 15072 KiB": the median CPU and the highest peak of runs.
fn cpu_and_rss(samples: &[Sample]) -> String {
    let cpu = median(&samples.iter().map(|s| s.cpu).collect::<Vec<_>>());
    format!("client CPU {}, peak RSS {} KiB", seconds(cpu), max_rss(samples))
}

fn wait_sample(mut child: std::process::Child, start: Instant) -> anyhow::Result<Sample> {
    let pid = i32::try_from(child.id())?;
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in; `pid` is our own child, which
    // std never waits for after this (the Child is dropped without waiting).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    if waited != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let mut stderr = String::new();
        if let Some(pipe) = child.stderr.as_mut() {
            let _ = std::io::Read::read_to_string(pipe, &mut stderr);
        }
        bail!("a benchmark job failed (wait status {status}): {stderr}");
    }
    let time = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    Ok(Sample { wall, cpu: time(usage.ru_utime) + time(usage.ru_stime), max_rss_kib: usage.ru_maxrss as u64 })
}

fn run_quiet(command: &mut Command) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let status = command.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(start.elapsed())
}

fn time_repeated(repeats: usize, mut once: impl FnMut() -> anyhow::Result<Duration>) -> anyhow::Result<Vec<Duration>> {
    (0..repeats.max(1)).map(|_| once()).collect()
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

fn max_rss(samples: &[Sample]) -> u64 {
    samples.iter().map(|s| s.max_rss_kib).max().unwrap_or(0)
}

fn seconds(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", duration.as_secs_f64())
    }
}

/// `files` files of `size` bytes in `top` x `middle` directories three levels deep,
/// alternating compressible text and random bytes, from a fixed seed.
fn generate(dir: &Path, files: usize, size: usize, top: usize, middle: usize) -> anyhow::Result<()> {
    const WORDS: [&str; 16] = [
        "cell", "delay", "slew", "load", "pin", "arc", "timing", "power", "leakage", "vdd", "vss", "nmos", "pmos",
        "width", "length", "corner",
    ];
    let mut state: u64 = 0x5eed_1234_abcd_0001;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let per_leaf = files.div_ceil(top * middle).max(1);
    let mut made = 0;
    'outer: for a in 0..top {
        for b in 0..middle {
            let leaf = dir.join(format!("d{a}")).join(format!("e{b}"));
            std::fs::create_dir_all(&leaf)?;
            for c in 0..per_leaf {
                if made == files {
                    break 'outer;
                }
                let mut content = Vec::with_capacity(size);
                if made % 2 == 0 {
                    while content.len() < size {
                        let word = WORDS[(next() % 16) as usize];
                        content.extend_from_slice(word.as_bytes());
                        content.push(if next() % 8 == 0 { b'\n' } else { b' ' });
                    }
                    content.truncate(size);
                } else {
                    while content.len() < size {
                        content.extend_from_slice(&next().to_le_bytes());
                    }
                    content.truncate(size);
                }
                std::fs::File::create(leaf.join(format!("f{c}")))?.write_all(&content)?;
                made += 1;
            }
        }
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| workload | median | min - max | reference | reference time | ratio | notes |");
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        let med = median(&row.samples);
        let min = row.samples.iter().min().copied().unwrap_or_default();
        let max = row.samples.iter().max().copied().unwrap_or_default();
        let (reference, time, ratio) = match &row.reference {
            Some((name, time)) => {
                (name.clone(), seconds(*time), format!("{:.2}x", med.as_secs_f64() / time.as_secs_f64().max(1e-9)))
            }
            None => (String::new(), String::new(), String::new()),
        };
        // A `|` inside a cell would end it.
        let reference = reference.replace('|', "\\|");
        println!(
            "| {} | {} | {} - {} | {reference} | {time} | {ratio} | {} |",
            row.name.replace('|', "\\|"),
            seconds(med),
            seconds(min),
            seconds(max),
            row.note
        );
    }
}

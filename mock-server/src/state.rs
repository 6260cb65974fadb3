//! What every call shares: the configuration, the job table, the running process
//! groups and the environment cache.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::config::{Config, ExecutorChoice};
use crate::execute::envs::EnvCache;
use crate::executor::Executor;
use crate::executor::farm::Farm;
use crate::executor::local::LocalExecutor;
use crate::jobs::{Jobs, sweep_orphans};
use crate::store::action_cache::ActionCache;
use crate::store::spares::Spares;
use crate::store::{ContentStore, STORE_DIR};

#[derive(Debug)]
pub struct State {
    pub config: Config,
    pub jobs: Arc<Jobs>,
    /// Where set-up steps run (venv, pip), and commands too unless Slurm runs them.
    pub host: LocalExecutor,
    /// Where commands run with `--executor slurm` or `gridengine`.
    pub farm: Option<Farm>,
    pub env_cache: Option<EnvCache>,
    /// Blobs of content-addressed uploads; `None` when that is off.
    pub store: Option<ContentStore>,
    /// Spare copies of recent trees, beside the store.
    pub spares: Option<Spares>,
    /// The trees each CN made jobs from, for `TreePart.root_only`.
    pub known_trees: crate::store::known_trees::KnownTrees,
    /// Recorded runs (`--action-cache`), beside the store.
    pub action_cache: Option<Arc<ActionCache>>,
    /// What cached runs depend on beyond their inputs (`--action-cache-tool`, `-path`).
    pub action_cache_tools: Arc<crate::store::tools::Tools>,
    /// What `--metrics-listen` serves (always counted: it costs nothing to keep).
    pub metrics: Arc<crate::net::metrics::Metrics>,
    /// Durable runs' spools (`ExecuteRequest.durability`).
    pub spools: Arc<crate::jobs::spool::Spools>,
    /// This server's hold on its job root, for as long as it runs.
    _root_lock: crate::jobs::root_lock::RootLock,
    /// Cores, memory and licenses, and the one queue of steps waiting for them.
    pub resources: Arc<crate::resources::Pool>,
    /// Set at shutdown: uploads are refused, running jobs finish.
    pub draining: AtomicBool,
    /// UploadBlobs streams open now (`per_cn.rs`).
    pub blob_streams: Arc<crate::rpc::per_cn::StreamSlots>,
    /// CreateJob trees being checked, in turns per CN.
    pub tree_plans: crate::rpc::per_cn::Turns,
    /// The jobs found at start that are taken on once serving begins (`lib.rs`).
    pub adoptable: std::sync::Mutex<Vec<crate::jobs::left_behind::Found>>,
    /// The secrets of jobs' status page links.
    pub job_links: crate::jobs::links::JobLinks,
    /// Where the status page listens, once it does (`--status-listen`).
    pub status_page: std::sync::OnceLock<std::net::SocketAddr>,
}

impl State {
    /// Takes the root (no other server may use it), sweeps what an earlier run left in
    /// it, then sets up the shared parts.
    pub fn new(config: Config) -> std::io::Result<(State, Vec<String>)> {
        let root_lock = crate::jobs::root_lock::RootLock::take(&config.root)?;
        // The durable jobs a server that is gone left are taken on (`execute/adopt.rs`);
        // its other runs are stopped before their jobs are swept (they hold cores and
        // licenses this server is about to give out again).
        let spool_key = crate::jobs::spool_file::SpoolKey::of_root(&config.root)?;
        let adoptable = crate::jobs::left_behind::find(&config.root, &spool_key);
        let job_links = crate::jobs::links::JobLinks::new(&spool_key);
        let live_runs: std::collections::HashSet<String> =
            adoptable.iter().filter_map(|found| found.live_run().map(str::to_string)).collect();
        let left_running = crate::executor::supervised::stop_left_behind(&config.root, |run| live_runs.contains(run));
        if left_running > 0 {
            tracing::warn!(runs = left_running, "stopped the runs an earlier server left running");
        }
        let adopted_jobs: std::collections::HashSet<String> =
            adoptable.iter().map(|found| found.id().to_string()).collect();
        let swept = sweep_orphans(&config.root, |id| adopted_jobs.contains(id));
        // Environments an earlier run built are kept when this server's Python made them.
        let python = crate::execute::python::python().ok().map(|python| python.identity());
        let env_cache = match config.env_cache {
            true => Some(EnvCache::new(&config.root, config.env_cache_max_bytes, python.as_deref())?),
            false => None,
        };
        let store = match config.cas && !config.legacy_protocol {
            // A blob just sent is held for its job as long as an upload may idle, twice.
            true => Some(ContentStore::new(&config.root, config.cas_max_bytes, config.upload_idle_timeout * 2)?),
            false => None,
        };
        let spares = match &store {
            Some(_) => Some(Spares::new(&config.root.join(STORE_DIR), config.cas_spare_trees)?),
            None => None,
        };
        let action_cache = match (&store, config.action_cache) {
            (Some(_), true) => Some(Arc::new(ActionCache::new(
                &config.root.join(STORE_DIR),
                config.action_cache_max_bytes,
                &config.action_cache_salt,
                config.share_action_cache,
            )?)),
            _ => None,
        };
        let jobs = Arc::new(Jobs::new(
            config.root.clone(),
            config.max_jobs,
            config.max_jobs_per_cn,
            config.job_ttl,
            config.finished_grace,
        ));
        let contain = config.sandbox.is_none() && crate::executor::contain::available();
        if config.sandbox.is_none() && !contain {
            tracing::warn!(
                "cannot make PID namespaces here: a process a job leaves behind (a daemon) may outlive it; \
                 --sandbox or a kernel with user namespaces prevents that"
            );
        }
        let metrics = Arc::new(crate::net::metrics::Metrics::new(config.metrics_per_cn));
        let spool_bounds = (config.reattach_grace, config.spool_max_bytes, config.spools_max_bytes);
        let farm = Farm::new(&config.executor, &config.root, config.job_timeout).map_err(std::io::Error::other)?;
        let action_cache_tools = Arc::new(crate::store::tools::Tools::new(
            config.action_cache_tools.clone(),
            config.action_cache_paths.clone(),
            config.action_cache_tools_refresh,
        ));
        // On a farm, its scheduler decides what runs; the server meters only its own machine.
        let metered = matches!(config.executor, ExecutorChoice::Local);
        let resources = Arc::new(crate::resources::Pool::new(
            config.capacity.clone(),
            crate::resources::machine::cpu_ids(),
            metered,
        ));
        tracing::info!(
            capacity = config.capacity.describe().as_str(),
            memory = crate::executor::confine::memory_control().describe().as_str(),
            cores = crate::executor::confine::cpuset_control().describe().as_str(),
            "resources for commands"
        );
        let root = config.root.clone();
        let state = State {
            _root_lock: root_lock,
            resources,
            config,
            jobs,
            host: LocalExecutor::new(contain, &root),
            farm,
            env_cache,
            store,
            spares,
            known_trees: Default::default(),
            action_cache,
            action_cache_tools,
            metrics,
            spools: Arc::new(
                crate::jobs::spool::Spools::new(spool_bounds.0, spool_bounds.1, spool_bounds.2)
                    .on_disk(&root, spool_key),
            ),
            adoptable: std::sync::Mutex::new(adoptable),
            job_links,
            status_page: std::sync::OnceLock::new(),
            draining: AtomicBool::new(false),
            blob_streams: Arc::default(),
            tree_plans: crate::rpc::per_cn::Turns::new(crate::rpc::per_cn::PLANS_PER_CN),
        };
        Ok((state, swept))
    }
}

impl State {
    /// Where commands run: a farm's nodes, or this machine.
    pub fn executor(&self) -> &dyn Executor {
        match &self.farm {
            Some(farm) => farm.executor(),
            None => &self.host,
        }
    }

    /// Processes running now: set-up steps and commands, wherever they run.
    pub fn running(&self) -> usize {
        self.host.running() + self.farm.as_ref().map_or(0, |farm| farm.executor().running())
    }

    /// Stops every run now (shutdown), here and on the farm.
    pub fn stop_all(&self) {
        self.host.stop_all();
        if let Some(farm) = &self.farm {
            farm.executor().stop_all();
        }
    }

    /// Stops the runs the next server cannot take on (a legacy client's; set-up
    /// steps), leaving durable jobs' commands running (`--keep-jobs-on-exit`).
    pub async fn stop_those_not_outliving(&self) {
        self.host.stop_those_not_outliving().await;
        if let Some(farm) = &self.farm {
            farm.executor().stop_those_not_outliving().await;
        }
    }
}

//! Our extension service, `lrpymrpc.v1.Extensions` (`proto/lrpymrpc_v1.proto`), served
//! beside `FileService` unless `--legacy-protocol`: what this server can do, its
//! limits and load, and who the caller is to it; and content-addressed upload
//! (`CreateJob`, `UploadBlobs`), which makes the same jobs as `Upload` from a tree of
//! blobs kept in the content store (`store/blobs.rs`). Every extension is announced by
//! `Capabilities`, so a client finds out in one round trip and falls back from a
//! legacy server.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use lrpymrpc_cas::{DIGEST_FUNCTION, Plan, TreeError, directory_digest, materialise, patch, plan};
use lrpymrpc_proto::v1::extensions_server::Extensions;
use lrpymrpc_proto::v1::{
    BlobChunk, Caller, CancelRequest, CancelResponse, CapabilitiesRequest, CapabilitiesResponse, CreateJobResponse,
    Digest, Features, FollowRequest, JobSummary, Limits, ListJobsRequest, ListJobsResponse, Load, RunState, StatusJob,
    StatusRequest, StatusResponse, TreePart, UploadBlobsResponse,
};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::error::JobError;
use crate::rpc::auth::{self, check_allowed, identify};
use crate::state::State;
use crate::store::spares::Spare;

/// The most bytes of directory messages one CreateJob may send (about two million
/// entries with short names).
const MAX_TREE_BYTES: usize = 256 << 20;

/// The most missing digests one CreateJob answer lists (`Limits.max_batch_blobs`).
pub const MAX_MISSING_LISTED: usize = 20_000;

/// The largest message the server decodes: tonic's default, said out loud.
pub const MAX_MESSAGE_BYTES: u64 = 4 * 1024 * 1024;

pub struct ExtensionService {
    state: Arc<State>,
}

impl ExtensionService {
    pub fn new(state: Arc<State>) -> ExtensionService {
        ExtensionService { state }
    }
}

#[tonic::async_trait]
impl Extensions for ExtensionService {
    type FollowStream = crate::rpc::messages::ResponseStream<lrpymrpc_proto::ExecuteResponse>;

    /// A durable run's output from a sequence number on (`spool.rs`).
    async fn follow(&self, request: Request<FollowRequest>) -> Result<Response<Self::FollowStream>, Status> {
        let caller = self.authorized(&request, "follow")?;
        let request = request.into_inner();
        let spool = self.durable_job(&request.unique_id, caller.cn.as_deref())?;
        info!(job = %request.unique_id, cn = caller.name(), after = request.after_seq, from_end = request.from_end, "follow");
        let records = self.state.spools.follow(spool, request.after_seq, request.from_end);
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(records))))
    }

    /// Stops a durable run's command now (the client's Ctrl-C).
    async fn cancel(&self, request: Request<CancelRequest>) -> Result<Response<CancelResponse>, Status> {
        let caller = self.authorized(&request, "cancel")?;
        let request = request.into_inner();
        let spool = self.durable_job(&request.unique_id, caller.cn.as_deref())?;
        let was_running = spool.cancel("the client asked (Ctrl-C or `lrpymrpc cancel`)");
        info!(job = %request.unique_id, cn = caller.name(), was_running, "cancel");
        Ok(Response::new(CancelResponse { was_running }))
    }

    /// The caller's durable runs.
    async fn list_jobs(&self, request: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        let caller = self.authorized(&request, "list_jobs")?;
        let jobs = self
            .state
            .spools
            .of(caller.cn.as_deref())
            .into_iter()
            .map(|spool| {
                let (end, started, ran) = spool.summary();
                let started = started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                JobSummary {
                    unique_id: spool.started.id.clone(),
                    state: end.as_ref().map_or_else(|| "running".to_string(), ToString::to_string),
                    run_state: end.map_or(RunState::Running, |end| end.run_state()).into(),
                    started_unix_seconds: i64::try_from(started).unwrap_or(i64::MAX),
                    duration_ms: u64::try_from(ran.as_millis()).unwrap_or(u64::MAX),
                    command: spool.started.command.clone(),
                    attach_info: spool.started.attach.clone(),
                    detached: spool.started.detached,
                    resources: spool.started.needs.clone(),
                    waiting: self
                        .state
                        .jobs
                        .waiting_for(&spool.started.id)
                        .or_else(|| spool.farm_queued())
                        .unwrap_or_default(),
                    page_path: page_path(&self.state, &spool.started.id),
                }
            })
            .collect();
        Ok(Response::new(ListJobsResponse { jobs, page_port: page_port(&self.state) }))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let caller = self.authorized(&request, "status")?;
        Ok(Response::new(status_now(&self.state, Viewer::Caller(caller.cn.as_deref()))))
    }

    async fn capabilities(
        &self,
        request: Request<CapabilitiesRequest>,
    ) -> Result<Response<CapabilitiesResponse>, Status> {
        let config = &self.state.config;
        // Answered for any certificate the CA signed, even one the allow-list refuses:
        // that is how `tls check` can say so. It reveals the limits, not any job.
        // Without a certificate (possible only with --health-without-auth), nothing:
        // the limits and the load are for users.
        if let Err(error) = identify(&request, config.tls.is_some()) {
            self.state.metrics.refused_for(&error);
            return Err(error.into());
        }
        let mut owner = None;
        let caller = match identify(&request, config.tls.is_some()) {
            Ok(caller) => {
                owner = caller.cn.clone();
                let refusal = check_allowed(&caller, config.allowed_cns.as_ref()).err();
                Caller {
                    cn: caller.cn.unwrap_or_default(),
                    allowed: refusal.is_none(),
                    refusal: refusal.map(|error| error.to_string()).unwrap_or_default(),
                }
            }
            Err(error) => Caller { cn: String::new(), allowed: false, refusal: error.to_string() },
        };
        let running = self.state.running();
        let free_slots = self.state.jobs.free_slots_for(owner.as_deref());
        let response = CapabilitiesResponse {
            protocol: lrpymrpc_proto::v1::PROTOCOL,
            server: format!("{} {}", crate::SERVER_NAME, env!("CARGO_PKG_VERSION")),
            features: Some(Features {
                exit_status: true,
                content_addressed_upload: self.state.store.is_some(),
                result_encodings: vec!["zstd".into(), "identity".into()],
                blob_compressions: vec!["zstd".into()],
                action_cache: self.state.action_cache.is_some(),
                durable_jobs: true,
                executor: config.executor.name().into(),
                known_trees: self.state.store.is_some(),
                resources: true,
                status: true,
            }),
            limits: Some(Limits {
                max_message_bytes: MAX_MESSAGE_BYTES,
                max_upload_bytes: config.upload_limits.max_bytes,
                max_batch_blobs: MAX_MISSING_LISTED as u32,
            }),
            load: Some(load_now(&self.state, running, free_slots)),
            caller: Some(caller),
            capacity: Some(capacity_now(&self.state)),
        };
        Ok(Response::new(response))
    }

    async fn create_job(&self, request: Request<Streaming<TreePart>>) -> Result<Response<CreateJobResponse>, Status> {
        let caller = self.authorized(&request, "create_job")?;
        let store = self.state.store.as_ref().ok_or(JobError::NoStore)?;
        if self.state.draining.load(Ordering::SeqCst) {
            self.state.metrics.refused("draining");
            return Err(JobError::Draining.into());
        }
        let started = Instant::now();
        let limits = self.state.config.upload_limits;
        let (head, directories) = self.receive_tree(request.into_inner()).await?;
        let root = head.root;
        let cn = caller.cn.clone().unwrap_or_default();
        let metrics = &self.state.metrics;
        // A tree this CN made a job from before was checked then: the same root is
        // the same tree (an unchanged build), so a client may name the root alone.
        let known = self.state.known_trees.get(&cn, &root.hash);
        if head.root_only && known.is_none() {
            return Ok(Response::new(CreateJobResponse { send_tree: true, ..Default::default() }));
        }
        let (plan, from_spare) = match self.ready_plan(&cn, known, root.clone(), directories, limits).await? {
            Ok(ready) => ready,
            Err(missing) => return Ok(Response::new(missing_response(missing))),
        };
        let (id, dir, job_use) =
            self.state.jobs.create(caller.cn.as_deref()).inspect_err(|error| metrics.refused_for(error))?;
        self.state.jobs.set_input_root(&id, &root.hash);
        // The blobs to copy stay in the store until they are copied; the same tree as
        // the spare's copies none (should another call take the spare first, a blob
        // evicted meanwhile is asked for again).
        let hashes = match from_spare {
            true => Vec::new(),
            false => {
                let mut hashes: Vec<String> = plan.files.iter().map(|(_, digest, _)| digest.hash.clone()).collect();
                hashes.sort_unstable();
                hashes.dedup();
                store.pin(&hashes);
                hashes
            }
        };
        let (state, job, owner, planned) = (self.state.clone(), id.clone(), cn.clone(), plan.clone());
        let (files, bytes) = (plan.files.len(), plan.bytes);
        // Copies, on a blocking thread; a failure removes the job directory.
        let made = tokio::task::spawn_blocking(move || {
            let store = state.store.as_ref().expect("checked above");
            let made = make_job_dir(&state, &owner, &planned, &dir);
            store.unpin(&hashes);
            match &made {
                Ok(_) => make_spare(&state, &owner, planned),
                Err(_) => {
                    if let Some(dir) = state.jobs.discard(&job) {
                        crate::jobs::remove_job_files(&dir);
                    }
                }
            }
            made
        })
        .await
        .map_err(|e| JobError::task("making the job from the store", e))?;
        drop(job_use);
        match made {
            Ok(how) => {
                self.state.known_trees.remember(&cn, plan);
                self.state.metrics.step("upload", started.elapsed());
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                info!(
                    job = %id, cn = caller.name(), fingerprint = %caller.fingerprint, peer = %caller.address,
                    files, bytes, ms, kept = how.kept, copied = how.copied, removed = how.removed,
                    from_spare = how.from_spare, "job made from the content store"
                );
                Ok(Response::new(CreateJobResponse { unique_id: id, ..Default::default() }))
            }
            // Evicted since it was counted present: the client sends it again.
            Err(TreeError::BlobGone(hash)) => {
                let size = plan.files.iter().find(|(_, digest, _)| digest.hash == hash).map_or(0, |(_, d, _)| d.size);
                Ok(Response::new(missing_response(vec![Digest { hash, size }])))
            }
            Err(error) => Err(JobError::from(error).into()),
        }
    }

    async fn upload_blobs(
        &self,
        request: Request<Streaming<BlobChunk>>,
    ) -> Result<Response<UploadBlobsResponse>, Status> {
        let caller = self.authorized(&request, "upload_blobs")?;
        if self.state.store.is_none() {
            return Err(JobError::NoStore.into());
        }
        let cn = caller.cn.clone().unwrap_or_default();
        match crate::rpc::blob_upload::receive(self.state.clone(), cn, request.into_inner()).await {
            Ok(stored) => Ok(Response::new(UploadBlobsResponse { stored })),
            Err(error) => {
                warn!(cn = caller.name(), peer = %caller.address, reason = error.to_string().as_str(), "blobs refused");
                Err(error.into())
            }
        }
    }
}

impl ExtensionService {
    /// The caller's durable run `id`; NOT_FOUND (as for any job not the caller's) when
    /// there is none: gone, never durable, or another CN's.
    fn durable_job(&self, id: &str, owner: Option<&str>) -> Result<Arc<crate::jobs::spool::Spool>, Status> {
        self.state.spools.get(id, owner).ok_or_else(|| {
            Status::not_found(format!(
                "no job `{id}` of yours to follow here: it finished and was removed, the server restarted, or nobody \
                 came back within its --reattach-grace"
            ))
        })
    }

    fn authorized<T>(&self, request: &Request<T>, rpc: &str) -> Result<auth::Caller, Status> {
        let config = &self.state.config;
        auth::authorize(request, config.tls.is_some(), config.allowed_cns.as_ref()).map_err(|error| {
            self.state.metrics.refused_for(&error);
            let peer = request.remote_addr().map_or_else(|| "?".to_string(), |a| a.to_string());
            warn!(rpc, peer = %peer, reason = error.to_string().as_str(), "refused");
            Status::from(error)
        })
    }

    /// The plan a job is made from, once every blob it copies is stored for `cn`
    /// (`Err`: the blobs still missing): the spare's (whose tree was found present
    /// for this CN when it was made), a known tree's, or the received tree's, checked.
    /// Returns whether it is the spare's.
    async fn ready_plan(
        &self,
        cn: &str,
        known: Option<Arc<Plan>>,
        root: Digest,
        directories: Vec<lrpymrpc_proto::v1::Directory>,
        limits: lrpymrpc_archive::Limits,
    ) -> Result<Result<(Arc<Plan>, bool), Vec<Digest>>, JobError> {
        let store = self.state.store.as_ref().ok_or(JobError::NoStore)?;
        let files = &self.state.metrics.store_files;
        if let Some(plan) = self.state.spares.as_ref().and_then(|spares| spares.plan_of(cn, &root.hash)) {
            crate::net::metrics::Metrics::count(files, "present", plan.files.len() as u64);
            return Ok(Ok((plan, true)));
        }
        let plan = match known {
            Some(plan) => plan,
            None => self.plan_off_the_runtime(cn, root, directories, limits).await?,
        };
        let missing = store.missing(cn, plan.files.iter().map(|(_, digest, _)| digest));
        crate::net::metrics::Metrics::count(files, "missing", missing.len() as u64);
        let present = plan.files.len() - missing.len().min(plan.files.len());
        crate::net::metrics::Metrics::count(files, "present", present as u64);
        if !missing.is_empty() {
            return Ok(Err(missing));
        }
        // Sizes come from the store: the plan's limits count what is copied.
        if let Some((claimed, size)) = store.wrong_size(plan.files.iter().map(|(_, digest, _)| digest)) {
            let path = plan.files.iter().find(|(_, d, _)| d.hash == claimed.hash).map(|(p, _, _)| p.clone());
            return Err(TreeError::WrongSize { path: path.unwrap_or_default(), claimed: claimed.size, size }.into());
        }
        Ok(Ok((plan, false)))
    }

    /// Reads a CreateJob stream: the digest function and root from its first part,
    /// every directory by the digest of its encoding as the server computes it.
    /// Checks a received tree and lists what it makes ([`plan`]), on a blocking thread
    /// (its directories are hashed there too), at most `per_cn::PLANS_PER_CN` of one
    /// CN at once: a hostile tree costs its sender's time, not the runtime's.
    async fn plan_off_the_runtime(
        &self,
        cn: &str,
        root: Digest,
        directories: Vec<lrpymrpc_proto::v1::Directory>,
        limits: lrpymrpc_archive::Limits,
    ) -> Result<Arc<Plan>, JobError> {
        let _turn = self.state.tree_plans.turn(cn).await;
        tokio::task::spawn_blocking(move || {
            let directories: HashMap<String, lrpymrpc_proto::v1::Directory> =
                directories.into_iter().map(|directory| (directory_digest(&directory).hash, directory)).collect();
            plan(&root, &directories, &limits).map(Arc::new).map_err(JobError::from)
        })
        .await
        .map_err(|e| JobError::task("checking the tree", e))?
    }

    async fn receive_tree(
        &self,
        mut stream: Streaming<TreePart>,
    ) -> Result<(TreeHead, Vec<lrpymrpc_proto::v1::Directory>), JobError> {
        let limits = self.state.config.upload_limits;
        let idle = self.state.config.upload_idle_timeout;
        let mut head: Option<(String, Option<Digest>, bool)> = None;
        let mut directories = Vec::new();
        // A tree's description is held in memory: bounded apart from its entries.
        let mut received = 0usize;
        loop {
            let part = match tokio::time::timeout(idle, stream.message()).await {
                Err(_) => return Err(JobError::UploadStalled(lrpymrpc_units::human_duration(idle))),
                Ok(Err(status)) => {
                    return Err(JobError::TaskFailed { what: "receiving the tree", why: status.message().to_string() });
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(part))) => part,
            };
            if head.is_none() {
                head = Some((part.digest_function.clone(), part.root.clone(), part.root_only));
            }
            received = received.saturating_add(part.encoded_len());
            if received > MAX_TREE_BYTES {
                return Err(TreeError::TooManyEntries(limits.max_entries).into());
            }
            for directory in part.directories {
                if directories.len() as u64 >= limits.max_entries {
                    return Err(TreeError::TooManyEntries(limits.max_entries).into());
                }
                directories.push(directory);
            }
        }
        let (function, root, root_only) = head.unwrap_or_default();
        if function != DIGEST_FUNCTION {
            return Err(JobError::DigestFunction(function.chars().take(40).collect()));
        }
        let root = root.ok_or_else(|| TreeError::MissingDirectory("(no root was named)".into()))?;
        // Only a known tree is looked up by its root: the hash must be one.
        if !lrpymrpc_cas::is_valid_hash(&root.hash) {
            return Err(TreeError::BadDigest(root.hash.chars().take(80).collect()).into());
        }
        Ok((TreeHead { root, root_only: root_only && directories.is_empty() }, directories))
    }
}

/// How a job directory was made: from a spare tree (patched) or copied whole.
struct JobMade {
    from_spare: bool,
    kept: usize,
    copied: usize,
    removed: usize,
}

/// Fills the empty job directory `dir` with `plan`'s tree: `cn`'s spare renamed into
/// place and patched, when it has a whole one, else every file copied.
fn make_job_dir(state: &State, cn: &str, plan: &Plan, dir: &Path) -> Result<JobMade, TreeError> {
    let store = state.store.as_ref().expect("only called with a store");
    let blob_path = |hash: &str| store.blob_path(hash);
    if let Some(spare) = state.spares.as_ref().and_then(|spares| spares.take(cn)) {
        // A spare replaces the empty job directory in one rename (same filesystem).
        if spare.wait() && std::fs::rename(&spare.path, dir).is_ok() {
            let done = patch(&spare.plan, plan, &blob_path, dir)?;
            return Ok(JobMade { from_spare: true, kept: done.kept, copied: done.copied, removed: done.removed });
        }
        let _ = std::fs::remove_dir_all(&spare.path);
    }
    materialise(plan, &blob_path, dir)?;
    Ok(JobMade { from_spare: false, kept: 0, copied: plan.files.len(), removed: 0 })
}

/// Makes a spare copy of `plan`'s tree for `cn`'s next job (see `spares.rs`), its
/// blobs pinned meanwhile; on the calling (blocking) thread.
fn make_spare(state: &Arc<State>, cn: &str, plan: Arc<Plan>) {
    let Some((path, made, replaced)) = state.spares.as_ref().and_then(|spares| spares.reserve(cn, plan.clone())) else {
        return;
    };
    let state = state.clone();
    std::thread::spawn(move || {
        replaced.into_iter().for_each(Spare::discard);
        let store = state.store.as_ref().expect("spares are made only beside a store");
        let mut hashes: Vec<String> = plan.files.iter().map(|(_, digest, _)| digest.hash.clone()).collect();
        hashes.sort_unstable();
        hashes.dedup();
        store.pin(&hashes);
        let outcome = materialise(&plan, &|hash| store.blob_path(hash), &path);
        store.unpin(&hashes);
        if let Err(error) = &outcome {
            warn!(error = %error, "a spare tree could not be made; the next job is copied whole");
            let _ = std::fs::remove_dir_all(&path);
        }
        made.set(outcome.is_ok());
    });
}

/// A CreateJob answer listing missing blobs, at most [`MAX_MISSING_LISTED`].
fn missing_response(mut missing: Vec<Digest>) -> CreateJobResponse {
    let more_missing = missing.len() > MAX_MISSING_LISTED;
    missing.truncate(MAX_MISSING_LISTED);
    CreateJobResponse { unique_id: String::new(), missing, more_missing, send_tree: false }
}

/// The size of a file blob named in the tree (for a blob evicted under a job).
/// The first part of a CreateJob stream: the tree's root, and whether that is all.
struct TreeHead {
    root: Digest,
    /// Only the root was sent: the job is made from a tree the caller made one from.
    root_only: bool,
}

/// The capacity and what is free of it now, as the capabilities call reports it.
fn capacity_now(state: &crate::state::State) -> lrpymrpc_proto::v1::Capacity {
    let capacity = state.resources.capacity();
    let now = state.resources.snapshot();
    lrpymrpc_proto::v1::Capacity {
        cpus: capacity.cpus,
        free_cpus: now.free_cpus,
        memory_bytes: capacity.memory_bytes,
        free_memory_bytes: now.free_memory_bytes,
        licenses: capacity
            .licenses
            .iter()
            .map(|(name, total)| lrpymrpc_proto::v1::LicensePool {
                name: name.clone(),
                total: *total,
                free: now.free_licenses.get(name).copied().unwrap_or(0),
            })
            .collect(),
        default_cpus: capacity.default_cpus,
        waiting: now.waiting,
        max_walltime_seconds: state.config.job_timeout.as_secs(),
    }
}

/// Who looks at the server's status: what they are shown of each job is decided here
/// and nowhere else.
#[derive(Debug, Clone, Copy)]
pub enum Viewer<'a> {
    /// A certificate holder (`Status`): its own jobs whole (id, command, run name).
    Caller(Option<&'a str>),
    /// The status page's overview, whoever opens it: no job is anyone's own there.
    Public,
}

/// What the server runs and what waits, and why, as `viewer` may see it: waiting jobs
/// first in queue order, then running ones. Another CN's job is its CN, state,
/// resources, reason and times: never its id, command, run name or anything it printed.
pub fn status_now(state: &State, viewer: Viewer<'_>) -> StatusResponse {
    let now = std::time::SystemTime::now();
    let (mut waiting, mut running) = (Vec::new(), Vec::new());
    for spool in state.spools.all() {
        let (end, started, _) = spool.summary();
        if end.is_some() {
            continue;
        }
        let started_unix_seconds = started.duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs());
        let own = match viewer {
            Viewer::Caller(cn) => spool.started.owner.as_deref() == cn,
            Viewer::Public => false,
        };
        // Waiting for this server's resources, or in a farm's queue.
        let reason = state.jobs.waiting_for(&spool.started.id).or_else(|| spool.farm_queued());
        let mut job = StatusJob {
            cn: spool.started.owner.clone().unwrap_or_default(),
            own,
            waiting: reason.is_some(),
            reason: reason.unwrap_or_default(),
            resources: spool.started.needs.clone(),
            started_unix_seconds: i64::try_from(started_unix_seconds).unwrap_or(i64::MAX),
            duration_ms: now.duration_since(started).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            ..Default::default()
        };
        if own {
            job.unique_id = spool.started.id.clone();
            job.command = spool.started.command.clone();
            job.run_name = spool.started.attach.as_ref().map(|attach| attach.run_name.clone()).unwrap_or_default();
            job.page_path = page_path(state, &spool.started.id);
        }
        match job.waiting {
            true => waiting.push(job),
            false => running.push(job),
        }
    }
    for (place, job) in waiting.iter_mut().enumerate() {
        job.position = u32::try_from(place + 1).unwrap_or(u32::MAX);
    }
    let free_slots = match viewer {
        Viewer::Caller(cn) => state.jobs.free_slots_for(cn),
        Viewer::Public => state.config.max_jobs.saturating_sub(state.running()),
    };
    StatusResponse {
        server: format!("{} {}", crate::SERVER_NAME, env!("CARGO_PKG_VERSION")),
        executor: state.config.executor.name().into(),
        capacity: Some(capacity_now(state)),
        load: Some(load_now(state, state.running(), free_slots)),
        jobs: waiting.into_iter().chain(running).collect(),
        page_port: page_port(state),
    }
}

/// The status page's port, 0 when none is served.
fn page_port(state: &State) -> u32 {
    state.status_page.get().map_or(0, |address| u32::from(address.port()))
}

/// Job `id`'s page link (its owner's alone to have), when a status page is served.
fn page_path(state: &State, id: &str) -> String {
    match state.status_page.get() {
        Some(_) => state.job_links.path(id),
        None => String::new(),
    }
}

/// The server's load now, for the caller (`free_slots` counts its per-CN limit).
fn load_now(state: &State, running: usize, free_slots: usize) -> Load {
    Load {
        max_jobs: u32::try_from(state.config.max_jobs).unwrap_or(u32::MAX),
        running_jobs: u32::try_from(running).unwrap_or(u32::MAX),
        free_slots: u32::try_from(free_slots).unwrap_or(u32::MAX),
        draining: state.draining.load(Ordering::SeqCst),
    }
}

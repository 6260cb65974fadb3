//! Our extension service, `lrpymrpc.v1.Extensions` (`proto/lrpymrpc_v1.proto`), served
//! beside `FileService` unless `--legacy-protocol`: what this server can do, its
//! limits and load, and who the caller is to it. Every later extension is announced
//! here, so a client finds out in one round trip and falls back from a legacy server.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use lrpymrpc_proto::v1::extensions_server::Extensions;
use lrpymrpc_proto::v1::{Caller, CapabilitiesRequest, CapabilitiesResponse, Features, Limits, Load};
use tonic::{Request, Response, Status};

use crate::auth::{check_allowed, identify};
use crate::executor::Executor;
use crate::state::State;

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
    async fn capabilities(
        &self,
        request: Request<CapabilitiesRequest>,
    ) -> Result<Response<CapabilitiesResponse>, Status> {
        let config = &self.state.config;
        // Answered for any certificate the CA signed, even one the allow-list refuses:
        // that is how `tls check` can say so. It reveals the limits, not any job.
        let caller = match identify(&request, config.tls.is_some()) {
            Ok(caller) => {
                let refusal = check_allowed(&caller, config.allowed_cns.as_ref()).err();
                Caller {
                    cn: caller.cn.unwrap_or_default(),
                    allowed: refusal.is_none(),
                    refusal: refusal.map(|error| error.to_string()).unwrap_or_default(),
                }
            }
            Err(error) => Caller { cn: String::new(), allowed: false, refusal: error.to_string() },
        };
        let running = self.state.executor.running();
        let free_slots = self.state.jobs.free_slots();
        let response = CapabilitiesResponse {
            protocol: lrpymrpc_proto::v1::PROTOCOL,
            server: format!("lrpymrpc-mock-server {}", env!("CARGO_PKG_VERSION")),
            features: Some(Features {
                exit_status: true,
                content_addressed_upload: false,
                result_encodings: Vec::new(),
                action_cache: false,
                durable_jobs: false,
                executor: "local".into(),
            }),
            limits: Some(Limits {
                max_message_bytes: MAX_MESSAGE_BYTES,
                max_upload_bytes: config.upload_limits.max_bytes,
                max_batch_blobs: 0,
            }),
            load: Some(Load {
                max_jobs: u32::try_from(config.max_jobs).unwrap_or(u32::MAX),
                running_jobs: u32::try_from(running).unwrap_or(u32::MAX),
                free_slots: u32::try_from(free_slots).unwrap_or(u32::MAX),
                draining: self.state.draining.load(Ordering::SeqCst),
            }),
            caller: Some(caller),
        };
        Ok(Response::new(response))
    }
}

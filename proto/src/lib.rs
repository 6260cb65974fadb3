//! The lrPymRPC wire contract: the messages and the `FileService` client and server
//! generated from `file_service.proto`, which has no `package` line so that the
//! service is `/FileService/...` exactly as the deployed Python peers expect; and our
//! extension service in its own package ([`v1`]).

#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/_.rs"));

/// Our extension service, `lrpymrpc.v1.Extensions` (`lrpymrpc_v1.proto`): everything
/// beyond the wire contract, announced by its `Capabilities` call.
pub use lrpymrpc::v1;

/// The package path the generated code refers to (`lrpymrpc.v1` names the wire
/// contract's messages, `ExecuteResponse`, two levels up).
pub mod lrpymrpc {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/lrpymrpc.v1.rs"));

        /// The extension protocol version this build speaks.
        pub const PROTOCOL: u32 = 1;
    }
}

/// The chunk size the Python client uses for uploads, and ours for both directions;
/// well under the 4 MiB that gRPC peers accept in one message by default.
pub const CHUNK_SIZE: usize = 1024 * 1024;

/// The chunk size of a download in an encoding only lrpymrpc clients ask for (zstd,
/// identity): a client holds a few chunks at once (the one decoding, the queue, the one
/// unpacking), so a quarter of [`CHUNK_SIZE`] keeps it near 1 MiB instead of 4, at no
/// visible cost per message.
pub const EXTENSION_CHUNK_SIZE: usize = 256 * 1024;

/// How long either peer waits for the answer to an HTTP/2 keepalive ping before it
/// takes the connection for dead: long enough for a loaded server, short enough that
/// a vanished peer is noticed well within a minute.
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    // Field numbers are the contract: these bytes are what the Python peers send.
    #[test]
    fn execute_request_encodes_with_the_deployed_field_numbers() {
        let request = ExecuteRequest {
            unique_id: "u".into(),
            tool: "t".into(),
            command_opt: "c".into(),
            separate_streams: false,
            progress_updates: false,
            cache: CachePolicy::Unspecified as i32,
            cache_results: String::new(),
            durability: Durability::Unspecified as i32,
            attach_info: None,
            resources: None,
        };
        assert_eq!(request.encode_to_vec(), b"\x0a\x01u\x12\x01t\x1a\x01c");
        // Ours asks for separate streams and progress in fields 4 and 5, which the
        // deployed peers skip.
        let ours = ExecuteRequest { separate_streams: true, progress_updates: true, ..request.clone() };
        assert_eq!(ours.encode_to_vec(), b"\x0a\x01u\x12\x01t\x1a\x01c\x20\x01\x28\x01");
        // The action cache in fields 6 and 7.
        let cached = ExecuteRequest { cache: CachePolicy::Use as i32, cache_results: "b".into(), ..ours.clone() };
        assert_eq!(cached.encode_to_vec(), b"\x0a\x01u\x12\x01t\x1a\x01c\x20\x01\x28\x01\x30\x01\x3a\x01b");
        // Durable runs in fields 8 and 9.
        let durable = ExecuteRequest {
            durability: Durability::Reattach as i32,
            attach_info: Some(AttachInfo { run_name: "r".into(), ..Default::default() }),
            ..ours
        };
        assert_eq!(durable.encode_to_vec(), b"\x0a\x01u\x12\x01t\x1a\x01c\x20\x01\x28\x01\x40\x01\x4a\x03\x12\x01r");
        // What the step needs in field 10: two cores, one `s` license.
        let needs = ExecuteRequest {
            resources: Some(Resources {
                cpus: 2,
                licenses: vec![License { name: "s".into(), count: 1 }],
                ..Default::default()
            }),
            ..request
        };
        assert_eq!(needs.encode_to_vec(), b"\x0a\x01u\x12\x01t\x1a\x01c\x52\x09\x08\x02\x1a\x05\x0a\x01s\x10\x01");
    }

    #[test]
    fn check_and_download_requests_share_their_field_numbers() {
        let check = CheckRequest { unique_id: "u".into(), result_dir: "a b".into() };
        let download = DownloadRequest { unique_id: "u".into(), result_dir: "a b".into(), encoding: String::new() };
        assert_eq!(check.encode_to_vec(), b"\x0a\x01u\x12\x03a b");
        assert_eq!(check.encode_to_vec(), download.encode_to_vec());
        assert_eq!(CheckResponse { has_stream: true, result_bytes: 0 }.encode_to_vec(), b"\x08\x01");
        assert_eq!(DataChunk { data: b"z".to_vec() }.encode_to_vec(), b"\x0a\x01z");
        assert_eq!(UploadResponse { unique_id: "u".into() }.encode_to_vec(), b"\x0a\x01u");
        assert_eq!(ExecuteResponse { message: "m".into(), ..Default::default() }.encode_to_vec(), b"\x0a\x01m");
    }

    #[test]
    fn extension_fields_leave_the_deployed_encoding_alone() {
        // A plain line encodes exactly as the Python peers expect: defaults are omitted.
        let plain = ExecuteResponse { message: "m".into(), ..Default::default() };
        assert_eq!(plain.encode_to_vec(), b"\x0a\x01m");
        // An old peer's bytes decode into a message with the extensions unset.
        let decoded = ExecuteResponse::decode(&b"\x0a\x01m"[..]).unwrap();
        assert_eq!((decoded.stream, decoded.exit_status), (0, None));
        let last = ExecuteResponse {
            message: String::new(),
            stream: OutputStream::Stderr as i32,
            exit_status: Some(ExitStatus { code: 3, signal: 0 }),
            progress: false,
            cache_hit: None,
            seq: 0,
        };
        assert_eq!(last.encode_to_vec(), b"\x10\x02\x1a\x02\x08\x03");
        let hit =
            ExecuteResponse { cache_hit: Some(CacheHit { ran_at_unix_seconds: 1, ran_for_ms: 2 }), ..plain.clone() };
        assert_eq!(hit.encode_to_vec(), b"\x0a\x01m\x2a\x04\x08\x01\x10\x02");
        assert_eq!(ExecuteResponse { seq: 7, ..plain }.encode_to_vec(), b"\x0a\x01m\x30\x07");
    }

    #[test]
    fn a_status_job_encodes_with_its_documented_field_numbers() {
        // docs/protocol.md: cn = 1, own = 2, waiting = 3, position = 4, reason = 5, ...,
        // unique_id = 9, command = 10, run_name = 11; Features.status = 10.
        let job = crate::v1::StatusJob {
            cn: "c".into(),
            own: true,
            waiting: true,
            position: 1,
            reason: "r".into(),
            unique_id: "u".into(),
            command: "x".into(),
            run_name: "n".into(),
            ..Default::default()
        };
        assert_eq!(job.encode_to_vec(), b"\x0a\x01c\x10\x01\x18\x01\x20\x01\x2a\x01r\x4a\x01u\x52\x01x\x5a\x01n");
        let features = crate::v1::Features { status: true, ..Default::default() };
        assert_eq!(features.encode_to_vec(), b"\x50\x01");
    }

    #[test]
    fn service_path_has_no_package_prefix() {
        assert_eq!(<file_service_server::FileServiceServer<()> as tonic::server::NamedService>::NAME, "FileService");
    }

    #[test]
    fn the_extension_service_lives_in_its_own_package() {
        use crate::v1::extensions_server::ExtensionsServer;
        assert_eq!(<ExtensionsServer<()> as tonic::server::NamedService>::NAME, "lrpymrpc.v1.Extensions");
        use crate::file_service_server::FileServiceServer;
        assert_eq!(<FileServiceServer<()> as tonic::server::NamedService>::NAME, "FileService");
    }
}

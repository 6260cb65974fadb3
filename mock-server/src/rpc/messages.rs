//! The one place job events become wire messages (`ExecuteResponse`), for the Execute
//! call, durable runs' spools and the action cache's replay alike, and the stream type
//! every streaming call answers with.

use std::pin::Pin;

use lrpymrpc_proto::{CacheHit, ExecuteResponse, ExitStatus, OutputStream};
use tokio_stream::Stream;
use tonic::Status;

use crate::SERVER_NAME;
use crate::error::JobError;
use crate::executor::{JobEvent, Pipe};

/// What a streaming call answers with.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What the client gets of one event of an Execute step: a line with its stream
/// label; a note and the exit status in words for clients that only print `message`,
/// the status also as a field for lrpymrpc clients. `legacy` answers as a server
/// without the extension: the line only, and no status message at all.
pub fn to_message(event: Result<JobEvent, JobError>, legacy: bool) -> Option<Result<ExecuteResponse, Status>> {
    let message = match event {
        Err(error) => return Some(Err(error.into())),
        Ok(JobEvent::RunStarted { .. } | JobEvent::Checkpoint { .. }) => return None,
        Ok(JobEvent::Exited { .. } | JobEvent::Progress { .. } | JobEvent::Served { .. }) if legacy => return None,
        Ok(JobEvent::Served { ran_at_unix_seconds, ran_for_ms }) => ExecuteResponse {
            message: format!("[{SERVER_NAME}] served from the action cache: nothing runs"),
            cache_hit: Some(CacheHit { ran_at_unix_seconds, ran_for_ms }),
            ..Default::default()
        },
        Ok(JobEvent::Line { text, .. }) if legacy => ExecuteResponse { message: text, ..Default::default() },
        Ok(JobEvent::Line { pipe, text }) => {
            ExecuteResponse { message: text, stream: stream_of(pipe) as i32, ..Default::default() }
        }
        Ok(JobEvent::Progress { pipe, text }) => {
            ExecuteResponse { message: text, stream: stream_of(pipe) as i32, progress: true, ..Default::default() }
        }
        Ok(JobEvent::Note(text) | JobEvent::Queued(text) | JobEvent::Dispatched(text)) => {
            ExecuteResponse { message: format!("[{SERVER_NAME}] {text}"), ..Default::default() }
        }
        Ok(JobEvent::Exited { code, signal }) => {
            let words = match signal {
                0 => format!("exit status {code}"),
                signal => format!("signal {signal}"),
            };
            ExecuteResponse {
                message: format!("[{SERVER_NAME}] command ended with {words}"),
                stream: OutputStream::Unspecified as i32,
                exit_status: Some(ExitStatus { code, signal }),
                ..Default::default()
            }
        }
    };
    Some(Ok(message))
}

/// The wire label of a pipe: unspecified for one merged pipe.
fn stream_of(pipe: Pipe) -> OutputStream {
    match pipe {
        Pipe::Stdout => OutputStream::Stdout,
        Pipe::Stderr => OutputStream::Stderr,
        Pipe::Merged => OutputStream::Unspecified,
    }
}

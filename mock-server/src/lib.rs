//! The lrpymrpc reference server: it really does the job (a fresh job directory per
//! upload, pip into a per-job virtual environment, the command in its own process
//! group, results streamed back) over mutual TLS. A library with a thin binary, so
//! tests start it in-process with [`run`] on port 0.

pub mod cli;
pub mod config;
mod error;
mod execute;
mod jobs;
mod process;
mod service;

use std::future::Future;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

pub use config::{Config, ConfigError, TlsMaterial};
use lrpymrpc_proto::file_service_server::FileServiceServer;

/// Serves jobs on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        let identity = Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        // A client CA root makes client certificates mandatory: the handshake fails
        // before any RPC, so no byte of an unauthenticated upload reaches the disk.
        let tls_config =
            ServerTlsConfig::new().identity(identity).client_ca_root(Certificate::from_pem(&tls.client_ca_pem));
        builder = builder.tls_config(tls_config)?;
    }
    let service = FileServiceServer::new(service::Service::new(config));
    builder.add_service(service).serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown).await
}

//! What the server serves over HTTP beside gRPC. `http.rs` is its one HTTP stack
//! (axum on hyper, bounded connections) for every such listener: the status page
//! (`--status-listen`: a lab's view of its compute in a browser, over HTTPS) and
//! Prometheus' `/metrics` (`metrics.rs`). `serve.rs` owns the page's routes and
//! headers; `pages.rs` its markup (escaped by construction); `history.rs` the sampled
//! last 24 hours its plots draw. What a viewer sees of a job is
//! `rpc::extensions::status_now`'s to decide.

pub mod history;
pub mod http;
pub mod metrics;
pub mod pages;
pub mod serve;

//! The status page (`--status-listen`): a lab's view of its compute in a browser, over
//! HTTPS. `serve.rs` owns the listener, its bounds and its headers; `pages.rs` the
//! markup (escaped by construction); `history.rs` the sampled last 24 hours its plots
//! draw. What a viewer sees of a job is `rpc::extensions::status_now`'s to decide.

pub mod history;
pub mod pages;
pub mod serve;

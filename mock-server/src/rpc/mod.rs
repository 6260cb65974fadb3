//! The wire: the two gRPC services (`files`: the original four calls; `extensions`:
//! ours), who is calling (`auth`), UploadBlobs' receiving (`blob_upload`), the per-CN
//! bounds on calls (`per_cn`), and `messages`, the one place job events become wire
//! messages. Proto types are built here and nowhere below.

pub mod auth;
pub mod blob_upload;
pub mod extensions;
pub mod files;
pub mod messages;
pub mod per_cn;

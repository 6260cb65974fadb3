//! Everything about talking to a server: who it is ([`peer`]), what a failed
//! connection was ([`fault`]), connecting and asking its capabilities ([`connect`]),
//! the certificate it presents ([`server_cert`]), one session's calls ([`session`]),
//! waiting for a free slot ([`queue`]), servers that just failed ([`backoff`]), what
//! a durable job's user typed ([`detached`]) and the exit-status marker ([`marker`]).
//! The steps (`steps/`) decide the order; this folder makes the calls.

pub(crate) mod backoff;
pub(crate) mod connect;
pub(crate) mod detached;
pub(crate) mod fault;
pub(crate) mod marker;
pub(crate) mod peer;
pub(crate) mod queue;
pub(crate) mod resources;
pub(crate) mod server_cert;
pub(crate) mod session;

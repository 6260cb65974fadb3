//! Sockets besides gRPC's own handling: accepting connections with bounded TLS
//! handshakes (`listener`) and the Prometheus endpoint (`metrics`).

pub mod listener;
pub mod metrics;

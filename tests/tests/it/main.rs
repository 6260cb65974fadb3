//! End-to-end tests: the real client binary against the reference server (started
//! in-process on a free loopback port) or a fake one, over real mutual TLS.

mod action_cache;
mod admin;
mod attacks;
mod browser;
mod cancel;
mod cas;
mod certs;
mod cgroup_v2;
mod client;
mod compat;
mod durable;
mod env;
mod extensions;
mod faults;
mod gridengine;
mod hangs;
mod hostile;
mod integration;
mod job;
mod load;
mod monitoring;
mod outlive;
mod packaging;
mod proxy;
mod resources;
mod security;
mod server;
mod servers;
mod slurm;
mod status;
mod status_page;
mod tls;
mod trust;

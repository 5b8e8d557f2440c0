//! Several "hosts" on one machine, for tandem's end-to-end tests.
//!
//! tandem's third test layer (see `CONVENTIONS.md`) drives real agents and a
//! real etcd cluster through real network faults. This crate builds the
//! network those tests run on, out of Linux network namespaces:
//!
//! ```text
//!   host ns "tt-<pid>-<n>-a"        switch ns "tt-<pid>-<n>"        host ns "tt-<pid>-<n>-b"
//!   lo + eth0 10.77.0.1/24 ──veth── v1 ┐                      ┌ v2 ──veth── eth0 10.77.0.2/24 + lo
//!                                       └──────── br0 ────────┘
//! ```
//!
//! * [`Net`] owns a private "switch" namespace holding a bridge, and one
//!   namespace per [`Host`], plugged into the bridge by a veth pair. Nothing
//!   is created in the root namespace, so the test subnet can never clash with
//!   or leak to the machine's real network, and parallel `Net`s never see each
//!   other.
//! * Faults are iptables rules *inside a host's namespace*
//!   ([`Net::isolate`], [`Net::cut`], [`Net::cut_addr`], [`Net::loss`]); they
//!   vanish with the namespace. [`Net::kill_host`] SIGKILLs every process in
//!   a namespace; [`Net::pause`]/[`Net::resume`] stop and continue one.
//! * `tc netem` is unavailable on tandem's machines, so latency comes from a
//!   userspace [`DelayProxy`].
//!
//! Everything a `Net` creates is removed when it is dropped (even on panic),
//! and `Net::new` removes what a crashed earlier run left behind. The harness
//! needs root, `ip` (iproute2) and `iptables`; it says so clearly when one is
//! missing.
#![deny(missing_docs)]
#![allow(clippy::disallowed_methods)]

mod net;
mod proxy;

pub use net::{DEFAULT_SUBNET, Host, Net, SUBNET_ENV, TestnetError, default_subnet};
pub use proxy::DelayProxy;

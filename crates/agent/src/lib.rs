//! tandem's runtime: the agent of each host and the elected controller.
//!
//! This crate executes what `tandem-core` decides. The agent
//! ([`agent`]) owns one [`tandem_core::instance::InstanceMachine`] per local
//! instance and carries out its actions: processes ([`process`]), probes
//! ([`probe`]), role hooks ([`hook`]), status publication bound to the host
//! lease ([`publish`], [`lease`]) and self-fencing. The controller
//! ([`controller`]) is elected among agents through the store and writes
//! role assignments decided by [`tandem_core::controller::decide`].
//! [`heartbeat`] detects lost peer hosts in tens of milliseconds.
//! [`webhook`] sends the events of the log to the topology's webhooks, from
//! the elected controller.
//! [`sign`] authenticates agents to each other on the agent port.
//! [`local`] runs all of it for the hosts of a topology on this machine
//! (`tandem up`).
#![deny(missing_docs)]
// The runtime reads clocks by design; core does not.
#![allow(clippy::disallowed_methods)]

mod admin;
pub mod agent;
pub mod checks;
pub mod controller;
mod followers;
pub mod heartbeat;
pub mod hook;
pub mod launch;
pub mod lease;
mod links;
pub mod local;
pub mod peer;
pub mod probe;
pub mod process;
pub mod publish;
pub mod sign;
pub mod supervisor;
pub mod watchdog;
pub mod webhook;

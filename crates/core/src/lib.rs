//! tandem's pure core.
//!
//! Everything that decides lives here and nothing here performs I/O, spawns
//! a task or reads a clock: time arrives as an argument, effects leave as
//! returned actions. The runtime (`tandem-agent`) executes those actions
//! and feeds back what happened. Every safety rule of DESIGN.md is enforced
//! and tested in this crate.
//!
//! - [`topology`]: the declarative topology file, parsed and validated.
//! - [`model`]: the shared vocabulary (roles, statuses, role assignments,
//!   events) as stored in the coordination store.
//! - [`mode`]: what each HA mode means (how its instances run, their
//!   roles), for the controller and the agent alike.
//! - [`controller`]: the controller's decision function.
//! - [`instance`]: the agent's per-instance state machine.
//! - [`host`]: the agent's per-host state machine around its instance
//!   machines: the host lease, self-fencing, failsafe, holds, topology
//!   changes, watchdog deadlines.
//! - [`health`]: health-check hysteresis.
//! - [`detector`]: the heartbeat failure detector (which peer hosts'
//!   agents are suspected lost, and why).
#![deny(missing_docs)]

pub mod controller;
pub mod detector;
pub mod health;
pub mod host;
pub mod instance;
pub mod links;
pub mod mode;
pub mod model;
pub mod sites;
pub mod topology;

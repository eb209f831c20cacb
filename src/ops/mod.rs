//! Operating enisync: metrics and health endpoints, the control socket behind
//! `status`/`plan`/`pause`/`resume`/`release --held`/`cancel`, and their output formats.

pub mod control;
pub mod heartbeat;
pub mod metrics;
pub mod status;

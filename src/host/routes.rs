//! Policy routing for managed ENIs (work in progress).

/// The `proto` number on every rule and route enisync creates.
pub const RTPROT_ENISYNC: u8 = 212;

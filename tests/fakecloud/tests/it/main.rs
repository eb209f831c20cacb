//! The fake cloud's own tests: real HTTP against a real server on loopback, requests
//! signed with `enisync::cloud::sign`.

mod binary;
mod claims;
mod common;
mod events;
mod faults;
mod legacy;
mod limits;
mod metadata;
mod tls;
mod v3;

//! Fuzzing on stable: every parser that reads bytes from outside the
//! process (the config file, the journal, netlink datagrams, taskstats exit records, the
//! API's and the metadata service's answers) is fed generated input for a bounded number
//! of cases, with a fixed seed, under `cargo test` (so CI runs it).
//!
//! The properties: no input panics (in the release build a panic aborts the daemon);
//! every refusal is a classified error (an `ErrorClass` the engine acts on, a config
//! error that names a key); nothing grows beyond what its input could hold (inputs are
//! bounded, and results are checked against the input's size); secrets never reach an
//! error message. Inputs are both raw bytes and structured ones (answers assembled from
//! the fields the parsers look for, datagrams with valid headers and random attributes),
//! because raw bytes alone rarely get past the first check.
//!
//! `ENISYNC_FUZZ_CASES=n` runs `n` cases per target instead of the CI default, and
//! `ENISYNC_FUZZ_SEED=n` another seed; a failure prints the shrunk input, which then goes
//! into the regression list of its target (`REGRESSIONS_*`, in the target's file).
//!
//! One file per group of targets: `cloud.rs` (API 3.0, legacy and metadata answers),
//! `config.rs`, `journal.rs`, `netlink.rs` (rtnetlink and taskstats datagrams), `bpf.rs`
//! (the IPv6 deletion probe's ring records and BTF).

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, RngSeed, TestRunner};

mod bpf;
mod cloud;
mod config;
mod journal;
mod netlink;

/// Cases per target in CI: together well under a minute of a debug build on two cores.
const DEFAULT_CASES: u32 = 4000;
const DEFAULT_SEED: u64 = 0x0e15_11c0_ffee;

fn runner(weight: u32) -> TestRunner {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let cases = env("ENISYNC_FUZZ_CASES")
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(DEFAULT_CASES * weight);
    TestRunner::new(RunnerConfig {
        cases,
        rng_seed: RngSeed::Fixed(env("ENISYNC_FUZZ_SEED").unwrap_or(DEFAULT_SEED)),
        // Regressions live in this file, not in a directory the test writes.
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..RunnerConfig::default()
    })
}

/// Runs `check` on every regression input, then on `strategy`'s cases.
fn fuzz<S: Strategy>(
    weight: u32,
    regressions: &[S::Value],
    strategy: S,
    check: impl Fn(&S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: Clone + std::fmt::Debug,
{
    for input in regressions {
        check(input).unwrap_or_else(|e| panic!("regression {input:?}: {e}"));
    }
    let result = runner(weight).run(&strategy, |input| check(&input));
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Bytes that are mostly text, sometimes not.
fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..max),
        ".{0,64}".prop_map(String::into_bytes),
    ]
}

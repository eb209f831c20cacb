//! Chaos: a seeded random run against the real daemon in a sandbox
//! namespace with the fake cloud, judged by `common/oracle.rs` (the trigger rule and
//! nothing else).
//!
//! The run mixes aux IP adds and deletes on two ENI links (eth1, eth2) and a non-ENI
//! link (eth9), flaps inside the grace period, primary IP removals (eth0's, and eth1's,
//! which sweeps its subnet's aux IPs away), eth2 going down and up, and cloud faults
//! (throttling, 5xx, malformed answers, busy ENI, timeouts, lost answers, a failed task).
//!
//! - CI runs the seeds in [`CI_SEEDS`], [`DEFAULT_OPS`] operations each, in parallel.
//! - `CHAOS_SEED=n` replays one seed (the operations, not the daemon's timing);
//!   `CHAOS_OPS=5000` makes a longer run.
//! - `CHAOS_SABOTAGE_GRACE_MS=n` runs the daemon with another grace period than the
//!   oracle assumes: with a shorter one the oracle must fail the run (how the oracle
//!   itself is checked).
//!
//! A failure prints its seed and the history of every IP involved.

#[path = "common/oracle.rs"]
mod oracle;
#[path = "common/sandbox.rs"]
mod sandbox;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enisync_fakecloud::{FakeEni, FakeTaskStatus, Fault};
use oracle::{HostOp, OpKind, Rules, Sent};
use sandbox::{ENI1, INSTANCE, Layout, Sandbox};

const CI_SEEDS: [u64; 2] = [20_260_401, 7];
const DEFAULT_OPS: usize = 500;
const GRACE: Duration = Duration::from_millis(800);
/// How long after its grace period a due release may take, cloud faults included.
const BOUND: Duration = Duration::from_secs(15);
const ENI2: &str = "eni-third002";
const MAC2: &str = "52:54:00:ab:cd:02";
const ENI2_PRIMARY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 10);
const ETH0_PRIMARY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const ETH1_PRIMARY: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
const UNASSIGN: &str = "UnassignPrivateIpAddresses";

fn pool1() -> Vec<Ipv4Addr> {
    (11..=110).map(|n| Ipv4Addr::new(10, 0, 1, n)).collect()
}

fn pool2() -> Vec<Ipv4Addr> {
    (11..=22).map(|n| Ipv4Addr::new(10, 0, 2, n)).collect()
}

#[test]
fn chaos_fixed_seeds() {
    let ops = std::env::var("CHAOS_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_OPS);
    let seeds: Vec<u64> = match std::env::var("CHAOS_SEED") {
        Ok(s) => vec![s.parse().expect("CHAOS_SEED is a number")],
        Err(_) => CI_SEEDS.to_vec(),
    };
    let handles: Vec<_> = seeds
        .into_iter()
        .map(|seed| {
            std::thread::Builder::new()
                .name(format!("chaos-{seed}"))
                .spawn(move || run(seed, ops))
                .expect("spawn")
        })
        .collect();
    let mut failures = Vec::new();
    for h in handles {
        if let Err(e) = h.join().expect("chaos thread") {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Where an aux IP is on the host now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Absent,
    On(&'static str),
}

struct Run {
    sb: Sandbox,
    rng: fastrand::Rng,
    ops: Vec<HostOp>,
    place: BTreeMap<Ipv4Addr, Place>,
    /// When each IP last left the host (to re-add only old removals).
    left_at: BTreeMap<Ipv4Addr, Instant>,
    eth2_up: bool,
    last_task_fault: usize,
    last_sweep: usize,
    n: usize,
    /// Faulty answers injected (calls they apply to).
    faults: u32,
}

fn run(seed: u64, n_ops: usize) -> Result<(), String> {
    println!("chaos: seed {seed}, {n_ops} operations (replay: CHAOS_SEED={seed})");
    let daemon_grace = std::env::var("CHAOS_SABOTAGE_GRACE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(GRACE, Duration::from_millis);
    let sb = Sandbox::new(
        &format!("ch{}", seed % 1000),
        Layout {
            aux: (11..=110).collect(),
            release: vec![
                format!("grace = \"{}ms\"", daemon_grace.as_millis()),
                "burst_limit = 1000".into(),
                "not_listed_recheck = \"2s\"".into(),
            ],
            cloud: vec!["timeout = \"1s\"".into()],
            ..Layout::default()
        },
    );
    // A third ENI (eth2, flapped up and down) and a non-ENI link (eth9).
    let mut setup = vec![
        format!("link add eth2 address {MAC2} type veth peer name peer2"),
        "link set peer2 up".into(),
        "link set eth2 up".into(),
        format!("addr add {ENI2_PRIMARY}/24 dev eth2"),
        // No dummy module on every CI kernel: a veth pair with a random MAC.
        "link add eth9 type veth peer name peer9".into(),
        "link set peer9 up".into(),
        "link set eth9 up".into(),
    ];
    setup.extend(
        pool2()
            .iter()
            .map(|ip| format!("addr add {ip}/24 dev eth2")),
    );
    sb.ip_batch(&setup);
    sb.fake
        .add_eni(
            FakeEni::new(
                ENI2,
                MAC2,
                "vpc-sandbox",
                "subnet-2",
                "10.0.2.0/24",
                ENI2_PRIMARY,
            )
            .attached(INSTANCE, 2)
            .secondaries(pool2()),
        )
        .map_err(|e| format!("seed {seed}: {e}"))?;
    let sent_log: Arc<Mutex<Vec<(Instant, enisync_fakecloud::Call)>>> = Arc::default();
    {
        let log = Arc::clone(&sent_log);
        sb.fake.set_call_observer(move |call| {
            if call.action == UNASSIGN {
                log.lock()
                    .expect("sent log")
                    .push((Instant::now(), call.clone()));
            }
        });
    }
    let mut place = BTreeMap::new();
    for ip in pool1() {
        place.insert(ip, Place::On("eth1"));
    }
    for ip in pool2() {
        place.insert(ip, Place::On("eth2"));
    }
    let mut r = Run {
        sb,
        rng: fastrand::Rng::with_seed(seed),
        ops: Vec::new(),
        place,
        left_at: BTreeMap::new(),
        eth2_up: true,
        last_task_fault: 0,
        last_sweep: 0,
        n: 0,
        faults: 0,
    };
    r.sb.start();
    let started = Instant::now();
    while r.n < n_ops {
        r.step();
        std::thread::sleep(Duration::from_millis(r.rng.u64(10..=90)));
    }
    if !r.eth2_up {
        r.link("eth2", true);
    }
    let ops_time = started.elapsed();
    let rules = Rules {
        grace: GRACE,
        managed_links: vec!["eth1".into(), "eth2".into()],
        primaries: vec![ETH0_PRIMARY, ETH1_PRIMARY, ENI2_PRIMARY],
        send_slack: Duration::from_millis(300),
        margin: Duration::from_millis(300),
        bound: BOUND,
    };
    // Let every release that is due happen (and any wrong one show up).
    let settle_deadline = Instant::now() + GRACE + rules.bound + Duration::from_secs(1);
    let mut verdict;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        verdict = oracle::judge(&rules, &r.ops, &r.sent(&sent_log));
        let quiet = r
            .ops
            .last()
            .is_none_or(|o| o.t1.elapsed() > GRACE + Duration::from_secs(3));
        if (verdict.violations.is_empty() && quiet) || Instant::now() > settle_deadline {
            break;
        }
    }
    let sent = r.sent(&sent_log);
    let count = |f: fn(&OpKind) -> bool| r.ops.iter().filter(|o| f(&o.kind)).count();
    println!(
        "chaos seed {seed}: host ops: {} deletes, {} adds, {} swept by a primary removal, \
         {} primary removals, {} link downs",
        count(|k| matches!(k, OpKind::Del { .. })),
        count(|k| matches!(k, OpKind::Add { .. })),
        count(|k| matches!(k, OpKind::Swept { .. })),
        count(|k| matches!(k, OpKind::PrimaryDel { .. })),
        count(|k| matches!(k, OpKind::LinkDown { .. })),
    );
    println!(
        "chaos seed {seed}: {} operations in {ops_time:?}; {} unassign calls checked, {} releases, \
         {} removals demanded and released (worst {:?} after grace); {} faults injected; {} violations",
        r.n,
        verdict.calls,
        verdict.releases,
        verdict.demanded,
        verdict.worst_delay,
        r.faults,
        verdict.violations.len()
    );
    if verdict.violations.is_empty() {
        return Ok(());
    }
    let mut report = format!(
        "chaos seed {seed} FAILED (replay: CHAOS_SEED={seed} CHAOS_OPS={n_ops}):\n{}\n",
        verdict.violations.join("\n")
    );
    let mut shown = Vec::new();
    for line in &verdict.violations {
        if let Some(ip) = line
            .split(':')
            .next()
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
            && !shown.contains(&ip)
            && shown.len() < 5
        {
            shown.push(ip);
            report += &format!("history of {ip}:\n{}\n", oracle::history(&r.ops, &sent, ip));
        }
    }
    Err(report)
}

impl Run {
    fn sent(&self, log: &Arc<Mutex<Vec<(Instant, enisync_fakecloud::Call)>>>) -> Vec<Sent> {
        let calls = log.lock().expect("sent log").clone();
        calls
            .into_iter()
            .map(|(at, c)| Sent {
                at,
                ips: c.ips.iter().filter_map(|s| s.parse().ok()).collect(),
                succeeded: c.answer == "Success"
                    && c.task
                        .as_deref()
                        .and_then(|t| self.sb.fake.task(t))
                        .is_some_and(|t| t.status == FakeTaskStatus::Success),
                summary: c.summary(),
            })
            .collect()
    }

    /// Runs `ip -n ns <args>` and records `kind` with its instants.
    fn host(&mut self, args: &str, kind: OpKind) {
        let t0 = Instant::now();
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.sb.ns)
            .args(args.split_whitespace())
            .output()
            .expect("ip");
        let t1 = Instant::now();
        assert!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.ops.push(HostOp { kind, t0, t1 });
    }

    fn note(&mut self, kind: OpKind) {
        let t = Instant::now();
        self.ops.push(HostOp { kind, t0: t, t1: t });
    }

    fn pick(&mut self, ips: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        (!ips.is_empty()).then(|| ips[self.rng.usize(..ips.len())])
    }

    fn present_on(&self, link: &str) -> Vec<Ipv4Addr> {
        self.place
            .iter()
            .filter(|(_, p)| **p == Place::On(link_static(link)))
            .map(|(ip, _)| *ip)
            .collect()
    }

    fn eni_of(ip: Ipv4Addr) -> &'static str {
        if ip.octets()[2] == 1 { ENI1 } else { ENI2 }
    }

    fn cloud_available(&self, ip: Ipv4Addr) -> bool {
        self.sb.fake.eni(Self::eni_of(ip)).is_some_and(|eni| {
            eni.ips
                .iter()
                .any(|e| e.addr == ip && !e.primary && e.state == "AVAILABLE" && e.eip.is_none())
        })
    }

    fn del(&mut self, ip: Ipv4Addr) {
        let Place::On(link) = self.place[&ip] else {
            return;
        };
        let held = self.cloud_available(ip);
        self.note(OpKind::CloudHeld { ip, held });
        let prefix = if link == "eth9" { 32 } else { 24 };
        self.host(
            &format!("addr del {ip}/{prefix} dev {link}"),
            OpKind::Del {
                ip,
                link: link.into(),
            },
        );
        self.place.insert(ip, Place::Absent);
        self.left_at.insert(ip, Instant::now());
    }

    fn add(&mut self, ip: Ipv4Addr, link: &'static str) {
        let prefix = if link == "eth9" { 32 } else { 24 };
        self.host(
            &format!("addr add {ip}/{prefix} dev {link}"),
            OpKind::Add {
                ip,
                link: link.into(),
            },
        );
        self.place.insert(ip, Place::On(link));
    }

    /// An absent IP that left long enough ago that its removal has been judged, made
    /// assignable again in the cloud when it was released.
    fn readd_candidate(&mut self, pool: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        let old = GRACE + BOUND + Duration::from_secs(1);
        let candidates: Vec<Ipv4Addr> = pool
            .iter()
            .copied()
            .filter(|ip| self.place[ip] == Place::Absent)
            .filter(|ip| self.left_at.get(ip).is_none_or(|t| t.elapsed() > old))
            .collect();
        let ip = self.pick(&candidates)?;
        match self.sb.fake.owner_of(ip) {
            Some(_) => {
                // Still assigned: only if not being released right now.
                if !self.cloud_available(ip) {
                    return None;
                }
            }
            None => {
                self.sb.fake.add_secondary_ip(Self::eni_of(ip), ip).ok()?;
                self.note(OpKind::Assign { ip });
            }
        }
        Some(ip)
    }

    fn step(&mut self) {
        self.n += 1;
        let roll = self.rng.u32(0..100);
        match roll {
            // Delete an aux IP (either ENI link, or eth9).
            0..=21 => {
                let mut present = self.present_on("eth1");
                present.extend(self.present_on("eth2"));
                present.extend(self.present_on("eth9"));
                if let Some(ip) = self.pick(&present) {
                    self.del(ip);
                }
            }
            // Add one back: on its ENI link mostly, on eth9 sometimes.
            22..=54 => {
                let pool = if self.rng.bool() { pool1() } else { pool2() };
                if let Some(ip) = self.readd_candidate(&pool) {
                    let link = if self.rng.u32(0..100) < 15 {
                        "eth9"
                    } else if ip.octets()[2] == 1 {
                        "eth1"
                    } else {
                        "eth2"
                    };
                    self.add(ip, link);
                }
            }
            // A flap inside the grace period, back on the same link or another one.
            55..=69 => {
                let present = self.present_on("eth1");
                if let Some(ip) = self.pick(&present) {
                    self.del(ip);
                    let half = u64::try_from(GRACE.as_millis() / 2).unwrap_or(400);
                    let pause = self.rng.u64(30..=half);
                    std::thread::sleep(Duration::from_millis(pause));
                    let link = if self.rng.u32(0..100) < 20 {
                        "eth9"
                    } else {
                        "eth1"
                    };
                    self.add(ip, link);
                }
            }
            // A primary IP removed, then restored. eth1's sweeps its subnet's aux IPs.
            70..=73 => {
                // eth1's primary at most once per 250 operations: it empties the pool.
                if self.rng.u32(0..100) < 90 || self.n < self.last_sweep + 250 {
                    self.host(
                        &format!("addr del {ETH0_PRIMARY}/24 dev eth0"),
                        OpKind::PrimaryDel {
                            ip: ETH0_PRIMARY,
                            link: "eth0".into(),
                        },
                    );
                    std::thread::sleep(Duration::from_millis(self.rng.u64(50..300)));
                    self.host(
                        &format!("addr add {ETH0_PRIMARY}/24 dev eth0"),
                        OpKind::PrimaryAdd {
                            ip: ETH0_PRIMARY,
                            link: "eth0".into(),
                        },
                    );
                } else {
                    self.last_sweep = self.n;
                    let swept = self.present_on("eth1");
                    self.host(
                        &format!("addr del {ETH1_PRIMARY}/24 dev eth1"),
                        OpKind::PrimaryDel {
                            ip: ETH1_PRIMARY,
                            link: "eth1".into(),
                        },
                    );
                    let (t0, t1) = {
                        let last = self.ops.last().expect("just pushed");
                        (last.t0, last.t1)
                    };
                    for ip in swept {
                        self.ops.push(HostOp {
                            kind: OpKind::Swept {
                                ip,
                                link: "eth1".into(),
                            },
                            t0,
                            t1,
                        });
                        self.place.insert(ip, Place::Absent);
                        self.left_at.insert(ip, t1);
                    }
                    std::thread::sleep(Duration::from_millis(self.rng.u64(50..300)));
                    self.host(
                        &format!("addr add {ETH1_PRIMARY}/24 dev eth1"),
                        OpKind::PrimaryAdd {
                            ip: ETH1_PRIMARY,
                            link: "eth1".into(),
                        },
                    );
                }
            }
            // eth2 down (it comes back a few operations later).
            74..=76 if self.eth2_up => self.link("eth2", false),
            // A cloud fault for the next call (about 7% of unassigns see one).
            77..=82 => self.fault(),
            _ => {}
        }
        if !self.eth2_up && self.rng.u32(0..100) < 25 {
            self.link("eth2", true);
        }
    }

    fn link(&mut self, link: &str, up: bool) {
        let kind = if up {
            OpKind::LinkUp { link: link.into() }
        } else {
            OpKind::LinkDown { link: link.into() }
        };
        self.host(
            &format!("link set {link} {}", if up { "up" } else { "down" }),
            kind,
        );
        self.eth2_up = up;
    }

    fn fault(&mut self) {
        let pending: u32 = self.sb.fake.faults().iter().map(|f| f.remaining).sum();
        if pending >= 3 {
            return;
        }
        let action = match self.rng.u32(0..100) {
            0..=44 => UNASSIGN,
            45..=84 => "DescribeNetworkInterfaces",
            _ => "DescribeVpcTaskResult",
        };
        let times = if action == UNASSIGN {
            1
        } else {
            self.rng.u32(1..=2)
        };
        let fault = match self.rng.u32(0..9) {
            0 => Fault::Throttle,
            1 => Fault::ActionLimited,
            2 => Fault::Http { status: 500 },
            3 => Fault::Http { status: 503 },
            4 => Fault::Malformed,
            5 => Fault::error("UnsupportedOperation.MutexOperationTaskRunning"),
            6 => Fault::timeout(Duration::from_millis(1500)),
            7 if action == UNASSIGN => Fault::late_answer(Duration::from_millis(1500)),
            8 if action == UNASSIGN
                && self.n > self.last_task_fault + 30
                && !self
                    .sb
                    .fake
                    .faults()
                    .iter()
                    .any(|f| f.fault == Fault::TaskFails) =>
            {
                self.last_task_fault = self.n;
                self.sb.fake.inject(action, Fault::TaskFails, 1);
                self.faults += 1;
                return;
            }
            _ => Fault::Throttle,
        };
        self.sb.fake.inject(action, fault, times);
        self.faults += times;
    }
}

fn link_static(link: &str) -> &'static str {
    match link {
        "eth1" => "eth1",
        "eth2" => "eth2",
        _ => "eth9",
    }
}

//! The engine's decisions, driven through its real event loop with a paused clock, an
//! in-memory cloud and a recording router. Each test names the clause of the trigger
//! rule it proves; the kernel-level versions live in `tests/e2e.rs`.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::cloud::{
    Attachment, CloudError, Eni, EniIp, ErrorClass, MAX_IPS_PER_CALL, MacAddr, Protocol, TaskRef,
    TaskStatus,
};
use crate::config::Cidr;
use crate::host::{Addr, HostEvent, Identity, Link, Remover};
use crate::pause::PauseRequest;

const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const GRACE: Duration = Duration::from_secs(30);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, last)
}

/// An in-memory cloud: one ENI with a primary IP and aux IPs; every call recorded.
#[derive(Default)]
struct MemCloud {
    state: Mutex<MemState>,
}

#[derive(Default)]
struct MemState {
    eni: Option<Eni>,
    unassigns: Vec<Vec<Ipv4Addr>>,
    refuse_next: u32,
    /// The class and code of the next refusals (default: `Refused`,
    /// `UnauthorizedOperation`). An `AlreadyGone` answer also drops the IPs from the
    /// listing, so that the describe that follows agrees.
    refuse_with: Option<(ErrorClass, String)>,
    fail_tasks: u32,
}

impl MemCloud {
    fn new(aux: &[u8]) -> Arc<Self> {
        let mut ips = vec![EniIp {
            addr: ip(10),
            primary: true,
            state: "AVAILABLE".into(),
            eip: None,
        }];
        ips.extend(aux.iter().map(|n| EniIp {
            addr: ip(*n),
            primary: false,
            state: "AVAILABLE".into(),
            eip: None,
        }));
        let cloud = Self::default();
        cloud.state.lock().expect("lock").eni = Some(Eni {
            id: "eni-1".into(),
            mac: MAC,
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-1".into(),
            state: "AVAILABLE".into(),
            primary: false,
            attachment: Some(Attachment {
                instance_id: "ins-1".into(),
                device_index: 1,
            }),
            ips,
        });
        Arc::new(cloud)
    }

    fn calls(&self) -> Vec<Vec<Ipv4Addr>> {
        self.state.lock().expect("lock").unassigns.clone()
    }

    fn set(&self, f: impl FnOnce(&mut MemState)) {
        f(&mut self.state.lock().expect("lock"));
    }

    fn set_ip(&self, addr: Ipv4Addr, f: impl FnOnce(&mut EniIp)) {
        self.set(|s| {
            if let Some(e) = s
                .eni
                .as_mut()
                .and_then(|e| e.ips.iter_mut().find(|i| i.addr == addr))
            {
                f(e);
            }
        });
    }
}

impl Cloud for MemCloud {
    async fn list_enis(&self) -> Result<Vec<Eni>, CloudError> {
        Ok(self
            .state
            .lock()
            .expect("lock")
            .eni
            .iter()
            .cloned()
            .collect())
    }

    async fn unassign(
        &self,
        eni_id: &str,
        _vpc: &str,
        ips: &[Ipv4Addr],
    ) -> Result<TaskRef, CloudError> {
        assert!(
            ips.len() <= MAX_IPS_PER_CALL,
            "the engine never sends more than ten"
        );
        let mut s = self.state.lock().expect("lock");
        s.unassigns.push(ips.to_vec());
        if s.refuse_next > 0 {
            s.refuse_next -= 1;
            let (class, code) = s
                .refuse_with
                .clone()
                .unwrap_or((ErrorClass::Refused, "UnauthorizedOperation".into()));
            if class == ErrorClass::AlreadyGone
                && let Some(eni) = s.eni.as_mut().filter(|e| e.id == eni_id)
            {
                eni.ips.retain(|i| !ips.contains(&i.addr));
            }
            return Err(CloudError {
                action: "UnassignPrivateIpAddresses",
                class,
                code,
                message: "no permission".into(),
                request_id: None,
            });
        }
        let failing = s.fail_tasks > 0;
        if failing {
            s.fail_tasks -= 1;
        } else if let Some(eni) = s.eni.as_mut().filter(|e| e.id == eni_id) {
            eni.ips.retain(|i| !ips.contains(&i.addr));
        }
        Ok(TaskRef {
            request_id: Some(format!("req-{}", s.unassigns.len())),
            task_id: format!(
                "{}{}",
                if failing { "fail-" } else { "" },
                s.unassigns.len()
            ),
            protocol: Protocol::V3,
        })
    }

    async fn wait_task(&self, task: &TaskRef) -> Result<TaskStatus, CloudError> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(if task.task_id.starts_with("fail-") {
            TaskStatus::Failed
        } else {
            TaskStatus::Success
        })
    }
}

#[derive(Clone, Default)]
struct RecordingRouter {
    released: Arc<Mutex<Vec<Ipv4Addr>>>,
    reconciles: Arc<std::sync::atomic::AtomicUsize>,
    /// Every `set_dry_run` the engine made, in order.
    dry_runs: Arc<Mutex<Vec<bool>>>,
}

impl Router for RecordingRouter {
    async fn after_release(&mut self, released: &[Ipv4Addr], _: &HostView, _: &Inventory) {
        self.released
            .lock()
            .expect("lock")
            .extend_from_slice(released);
    }
    async fn reconcile(&mut self, _: &HostView, _: &Inventory) {
        self.reconciles
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    async fn plan(&mut self, releasing: &[Ipv4Addr], _: &HostView, _: &Inventory) -> Vec<String> {
        releasing
            .iter()
            .map(|ip| format!("delete rule from {ip}"))
            .collect()
    }
    fn set_dry_run(&mut self, dry_run: bool) {
        self.dry_runs.lock().expect("lock").push(dry_run);
    }
}

struct Harness {
    cloud: Arc<MemCloud>,
    router: RecordingRouter,
    events: mpsc::UnboundedSender<HostEvent>,
    commands: mpsc::Sender<Command>,
    _shutdown: tokio_util::sync::DropGuard,
}

fn link(index: u32, name: &str, up: bool) -> Link {
    Link {
        index,
        name: name.into(),
        mac: Some(MAC),
        up,
        parent: None,
        kind: None,
    }
}

fn addr(last: u8, secondary: bool) -> Addr {
    Addr {
        link: 2,
        ip: ip(last),
        prefix: 24,
        secondary,
    }
}

fn by(process: &str) -> Option<Remover> {
    Some(Remover::named(4242, process))
}

/// A remover identified as `chain[0]`, a child of `chain[1]`, and so on.
fn by_chain(chain: &[&str]) -> Option<Remover> {
    Some(Remover {
        port_id: 4242,
        process: Some(chain[0].into()),
        ancestors: chain[1..].iter().map(|s| (*s).to_string()).collect(),
        identity: Identity::Alive,
    })
}

/// What the daemon would hand the engine: this view and inventory, nothing journaled.
fn start_with(view: HostView, inventory: Inventory) -> Start {
    Start {
        view,
        inventory,
        meta: HashMap::new(),
        statics: Vec::new(),
        boot_id: "boot".into(),
        journal: None,
        replay: Vec::new(),
        metrics: None,
        warnings: Vec::new(),
        pause: crate::pause::Pause::in_memory(),
    }
}

fn start(aux: &[u8], tweak: impl FnOnce(&mut Settings)) -> Harness {
    start_paused_in(aux, tweak, None)
}

/// `start`, with the pause kept in `pause_file` as the daemon keeps it in `state.dir`.
fn start_paused_in(
    aux: &[u8],
    tweak: impl FnOnce(&mut Settings),
    pause_file: Option<crate::pause::PauseFile>,
) -> Harness {
    let cloud = MemCloud::new(aux);
    let mut view = HostView::default();
    view.links.insert(
        1,
        Link {
            mac: None,
            ..link(1, "lo", true)
        },
    );
    view.links.insert(2, link(2, "eth1", true));
    for a in std::iter::once(addr(10, false)).chain(aux.iter().map(|n| addr(*n, true))) {
        view.addrs.insert(a.key(), a);
    }
    let inventory = inventory_of(&cloud);
    let mut settings = harness_settings();
    tweak(&mut settings);
    let pause = pause_file.map_or_else(crate::pause::Pause::in_memory, crate::pause::Pause::load);
    spawn_engine(
        cloud,
        settings,
        Start {
            pause,
            ..start_with(view, inventory)
        },
    )
}

/// The settings `start` gives before its tweak.
fn harness_settings() -> Settings {
    Settings {
        grace: GRACE,
        ignore_removers: vec!["systemd-networkd".into(), "dhclient".into()],
        burst_limit: 8,
        ..Settings::default()
    }
}

/// The inventory the daemon would build from `cloud`'s listing.
fn inventory_of(cloud: &MemCloud) -> Inventory {
    let enis = cloud
        .state
        .lock()
        .expect("lock")
        .eni
        .iter()
        .cloned()
        .collect();
    Inventory::build("ins-1", enis, &HashMap::new(), &[])
}

/// Runs the real engine loop on `cloud` with a recording router, as the daemon runs it.
fn spawn_engine(cloud: Arc<MemCloud>, settings: Settings, start: Start) -> Harness {
    let router = RecordingRouter::default();
    let engine = Engine::new(settings, Arc::clone(&cloud), router.clone(), start);
    let (events, events_rx) = mpsc::unbounded_channel();
    let (commands, commands_rx) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    tokio::spawn(engine.run(
        events_rx,
        commands_rx,
        shutdown.clone(),
        Box::pin(futures_util::stream::pending()),
        || {},
    ));
    Harness {
        cloud,
        router,
        events,
        commands,
        _shutdown: shutdown.drop_guard(),
    }
}

impl Harness {
    fn remove(&self, last: u8, remover: Option<Remover>) {
        self.remove_addr(addr(last, true), remover);
    }

    fn remove_addr(&self, addr: Addr, remover: Option<Remover>) {
        self.events
            .send(HostEvent::AddrRemoved { addr, remover })
            .expect("engine runs");
    }

    fn add(&self, addr: Addr) {
        self.events
            .send(HostEvent::AddrAdded(addr))
            .expect("engine runs");
    }

    async fn snapshot(&self) -> Snapshot {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Snapshot(tx))
            .await
            .expect("engine runs");
        rx.await.expect("reply")
    }
}

async fn sleep(d: Duration) {
    tokio::time::sleep(d).await;
}

/// A heartbeat on the (paused) tokio clock.
fn beats(period: Duration) -> futures_util::stream::BoxStream<'static, ()> {
    Box::pin(futures_util::stream::unfold((), move |()| async move {
        sleep(period).await;
        Some(((), ()))
    }))
}

#[tokio::test(start_paused = true)]
async fn a_removal_that_outlives_the_grace_period_is_released_once() {
    let h = start(&[11, 12], |_| {});
    h.remove(11, by("ip"));
    sleep(GRACE - Duration::from_secs(1)).await;
    assert!(
        h.cloud.calls().is_empty(),
        "nothing before the grace period ends"
    );
    sleep(Duration::from_secs(5)).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(11)]]);
    assert_eq!(*h.router.released.lock().expect("lock"), vec![ip(11)]);
    let snap = h.snapshot().await;
    assert!(snap.intents.is_empty());
    assert_eq!(snap.counters.released, 1);
    sleep(GRACE * 3).await;
    assert_eq!(h.cloud.calls().len(), 1, "exactly once");
}

#[tokio::test(start_paused = true)]
async fn clause4_readded_within_grace_is_not_released() {
    let h = start(&[11], |_| {});
    h.remove(11, by("ip"));
    sleep(Duration::from_secs(10)).await;
    h.add(addr(11, true));
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn clause4_readded_on_another_link_or_prefix_is_not_released() {
    let h = start(&[11, 12], |_| {});
    h.remove(11, by("ip"));
    h.add(Addr {
        link: 1,
        ..addr(11, false)
    });
    h.remove(12, by("ip"));
    h.add(Addr {
        prefix: 32,
        ..addr(12, false)
    });
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn clause2_kernel_and_ignored_removers_are_not_released() {
    let h = start(&[11, 12, 13], |_| {});
    h.remove(11, Some(Remover::kernel()));
    // comm is truncated to 15 bytes by the kernel.
    h.remove(12, by("systemd-network"));
    h.remove(13, by("dhclient"));
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn clause3_secondaries_swept_with_their_primary_are_not_released() {
    let h = start(&[11, 12], |_| {});
    // promote_secondaries=0: the kernel deletes the secondaries, then the primary, all
    // on behalf of the same requester.
    h.remove(11, by("ip"));
    h.remove(12, by("ip"));
    h.remove_addr(addr(10, false), by("ip"));
    sleep(GRACE * 2).await;
    assert!(
        h.cloud.calls().is_empty(),
        "neither the primary nor the swept aux IPs"
    );
    let snap = h.snapshot().await;
    assert!(
        snap.recent
            .iter()
            .all(|f| f.outcome == Outcome::Cancelled(Cancel::Collateral))
    );
}

#[tokio::test(start_paused = true)]
async fn clause5_link_down_or_gone_within_grace_is_not_released() {
    let h = start(&[11, 12], |_| {});
    h.remove(11, by("ip"));
    h.events
        .send(HostEvent::LinkChanged(link(2, "eth1", false)))
        .expect("send");
    sleep(GRACE * 2).await;
    h.events
        .send(HostEvent::LinkChanged(link(2, "eth1", true)))
        .expect("send");
    h.remove(12, by("ip"));
    h.events
        .send(HostEvent::LinkRemoved { index: 2 })
        .expect("send");
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn clause5_non_physical_and_unselected_links_are_not_released() {
    let h = start(&[11, 12], |s| s.interfaces = vec!["eth0".into()]);
    h.remove(11, by("ip"));
    let macvlan = Link {
        parent: Some(2),
        kind: Some("macvlan".into()),
        ..link(3, "mv0", true)
    };
    h.events
        .send(HostEvent::LinkChanged(macvlan))
        .expect("send");
    h.add(Addr {
        link: 3,
        ..addr(40, false)
    });
    h.remove_addr(
        Addr {
            link: 3,
            ..addr(40, false)
        },
        by("ip"),
    );
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn config_filters_include_and_exclude() {
    let h = start(&[11, 12], |s| {
        s.include = vec![Cidr::parse("10.0.1.0/28").expect("cidr")];
        s.exclude = vec![Cidr::parse("10.0.1.11/32").expect("cidr")];
    });
    h.remove(11, by("ip"));
    h.remove(12, by("ip"));
    sleep(GRACE * 2).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(12)]]);
}

#[tokio::test(start_paused = true)]
async fn clause6_a_burst_is_held_until_an_operator_confirms() {
    let aux: Vec<u8> = (11..21).collect();
    let h = start(&aux, |s| s.burst_limit = 8);
    for n in &aux {
        h.remove(*n, by("ip"));
    }
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty(), "held");
    let snap = h.snapshot().await;
    assert_eq!(
        snap.intents
            .iter()
            .filter(|i| i.phase == Phase::Held)
            .count(),
        10
    );
    let (tx, rx) = oneshot::channel();
    h.commands
        .send(Command::ReleaseHeld(tx))
        .await
        .expect("send");
    assert_eq!(rx.await.expect("reply"), 10);
    sleep(Duration::from_secs(5)).await;
    let calls = h.cloud.calls();
    assert_eq!(
        calls.len(),
        1,
        "ten IPs of one ENI share one call: {calls:?}"
    );
    assert_eq!(calls[0].len(), 10);
}

async fn release_held(h: &Harness) -> usize {
    let (tx, rx) = oneshot::channel();
    h.commands
        .send(Command::ReleaseHeld(tx))
        .await
        .expect("send");
    rx.await.expect("reply")
}

fn held_unknown(snap: &Snapshot) -> Vec<Ipv4Addr> {
    snap.intents
        .iter()
        .filter(|i| {
            i.phase == Phase::Held && matches!(i.held_reason, Some(HeldReason::UnknownRemover(_)))
        })
        .map(|i| i.ip)
        .collect()
}

/// Clause 2: a removal whose remover is unknown (found by a resync, not identified, or
/// not identifiable because enisync itself failed) is held, not released, until an
/// operator confirms it; then it is released once. Old code released all three.
#[tokio::test(start_paused = true)]
async fn clause2_unknown_removers_are_held_until_an_operator_confirms() {
    let h = start(&[11, 12, 13, 14], |_| {});
    h.remove(11, None);
    h.remove(12, Some(Remover::unknown(4000000001, "no socket".into())));
    h.remove(
        13,
        Some(Remover::failed(
            4242,
            "Too many open files (os error 24)".into(),
        )),
    );
    // Partly known, then unknown: still held (nothing in the known part is ignored).
    h.remove(
        14,
        Some(Remover {
            port_id: 4242,
            process: Some("ip".into()),
            ancestors: vec![],
            identity: Identity::Unknown("parent gone".into()),
        }),
    );
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty(), "held, not released");
    let snap = h.snapshot().await;
    assert_eq!(held_unknown(&snap), vec![ip(11), ip(12), ip(13), ip(14)]);
    assert_eq!(snap.counters.held_unknown_remover, 4);
    assert!(
        snap.warnings
            .iter()
            .any(|w| w.contains("held_unknown_remover") && w.contains("release --held")),
        "{:?}",
        snap.warnings
    );
    assert_eq!(release_held(&h).await, 4);
    sleep(Duration::from_secs(5)).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(11), ip(12), ip(13), ip(14)]]);
    sleep(GRACE * 3).await;
    assert_eq!(h.cloud.calls().len(), 1, "exactly once");
}

/// Clause 2: `ignore_removers` matches the remover's ancestors too: the `ip` that
/// dhclient-script runs for dhclient is dhclient's removal. Old code released it.
#[tokio::test(start_paused = true)]
async fn clause2_an_ignored_ancestor_is_not_released() {
    let h = start(&[11, 12, 13], |_| {});
    h.remove(11, by_chain(&["ip", "dhclient-script", "dhclient"]));
    // A partly known chain whose known part is ignored is ignored, not held.
    h.remove(
        12,
        Some(Remover {
            port_id: 4242,
            process: Some("ip".into()),
            ancestors: vec!["dhclient".into()],
            identity: Identity::Unknown("grandparent gone".into()),
        }),
    );
    h.remove(13, by_chain(&["ip", "bash", "sshd"]));
    sleep(GRACE * 2).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(13)]]);
    let snap = h.snapshot().await;
    assert!(held_unknown(&snap).is_empty());
}

/// Clause 2 and "exited versus unknown": a remover seen exiting before its name was
/// read is exited, not unknown, and judged by the chain the process events recorded: an
/// ignored ancestor is not released, a user's shell is. Exited with no chain is held.
#[tokio::test(start_paused = true)]
async fn clause2_an_exited_nameless_remover_is_judged_by_its_chain() {
    let h = start(&[11, 12, 13], |_| {});
    let exited = |ancestors: &[&str]| {
        Some(Remover {
            port_id: 4242,
            process: Some("(exited pid 4242)".into()),
            ancestors: ancestors.iter().map(|a| (*a).to_string()).collect(),
            identity: Identity::Exited,
        })
    };
    h.remove(11, exited(&["dhclient-script", "dhclient"]));
    h.remove(12, exited(&["bash", "sshd"]));
    h.remove(
        13,
        Some(Remover::unknown(
            4243,
            "process 4243 exited before its name was read, and its parent is unknown or gone"
                .into(),
        )),
    );
    sleep(GRACE * 2).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(12)]]);
    let snap = h.snapshot().await;
    assert_eq!(held_unknown(&snap).len(), 1, "the chainless one is held");
}

#[tokio::test(start_paused = true)]
async fn the_default_ignore_list_is_the_configs() {
    assert_eq!(
        Settings::default().ignore_removers,
        crate::config::default_ignore_removers()
    );
    // The kernel cuts comm at 15 bytes.
    assert!(rule::process_matches(
        "networkd-dispat",
        "networkd-dispatcher"
    ));
    assert!(rule::process_matches("systemd-network", "systemd-networkd"));
    assert!(!rule::process_matches("ip", "dhclient"));
}

#[tokio::test(start_paused = true)]
async fn primary_ip_is_never_released() {
    let h = start(&[11], |_| {});
    // A primary removed by itself (promote_secondaries=1 keeps the aux IP, promoted).
    h.remove_addr(addr(10, false), by("ip"));
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn clause7_migrating_waits_then_releases_when_available() {
    let h = start(&[11], |s| s.retry_cap = Duration::from_secs(2));
    h.cloud.set_ip(ip(11), |i| i.state = "MIGRATING".into());
    h.remove(11, by("ip"));
    sleep(GRACE + Duration::from_secs(10)).await;
    assert!(h.cloud.calls().is_empty());
    h.cloud.set_ip(ip(11), |i| i.state = "AVAILABLE".into());
    sleep(Duration::from_secs(5)).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(11)]]);
}

#[tokio::test(start_paused = true)]
async fn clause7_eip_bound_is_not_released_unless_configured() {
    let h = start(&[11], |_| {});
    h.cloud.set_ip(ip(11), |i| i.eip = Some("eip-1".into()));
    h.remove(11, by("ip"));
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty());

    let h = start(&[11], |s| s.with_eip = true);
    h.cloud.set_ip(ip(11), |i| i.eip = Some("eip-1".into()));
    h.remove(11, by("ip"));
    sleep(GRACE * 2).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(11)]]);
}

#[tokio::test(start_paused = true)]
async fn clause7_not_listed_is_rechecked_then_cancelled() {
    let h = start(&[11], |s| {
        s.not_listed_recheck = Duration::from_secs(20);
        s.retry_cap = Duration::from_secs(4);
    });
    h.add(addr(50, true));
    h.remove(50, by("ip"));
    sleep(GRACE + Duration::from_secs(10)).await;
    assert_eq!(h.snapshot().await.intents.len(), 1, "still re-checking");
    sleep(Duration::from_secs(30)).await;
    let snap = h.snapshot().await;
    assert!(snap.intents.is_empty());
    assert_eq!(
        snap.recent[0].outcome,
        Outcome::Cancelled(Cancel::NotListedOnEni)
    );
    assert!(h.cloud.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn dry_run_checks_everything_and_sends_nothing() {
    let h = start(&[11], |s| s.dry_run = true);
    h.remove(11, by("ip"));
    sleep(GRACE * 2).await;
    assert!(h.cloud.calls().is_empty());
    let snap = h.snapshot().await;
    assert_eq!(snap.counters.dry_run_calls, 1);
    assert_eq!(snap.recent[0].outcome, Outcome::DryRun);
    assert!(
        h.router.released.lock().expect("lock").is_empty(),
        "no routing change"
    );
}

#[tokio::test(start_paused = true)]
async fn twenty_three_removals_of_one_eni_become_three_calls() {
    let aux: Vec<u8> = (11..34).collect();
    let h = start(&aux, |s| s.burst_limit = 100);
    for n in &aux {
        h.remove(*n, by("ip"));
    }
    sleep(GRACE * 2).await;
    let calls = h.cloud.calls();
    assert_eq!(
        calls.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 10, 3]
    );
    assert_eq!(h.snapshot().await.counters.released, 23);
}

#[tokio::test(start_paused = true)]
async fn removals_coming_due_together_are_coalesced_and_isolated_ones_go_at_once() {
    let h = start(&[11, 12, 13], |s| s.coalesce = Duration::from_millis(50));
    h.remove(11, by("ip"));
    sleep(Duration::from_millis(30)).await;
    h.remove(12, by("ip"));
    sleep(Duration::from_secs(5)).await;
    h.remove(13, by("ip"));
    sleep(GRACE * 2).await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(11), ip(12)], vec![ip(13)]]);
}

/// No grace period and no burst hold: every removal is due on arrival, as in the
/// benchmark's mass release.
fn start_due_at_once(aux: &[u8]) -> Harness {
    start(aux, |s| {
        s.grace = Duration::ZERO;
        s.burst_limit = 100;
    })
}

/// Lets the engine take in what was sent and finish an (instant) send-time check,
/// without moving the paused clock.
async fn let_the_engine_run() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Call sizes, in order.
fn call_sizes(h: &Harness) -> Vec<usize> {
    h.cloud.calls().iter().map(Vec::len).collect()
}

/// With no grace period the first removals of a burst are due, and checked, before
/// the rest of the burst has arrived. Their call waits for the burst (while removals
/// keep coming less than `BURST_QUIET` apart), so a burst of 25 takes the minimum of
/// 3 calls; a lone removal goes out as soon as its check is back.
#[tokio::test(start_paused = true)]
async fn a_burst_behind_a_checked_first_removal_fills_its_call() {
    let aux: Vec<u8> = (11..36).collect();
    let h = start_due_at_once(&aux);
    h.remove(11, by("ip"));
    h.remove(12, by("ip"));
    let_the_engine_run().await;
    for n in 13..36 {
        h.remove(n, by("ip"));
    }
    sleep(Duration::from_secs(5)).await;
    assert_eq!(call_sizes(&h), vec![10, 10, 5], "{:?}", h.cloud.calls());

    // A lone removal: out within the quiet period, not after the coalescing cap.
    let h = start(&[11], |s| {
        s.grace = Duration::ZERO;
        s.coalesce = Duration::from_secs(10);
    });
    h.remove(11, by("ip"));
    let_the_engine_run().await;
    assert_eq!(h.cloud.calls(), vec![vec![ip(11)]], "no wait at all");
}

/// A check that finds more than ten sends whole calls only: the remainder waits for
/// the next check, with the removals that arrived meanwhile.
#[tokio::test(start_paused = true)]
async fn a_partial_last_call_waits_for_the_next_check() {
    let aux: Vec<u8> = (11..41).collect();
    let h = start_due_at_once(&aux);
    h.remove(11, by("ip"));
    h.remove(12, by("ip"));
    let_the_engine_run().await;
    for n in 13..22 {
        h.remove(n, by("ip"));
    }
    // The first call (10 of the 11) is out and its task runs; 19 more come.
    sleep(Duration::from_millis(5)).await;
    for n in 22..41 {
        h.remove(n, by("ip"));
    }
    sleep(Duration::from_secs(5)).await;
    assert_eq!(call_sizes(&h), vec![10, 10, 10], "{:?}", h.cloud.calls());
    assert_eq!(h.snapshot().await.counters.released, 30);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_parked_and_retried_after_reload() {
    let h = start(&[11], |_| {});
    h.cloud.set(|s| s.refuse_next = 1);
    h.remove(11, by("ip"));
    sleep(GRACE * 2).await;
    assert_eq!(h.cloud.calls().len(), 1);
    let snap = h.snapshot().await;
    assert!(
        matches!(snap.intents[0].phase, Phase::Parked { .. }),
        "parked, not dropped"
    );
    h.commands
        .send(Command::Reload(Box::default()))
        .await
        .expect("send");
    sleep(Duration::from_secs(5)).await;
    assert_eq!(h.cloud.calls().len(), 2);
    assert_eq!(h.snapshot().await.counters.released, 1);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_retried_after_the_parked_retry_period() {
    let h = start(&[11], |s| s.parked_retry = Duration::from_secs(600));
    h.cloud.set(|s| s.refuse_next = 1);
    h.remove(11, by("ip"));
    sleep(GRACE * 2).await;
    assert_eq!(h.cloud.calls().len(), 1, "refused once, parked");
    sleep(Duration::from_secs(500)).await;
    assert_eq!(h.cloud.calls().len(), 1, "not before its retry time");
    sleep(Duration::from_secs(120)).await;
    assert_eq!(h.cloud.calls().len(), 2, "retried without a reload");
    assert_eq!(h.snapshot().await.counters.released, 1);
}

/// Idle means asleep: with nothing due and no heartbeat, the loop sets no timer and
/// does not turn (every turn would be a wakeup of an otherwise idle node agent).
#[tokio::test(start_paused = true)]
async fn an_idle_engine_does_not_turn() {
    use std::sync::atomic::{AtomicU64, Ordering};

    let engine = Engine::new(
        Settings::default(),
        MemCloud::new(&[11]),
        RecordingRouter::default(),
        start_with(HostView::default(), Inventory::default()),
    );
    let (_events, events_rx) = mpsc::unbounded_channel();
    let (commands, commands_rx) = mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let turns = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&turns);
    tokio::spawn(engine.run(
        events_rx,
        commands_rx,
        shutdown.clone(),
        Box::pin(futures_util::stream::pending()),
        move || {
            counter.fetch_add(1, Ordering::SeqCst);
        },
    ));
    sleep(Duration::from_secs(6 * 3600)).await;
    assert_eq!(turns.load(Ordering::SeqCst), 0, "no turn in six idle hours");
    // Still alive: a ping is answered at once.
    let (tx, rx) = oneshot::channel();
    commands.send(Command::Ping(tx)).await.expect("send");
    rx.await.expect("answered");
    assert_eq!(turns.load(Ordering::SeqCst), 1);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_failed_task_is_retried_then_released() {
    let h = start(&[11], |s| s.retry_cap = Duration::from_secs(2));
    h.cloud.set(|s| s.fail_tasks = 1);
    h.remove(11, by("ip"));
    sleep(GRACE + Duration::from_secs(10)).await;
    assert_eq!(h.cloud.calls().len(), 2);
    assert_eq!(h.snapshot().await.counters.released, 1);
}

#[tokio::test(start_paused = true)]
async fn an_ip_back_after_its_release_raises_the_alarm() {
    let h = start(&[11], |_| {});
    h.remove(11, by("ip"));
    sleep(GRACE * 2).await;
    h.add(addr(11, true));
    sleep(Duration::from_millis(10)).await;
    let snap = h.snapshot().await;
    assert_eq!(snap.counters.alarms, 1);
    assert!(snap.alarms[0].contains("10.0.1.11"));
}

/// Policy routing covers ENI links only, so address churn elsewhere (containers on
/// bridges and veths) must not make the router dump and compare rules each time.
#[tokio::test(start_paused = true)]
async fn addresses_added_off_the_enis_do_not_reconcile_routing() {
    use std::sync::atomic::Ordering;

    let h = start(&[11], |_| {});
    let veth = Link {
        mac: Some(MacAddr([0x02, 0, 0, 0, 0, 0x99])),
        ..link(3, "veth0", true)
    };
    h.events
        .send(HostEvent::LinkChanged(veth))
        .expect("engine runs");
    sleep(Duration::from_millis(10)).await;
    let before = h.router.reconciles.load(Ordering::SeqCst);
    for last in 100..110 {
        h.add(Addr {
            link: 3,
            ..addr(last, false)
        });
    }
    sleep(Duration::from_millis(10)).await;
    assert_eq!(h.router.reconciles.load(Ordering::SeqCst), before);
    h.add(addr(50, true));
    sleep(Duration::from_millis(10)).await;
    assert_eq!(h.router.reconciles.load(Ordering::SeqCst), before + 1);
}

#[test]
fn globs() {
    assert!(glob_match("eth*", "eth1"));
    assert!(glob_match("eth?", "eth1"));
    assert!(!glob_match("eth?", "eth10"));
    assert!(glob_match("*", ""));
    assert!(!glob_match("eth*", "veth1"));
}

#[test]
fn backoff_is_jittered_and_capped() {
    for attempt in 0..40 {
        let backoff = crate::cloud::retry::Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        let d = settings::retry_delay(backoff, attempt);
        assert!(d <= Duration::from_secs(2));
        assert!(d >= Duration::from_millis(50));
    }
}

/// The watchdog contract: `tick` (which pings systemd) runs on the engine loop itself,
/// at least every heartbeat while idle, and stops when the loop is stuck.
#[tokio::test(start_paused = true)]
async fn a_stuck_loop_stops_the_ticks() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    struct HangingRouter(Arc<AtomicBool>);
    impl Router for HangingRouter {
        async fn after_release(&mut self, _: &[Ipv4Addr], _: &HostView, _: &Inventory) {}
        async fn reconcile(&mut self, _: &HostView, _: &Inventory) {
            if self.0.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
        }
        async fn plan(&mut self, _: &[Ipv4Addr], _: &HostView, _: &Inventory) -> Vec<String> {
            Vec::new()
        }
        fn set_dry_run(&mut self, _: bool) {}
    }

    let hang = Arc::new(AtomicBool::new(false));
    let engine = Engine::new(
        Settings::default(),
        MemCloud::new(&[11]),
        HangingRouter(Arc::clone(&hang)),
        start_with(HostView::default(), Inventory::default()),
    );
    let (events, events_rx) = mpsc::unbounded_channel();
    let (_commands, commands_rx) = mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let ticks = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&ticks);
    tokio::spawn(engine.run(
        events_rx,
        commands_rx,
        shutdown.clone(),
        beats(Duration::from_millis(100)),
        move || {
            counter.fetch_add(1, Ordering::SeqCst);
        },
    ));
    sleep(Duration::from_secs(1)).await;
    let idle_ticks = ticks.load(Ordering::SeqCst);
    assert!(
        idle_ticks >= 9,
        "ticks every heartbeat while idle: {idle_ticks}"
    );
    hang.store(true, Ordering::SeqCst);
    events.send(HostEvent::RoutingChanged).expect("send");
    sleep(Duration::from_millis(50)).await;
    let stuck_at = ticks.load(Ordering::SeqCst);
    sleep(Duration::from_secs(5)).await;
    assert_eq!(
        ticks.load(Ordering::SeqCst),
        stuck_at,
        "no tick while the loop is stuck"
    );
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_arms_releases_arms_routing_too() {
    let h = start(&[11], |s| s.dry_run = true);
    let armed = Settings {
        dry_run: false,
        ..harness_settings()
    };
    h.commands
        .send(Command::Reload(Box::new(armed)))
        .await
        .expect("engine runs");
    let snapshot = h.snapshot().await;
    assert!(!snapshot.dry_run, "releases armed");
    assert_eq!(
        *h.router.dry_runs.lock().expect("lock"),
        vec![false],
        "routing was told that releases are armed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pause_outlives_the_engine_and_only_resume_clears_it() {
    let dir = std::env::temp_dir().join(format!("enisync-engine-pause-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let file = crate::pause::PauseFile::new(&dir);

    let first = start_paused_in(&[11], |_| {}, Some(file.clone()));
    let (tx, rx) = oneshot::channel();
    let pause = PauseRequest {
        pause: true,
        by_uid: Some(4321),
    };
    first
        .commands
        .send(Command::Pause(pause, tx))
        .await
        .expect("engine runs");
    rx.await.expect("reply").expect("pause written");
    drop(first);

    // A new engine on the same state directory (a restart) is still paused.
    let h = start_paused_in(&[11], |_| {}, Some(file.clone()));
    let snapshot = h.snapshot().await;
    assert!(snapshot.paused, "the pause survived the restart");
    assert_eq!(snapshot.paused_by_uid, Some(4321));
    assert!(snapshot.paused_since.is_some());
    h.remove(11, by("ip"));
    sleep(GRACE * 3).await;
    assert!(h.cloud.calls().is_empty(), "nothing released while paused");

    let (tx, rx) = oneshot::channel();
    let resume = PauseRequest {
        pause: false,
        by_uid: Some(0),
    };
    h.commands
        .send(Command::Pause(resume, tx))
        .await
        .expect("engine runs");
    rx.await.expect("reply").expect("resumed");
    assert_eq!(file.load(), None, "resume removed the pause file");
    sleep(GRACE).await;
    assert_eq!(h.cloud.calls().len(), 1, "released after resume");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 12, the forgotten task: an IP whose release is in flight comes back and leaves
/// again, and the daemon restarts before the task ends. The accepted task is still
/// followed to SUCCESS after the restart: its `released` record, its route cleanup.
#[tokio::test(start_paused = true)]
async fn an_accepted_task_is_followed_to_its_end_when_its_ip_comes_back_and_leaves_again() {
    let dir = std::env::temp_dir().join(format!("enisync-engine-forgotten-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let run = |cloud: Arc<MemCloud>, view: HostView| {
        let (journal, replay) = crate::journal::Journal::open(&dir).expect("journal");
        let inventory = inventory_of(&cloud);
        spawn_engine(
            cloud,
            Settings {
                grace: GRACE,
                ..Settings::default()
            },
            Start {
                journal: Some(journal),
                replay: replay.live,
                ..start_with(view, inventory)
            },
        )
    };
    let mut view = HostView::default();
    view.links.insert(2, link(2, "eth1", true));
    view.addrs.insert(addr(10, false).key(), addr(10, false));

    let cloud = MemCloud::new(&[11]);
    let first = run(Arc::clone(&cloud), view.clone());
    first.remove(11, by("ip"));
    // Past the grace period: checked, sent, accepted; the task (50 ms) runs.
    sleep(GRACE + Duration::from_millis(10)).await;
    assert_eq!(cloud.calls(), vec![vec![ip(11)]], "the unassign went out");
    // Back on the host and gone again while the task runs: a new pending intent.
    first.add(addr(11, true));
    first.remove(11, by("ip"));
    tokio::task::yield_now().await;
    let snapshot = first.snapshot().await;
    assert!(
        snapshot
            .intents
            .iter()
            .any(|i| i.ip == ip(11) && matches!(i.phase, Phase::Releasing { .. })),
        "the accepted task is still followed: {:?}",
        snapshot.intents
    );
    // Crash (the engine stops before the task's end is seen; the file stays as is).
    drop(first);
    tokio::task::yield_now().await;

    // The restart: a new engine on the same journal, the IP still off the host.
    let second = run(Arc::clone(&cloud), view);
    sleep(Duration::from_secs(1)).await;
    let snapshot = second.snapshot().await;
    assert!(
        snapshot.recent.iter().any(|f| f.ip == ip(11)
            && f.outcome
                == Outcome::Released {
                    task_id: "1".into()
                }),
        "the journaled task was followed to SUCCESS after the restart: {:?} {:?}",
        snapshot.recent,
        snapshot.intents
    );
    assert!(
        second
            .router
            .released
            .lock()
            .expect("lock")
            .contains(&ip(11)),
        "its routing was cleaned up"
    );
    let text = std::fs::read_to_string(dir.join("intents.journal")).expect("journal");
    let released = text.lines().any(|l| {
        l.contains(r#""10.0.1.11""#) && l.contains(r#""finished""#) && l.contains(r#""released""#)
    });
    assert!(released, "no released record:\n{text}");
    assert_eq!(cloud.calls().len(), 1, "no second unassign");
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

mod golden;

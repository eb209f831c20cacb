//! The engine's decisions, driven through its real event loop with a paused clock, an
//! in-memory cloud and a recording router. This file is the harness; the tests are in
//! `tests/`, one file per concern (the rule, batching, the lifecycle of an intent,
//! operator commands, golden values). Each rule test names the clause it proves; the
//! kernel-level versions live in `tests/e2e.rs`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::cloud::{
    Attachment, CloudError, Eni, EniIp, ErrorClass, MAX_IPS_PER_CALL, MaySend, TaskStatus,
};
use crate::host::{Addr, HostEvent, Identity, Link, Remover};
use crate::net::Cidr;
use crate::net::MacAddr;
use crate::pause::PauseRequest;
use crate::task::{Protocol, TaskRef};

const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const GRACE: Duration = Duration::from_secs(30);

fn ip(last: u8) -> IpAddr {
    Ipv4Addr::new(10, 0, 1, last).into()
}

/// An in-memory cloud: one ENI with a primary IP and aux IPs; every call recorded.
#[derive(Default)]
struct MemCloud {
    state: Mutex<MemState>,
}

#[derive(Default)]
struct MemState {
    eni: Option<Eni>,
    unassigns: Vec<Vec<IpAddr>>,
    refuse_next: u32,
    /// The class and code of the next refusals (default: `Refused`,
    /// `UnauthorizedOperation`). An `AlreadyGone` answer also drops the IPs from the
    /// listing, so that the describe that follows agrees.
    refuse_with: Option<(ErrorClass, String)>,
    fail_tasks: u32,
    /// Unassigns whose task is not yet followed to its end, now and at most.
    open_calls: u32,
    max_open_calls: u32,
    /// How long a listing takes (the send-time check in flight), and how many were made.
    list_delay: Duration,
    listings: u32,
    /// Claims: the other ENIs of the VPC (a peer's, a stranger's) ...
    others: Vec<Eni>,
    /// ... the calls made: `(source, destination, ip)` and `(eni, ip, token)` ...
    migrates: Vec<(String, String, Ipv4Addr)>,
    migrate_times: Vec<tokio::time::Instant>,
    assigns: Vec<(String, Ipv4Addr, String)>,
    /// ... holder lookups, and the code the next Migrate or Assign fails with.
    lookups: u32,
    claim_fail_next: Option<String>,
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

    fn calls(&self) -> Vec<Vec<IpAddr>> {
        self.state.lock().expect("lock").unassigns.clone()
    }

    fn set(&self, f: impl FnOnce(&mut MemState)) {
        f(&mut self.state.lock().expect("lock"));
    }

    fn set_ip(&self, addr: IpAddr, f: impl FnOnce(&mut EniIp)) {
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
        let delay = {
            let mut s = self.state.lock().expect("lock");
            s.listings += 1;
            s.list_delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
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
        ips: &[IpAddr],
        may_send: MaySend<'_>,
    ) -> Result<TaskRef, CloudError> {
        if !may_send() {
            return Err(CloudError::not_sent("UnassignPrivateIpAddresses"));
        }
        assert!(
            ips.len() <= MAX_IPS_PER_CALL,
            "the engine never sends more than ten"
        );
        let mut s = self.state.lock().expect("lock");
        s.unassigns.push(ips.to_vec());
        s.open_calls += 1;
        s.max_open_calls = s.max_open_calls.max(s.open_calls);
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

    async fn claim_holders(&self, vpc_id: &str, ip: Ipv4Addr) -> Result<Vec<Eni>, CloudError> {
        let mut s = self.state.lock().expect("lock");
        s.lookups += 1;
        Ok(s.eni
            .iter()
            .chain(s.others.iter())
            .filter(|e| e.vpc_id == vpc_id && e.ip(IpAddr::V4(ip)).is_some())
            .cloned()
            .collect())
    }

    async fn claim_migrate(
        &self,
        src_eni: &str,
        dst_eni: &str,
        ip: Ipv4Addr,
        may_send: MaySend<'_>,
    ) -> Result<TaskRef, CloudError> {
        if !may_send() {
            return Err(CloudError::not_sent("MigratePrivateIpAddress"));
        }
        let mut guard = self.state.lock().expect("lock");
        let s = &mut *guard;
        s.migrates.push((src_eni.into(), dst_eni.into(), ip));
        s.migrate_times.push(tokio::time::Instant::now());
        if let Some(code) = s.claim_fail_next.take() {
            return Err(claim_error("MigratePrivateIpAddress", &code));
        }
        let addr = IpAddr::V4(ip);
        let mut moved = None;
        for eni in s.eni.iter_mut().chain(s.others.iter_mut()) {
            if eni.id == src_eni
                && let Some(pos) = eni.ips.iter().position(|i| i.addr == addr)
            {
                moved = Some(eni.ips.remove(pos));
            }
        }
        let Some(entry) = moved else {
            return Err(claim_error("MigratePrivateIpAddress", "ResourceNotFound"));
        };
        for eni in s.eni.iter_mut().chain(s.others.iter_mut()) {
            if eni.id == dst_eni {
                eni.ips.push(entry.clone());
            }
        }
        Ok(TaskRef {
            task_id: format!("migrate-{}", s.migrates.len()),
            request_id: None,
            protocol: Protocol::V3,
        })
    }

    async fn claim_assign(
        &self,
        eni_id: &str,
        ip: Ipv4Addr,
        token: &crate::cloud::client::ClientToken,
        may_send: MaySend<'_>,
    ) -> Result<TaskRef, CloudError> {
        if !may_send() {
            return Err(CloudError::not_sent("AssignPrivateIpAddresses"));
        }
        let mut s = self.state.lock().expect("lock");
        s.assigns.push((eni_id.into(), ip, token.to_string()));
        if let Some(code) = s.claim_fail_next.take() {
            return Err(claim_error("AssignPrivateIpAddresses", &code));
        }
        if let Some(eni) = s.eni.as_mut().filter(|e| e.id == eni_id) {
            eni.ips.push(EniIp {
                addr: IpAddr::V4(ip),
                primary: false,
                state: "AVAILABLE".into(),
                eip: None,
            });
        }
        Ok(TaskRef {
            task_id: format!("assign-{}", s.assigns.len()),
            request_id: None,
            protocol: Protocol::V3,
        })
    }

    async fn wait_task(&self, task: &TaskRef) -> Result<TaskStatus, CloudError> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.set(|s| s.open_calls = s.open_calls.saturating_sub(1));
        Ok(if task.task_id.starts_with("fail-") {
            TaskStatus::Failed
        } else {
            TaskStatus::Success
        })
    }
}

/// A cloud answer to a claim call.
fn claim_error(action: &'static str, code: &str) -> CloudError {
    CloudError::new(
        action,
        crate::cloud::classify::TencentCode::Code(code),
        "from the in-memory cloud",
        None,
    )
}

#[derive(Clone, Default)]
struct RecordingRouter {
    released: Arc<Mutex<Vec<IpAddr>>>,
    reconciles: Arc<std::sync::atomic::AtomicUsize>,
    /// Every `set_dry_run` the engine made, in order.
    dry_runs: Arc<Mutex<Vec<bool>>>,
    /// Read at every reconcile, when set (what else had happened by then).
    probe: Arc<Mutex<Option<ReconcileProbe>>>,
    probed: Arc<Mutex<Vec<u32>>>,
}

type ReconcileProbe = Box<dyn Fn() -> u32 + Send>;

impl Router for RecordingRouter {
    async fn after_release(&mut self, released: &[IpAddr], _: &HostView, _: &Inventory) {
        self.released
            .lock()
            .expect("lock")
            .extend_from_slice(released);
    }
    async fn reconcile(&mut self, _: &HostView, _: &Inventory) {
        self.reconciles
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(probe) = self.probe.lock().expect("lock").as_ref() {
            self.probed.lock().expect("lock").push(probe());
        }
    }
    async fn plan(&mut self, releasing: &[IpAddr], _: &HostView, _: &Inventory) -> Vec<String> {
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
    /// Turns of the engine loop (its `tick`): each is a wakeup.
    turns: Arc<std::sync::atomic::AtomicU64>,
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
        v6: None,
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
    let turns = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = Arc::clone(&turns);
    tokio::spawn(engine.run(
        events_rx,
        commands_rx,
        shutdown.clone(),
        Box::pin(futures_util::stream::pending()),
        move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        },
    ));
    Harness {
        cloud,
        router,
        events,
        commands,
        turns,
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

    /// `enisync pause` (or `resume`), answered.
    async fn pause(&self, pause: bool) {
        let (tx, rx) = oneshot::channel();
        let request = PauseRequest {
            pause,
            by_uid: Some(0),
        };
        self.commands
            .send(Command::Pause(request, tx))
            .await
            .expect("engine runs");
        rx.await.expect("reply").expect("pause applied");
    }

    /// Turns of the engine loop so far.
    fn turns(&self) -> u64 {
        self.turns.load(std::sync::atomic::Ordering::SeqCst)
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

async fn release_held(h: &Harness) -> usize {
    let (tx, rx) = oneshot::channel();
    h.commands
        .send(Command::ReleaseHeld(tx))
        .await
        .expect("send");
    rx.await.expect("reply")
}

mod batching;
mod by_hand;
mod claim_keys;
mod claims;
mod golden;
mod lifecycle;
mod operator;
mod rule;

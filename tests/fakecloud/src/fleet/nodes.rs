//! The fleet's machinery: one hub namespace with a bridge and the fake cloud, one
//! namespace per node with its two ENI links, one enisync daemon per node, their logs
//! read as they come, their CPU and memory from /proc.
//!
//! Node `i`: namespace `efl-<i>`; `eth0` (the primary ENI, `172.31.x.y/16`, the address
//! the fake's metadata service knows the instance by) is a veth whose peer sits on the
//! hub's bridge; `eth1` (a secondary ENI, `10.<100+i/256>.<i%256>.10/24` plus the aux
//! IPs from `.11`) is a veth whose peer stays in the node namespace (carrier, no traffic).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enisync_fakecloud::{FakeCloud, FakeEni, FakeInstance, FakeServer};

pub const HUB: &str = "efl-hub";
pub const SECRET_ID: &str = "AKIDfleetEXAMPLEfleetEXAMPLEfleet01";
pub const SECRET_KEY: &str = "fleetEXAMPLEkeyfleetEXAMPLEkey01";
pub const REGION: &str = "ap-guangzhou";
const HUB_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);

/// Runs a command, failing loudly.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip -batch` of `script`, in `ns` (or the initial namespace).
pub fn ip_batch(ns: Option<&str>, script: &str) {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-force", "-batch", "-"]).stdin(Stdio::piped());
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ip");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write batch");
    let out = child.wait_with_output().expect("ip -batch");
    assert!(
        out.status.success(),
        "ip -batch in {ns:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Node `i`'s names and addresses.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub index: usize,
    pub ns: String,
    pub instance: String,
    pub eni_primary: String,
    pub eni: String,
    pub primary_ip: Ipv4Addr,
    pub mac0: String,
    pub mac1: String,
    /// The secondary ENI's subnet prefix `10.a.b`.
    pub prefix: String,
}

impl NodeSpec {
    pub fn new(index: usize) -> Self {
        let host = u32::try_from(index + 10).expect("index");
        let hi = u8::try_from(index / 256).expect("at most 65k nodes");
        let lo = u8::try_from(index % 256).expect("byte");
        Self {
            index,
            ns: format!("efl-{index}"),
            instance: format!("ins-fl{index:06}"),
            eni_primary: format!("eni-p{index:07}"),
            eni: format!("eni-s{index:07}"),
            primary_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 31, 0, 0)) + host),
            mac0: format!("52:54:10:{hi:02x}:{lo:02x}:00"),
            mac1: format!("52:54:10:{hi:02x}:{lo:02x}:01"),
            prefix: format!("10.{}.{lo}", 100 + u32::from(hi)),
        }
    }

    /// The floating IP (VIP) node `n` claims with `--claims`: on its secondary ENI and
    /// `eth1` from the start, so each node holds one claimed address that it re-verifies.
    pub fn vip(&self) -> Ipv4Addr {
        format!("{}.200", self.prefix).parse().expect("VIP")
    }

    /// Aux IP `k` (0-based) of the secondary ENI.
    pub fn aux(&self, k: usize) -> Ipv4Addr {
        format!("{}.{}", self.prefix, 11 + k)
            .parse()
            .expect("aux IP")
    }
}

/// Builds the hub (bridge + fake cloud listener) and every node's namespace and links.
pub fn build_network(nodes: &[NodeSpec], aux: usize) -> TcpListener {
    teardown_network(nodes.len() + 64);
    run(Command::new("ip").args(["netns", "add", HUB]));
    ip_batch(
        Some(HUB),
        &format!(
            "link set lo up\nlink add br0 type bridge\nlink set br0 up\naddr add {HUB_IP}/16 dev br0\n"
        ),
    );
    let mut root = String::new();
    for n in nodes {
        run(Command::new("ip").args(["netns", "add", &n.ns]));
        root += &format!(
            "link add h{i} netns {HUB} type veth peer name eth0 address {mac} netns {ns}\n",
            i = n.index,
            mac = n.mac0,
            ns = n.ns
        );
    }
    ip_batch(None, &root);
    let mut hub = String::new();
    for n in nodes {
        hub += &format!("link set h{i} master br0\nlink set h{i} up\n", i = n.index);
        let mut s = format!(
            "link set lo up\nlink set eth0 up\naddr add {}/16 dev eth0\n\
             link add eth1 address {} type veth peer name p1\nlink set p1 up\nlink set eth1 up\n\
             addr add {}.10/24 dev eth1\n",
            n.primary_ip, n.mac1, n.prefix
        );
        for k in 0..aux {
            s += &format!("addr add {}/24 dev eth1\n", n.aux(k));
        }
        ip_batch(Some(&n.ns), &s);
    }
    ip_batch(Some(HUB), &hub);
    in_ns(HUB, || {
        TcpListener::bind((HUB_IP, 80)).expect("bind the fake in the hub")
    })
}

/// Removes every namespace this tool may have made (`efl-*`).
pub fn teardown_network(_hint: usize) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let script: String = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("efl-"))
        .map(|name| format!("netns del {name}\n"))
        .collect();
    if script.is_empty() {
        return;
    }
    if let Ok(mut child) = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(script.as_bytes());
        }
        let _ = child.wait();
    }
}

/// Runs `f` on a thread that entered network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on a valid namespace fd changes only this thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

/// The fake's world for the fleet: per node an instance, its primary ENI and one
/// secondary ENI with `aux` IPs (and the node's VIP with `claims`).
pub fn populate(cloud: &FakeCloud, nodes: &[NodeSpec], aux: usize, claims: bool) {
    cloud.add_key(SECRET_ID, SECRET_KEY);
    for n in nodes {
        cloud
            .add_instance(FakeInstance::new(&n.instance, REGION).source_ip(n.primary_ip.into()))
            .expect("instance");
        cloud
            .add_eni(
                FakeEni::new(
                    &n.eni_primary,
                    &n.mac0,
                    "vpc-fleet",
                    "subnet-hub",
                    "172.31.0.0/16",
                    n.primary_ip,
                )
                .attached(&n.instance, 0)
                .primary_eni(),
            )
            .expect("primary eni");
        cloud
            .add_eni(
                FakeEni::new(
                    &n.eni,
                    &n.mac1,
                    "vpc-fleet",
                    format!("subnet-{}", n.index),
                    format!("{}.0/24", n.prefix),
                    format!("{}.10", n.prefix).parse().expect("ip"),
                )
                .attached(&n.instance, 1)
                .secondaries((0..aux).map(|k| n.aux(k)).chain(claims.then(|| n.vip()))),
            )
            .expect("secondary eni");
    }
}

/// Puts node `n`'s aux IPs back in the cloud (those it lost) and on the host, and its
/// VIP on the host with `claims`.
pub fn restore_ips(cloud: &FakeCloud, n: &NodeSpec, aux: usize, claims: bool) {
    let have = cloud.ips_of(&n.eni);
    let mut script = String::new();
    for k in 0..aux {
        let ip = n.aux(k);
        if !have.contains(&ip) {
            cloud.add_secondary_ip(&n.eni, ip).expect("re-add IP");
        }
        script += &format!("addr replace {ip}/24 dev eth1\n");
    }
    if claims {
        script += &format!("addr replace {}/24 dev eth1\n", n.vip());
    }
    ip_batch(Some(&n.ns), &script);
}

/// What the daemons said that the fleet measures, with when it was read.
#[derive(Debug, Default)]
pub struct Events {
    /// Node → when it said it was ready (the last time).
    pub ready: BTreeMap<usize, Instant>,
    /// (node, IP) → when its release was confirmed, and how many times.
    pub released: BTreeMap<(usize, Ipv4Addr), (Instant, u32)>,
    /// Lines with `WARN`/`ERROR` per node (counted, the first few kept).
    pub warnings: BTreeMap<usize, u32>,
    pub samples: Vec<String>,
}

pub type SharedEvents = Arc<Mutex<Events>>;

/// One running daemon.
#[derive(Debug)]
pub struct Daemon {
    pub child: Child,
}

/// Writes node `n`'s config; `extra` lines go to `[release]`; with `claims`, its VIP is
/// a claim address (the defaults otherwise, `claim.reverify_interval` among them).
pub fn write_config(
    dir: &Path,
    n: &NodeSpec,
    server: &FakeServer,
    release: &[String],
    claims: bool,
) -> PathBuf {
    let node_dir = dir.join(&n.ns);
    std::fs::create_dir_all(node_dir.join("state")).expect("node dir");
    let config = format!(
        "[cloud]\nendpoint = \"{v3}\"\nv3_endpoint = \"{v3}\"\nregion = \"{REGION}\"\n\
         allow_plain_http = true\nsecret_id = \"{SECRET_ID}\"\nsecret_key = \"{SECRET_KEY}\"\n\n\
         [metadata]\nendpoint = \"{meta}\"\n\n[release]\n{release}\n\n[state]\ndir = \"{state}\"\n\n\
         [control]\nsocket = \"{sock}\"\n\n[log]\nlevel = \"info\"\nformat = \"plain\"\n{claim}",
        v3 = server.v3_endpoint(),
        meta = server.metadata_endpoint(),
        release = release.join("\n"),
        state = node_dir.join("state").display(),
        sock = node_dir.join("enisync.sock").display(),
        claim = if claims {
            format!(
                "\n[claim]\ncidrs = [\"{}/32\"]\npeers = [\"{}\"]\n",
                n.vip(),
                n.instance
            )
        } else {
            String::new()
        },
    );
    let path = node_dir.join("enisync.toml");
    std::fs::write(&path, config).expect("config");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// Starts node `n`'s daemon; a thread reads its log into `events`.
pub fn spawn(binary: &Path, n: &NodeSpec, config: &Path, events: &SharedEvents) -> Daemon {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &n.ns])
        .arg(binary)
        .args(["run", "--config"])
        .arg(config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn enisync");
    let stderr = child.stderr.take().expect("stderr");
    let events = Arc::clone(events);
    let index = n.index;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let now = Instant::now();
            let mut ev = events.lock().unwrap_or_else(|e| e.into_inner());
            if line.contains("enisync ready") {
                ev.ready.insert(index, now);
            } else if let Some(at) = line.find("IPs returned to the VPC: ") {
                let ip = line[at + "IPs returned to the VPC: ".len()..]
                    .split_whitespace()
                    .next()
                    .and_then(|w| w.parse::<Ipv4Addr>().ok());
                if let Some(ip) = ip {
                    let e = ev.released.entry((index, ip)).or_insert((now, 0));
                    e.1 += 1;
                }
            } else if line.contains(" WARN ")
                || line.contains(" ERROR ")
                || line.starts_with("enisync:")
            {
                *ev.warnings.entry(index).or_default() += 1;
                if ev.samples.len() < 12 {
                    ev.samples.push(format!("node {index}: {line}"));
                }
            }
        }
    });
    Daemon { child }
}

/// Stops daemons with SIGTERM and waits for them (SIGKILL after 15 s).
pub fn stop_all(daemons: &mut Vec<Daemon>) {
    for d in daemons.iter() {
        if let Ok(pid) = i32::try_from(d.child.id()) {
            // SAFETY: kill(2) on the pid of a child we started and have not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for d in daemons.iter_mut() {
        loop {
            match d.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = d.child.kill();
                    let _ = d.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    daemons.clear();
}

/// CPU time (user + system) and resident memory of a process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStat {
    pub cpu: Duration,
    pub rss_kib: u64,
}

pub fn proc_stat(pid: u32) -> ProcStat {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is field 3; utime 14, stime 15 (1-based).
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    let cpu_ticks = ticks(11) + ticks(12);
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    ProcStat {
        cpu: Duration::from_millis(cpu_ticks * 1000 / hz),
        rss_kib,
    }
}

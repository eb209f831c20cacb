//! A sandboxed "CVM" for end-to-end tests: a network namespace of its own with ENI-like
//! veth links and aux IPs, a fake Tencent Cloud listening inside that namespace, and the
//! real `enisync` binary running there under `ip netns exec`.
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for `ip netns`). Without it every test
//! fails loudly: a test that cannot run must never pass.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enisync_fakecloud::{Call, FakeCloud, FakeEni, FakeInstance, FakeIpv6, FakeServer};

/// The sandbox daemon's `log.level`; tests that raise it replace this exact text.
pub const LOG_LEVEL: &str = "info,enisync=debug,audit=debug";

pub const SECRET_ID: &str = "AKIDsandboxEXAMPLE";
pub const SECRET_KEY: &str = "sandboxSecretKeyEXAMPLE";
pub const INSTANCE: &str = "ins-sandbox1";
pub const ENI0: &str = "eni-primary0";
pub const ENI1: &str = "eni-second01";
pub const MAC0: &str = "52:54:00:00:00:01";
pub const MAC1: &str = "52:54:00:12:34:56";

/// The secondary ENI's primary IP; aux IPs are 10.0.1.11 and up.
pub const ENI1_PRIMARY: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);

pub fn aux(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, n)
}

/// An IPv6 aux address of eth1 / ENI1: `2402:4e00:1::<n>` (hex), prefix /64.
pub fn aux6(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2402, 0x4e00, 1, 0, 0, 0, 0, n)
}

/// ENI1's primary IPv6 address, on eth1 and listed `Primary` when `aux6` is not empty.
pub const ENI1_PRIMARY6: u16 = 0x10;

/// The spelling the fake cloud lists `ip` in: every group with leading zeros, no `::`,
/// so that only a 128-bit comparison matches it with the host's.
pub fn spelled_long(ip: Ipv6Addr) -> String {
    ip.segments()
        .iter()
        .map(|s| format!("{s:04x}"))
        .collect::<Vec<_>>()
        .join(":")
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command and panics with its output when it fails.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a sandbox looks like before `enisync` starts.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Aux IPs (last octet) configured on eth1 and assigned in the cloud.
    pub aux: Vec<u8>,
    /// IPv6 aux addresses ([`aux6`]) configured on eth1 (permanent, `nodad`) and listed
    /// in the cloud's `Ipv6AddressSet` of ENI1 (spelled long); when not empty, ENI1's
    /// primary IPv6 address [`ENI1_PRIMARY6`] is there too.
    pub aux6: Vec<u16>,
    /// Extra `[section]` TOML appended to the config (after the generated sections,
    /// so it may only add sections the generator does not write).
    pub extra_config: String,
    /// Overrides for `[release]` keys, as TOML lines.
    pub release: Vec<String>,
    /// Overrides for `[cloud]` keys.
    pub cloud: Vec<String>,
    /// `routing.mode`.
    pub routing_mode: &'static str,
    pub task_ms: u64,
    /// Release through the legacy API (listing still goes through API 3.0).
    pub legacy: bool,
    /// `log.format` (`auto` when unset).
    pub log_format: Option<&'static str>,
    /// Write `secret_id`/`secret_key` into `[cloud]` (default); off to test the other
    /// credential sources.
    pub config_keys: bool,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            aux: (11..=15).collect(),
            aux6: Vec::new(),
            extra_config: String::new(),
            release: vec![],
            cloud: vec![],
            routing_mode: "cleanup",
            task_ms: 150,
            legacy: false,
            log_format: None,
            config_keys: true,
        }
    }
}

/// ENI1's `Ipv6AddressSet` for a layout: its primary and the aux addresses, spelled
/// long.
trait Ipv6Entries {
    fn ipv6_entries(self, aux: &[u16]) -> Self;
}

impl Ipv6Entries for FakeEni {
    fn ipv6_entries(mut self, aux: &[u16]) -> Self {
        if aux.is_empty() {
            return self;
        }
        let mut primary = FakeIpv6::new(aux6(ENI1_PRIMARY6));
        primary.primary = true;
        self = self.ipv6_entry(primary);
        for a in aux {
            let mut entry = FakeIpv6::new(aux6(*a));
            entry.spelling = Some(spelled_long(entry.addr));
            self = self.ipv6_entry(entry);
        }
        self
    }
}

/// One sandboxed instance.
pub struct Sandbox {
    pub ns: String,
    pub fake: FakeCloud,
    pub server: FakeServer,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    /// Extra environment for the daemon (set before `start`).
    pub env: Vec<(String, String)>,
    /// A command the daemon's `ip netns exec …` is handed to as arguments (set before
    /// `start`), e.g. a shell that changes the mount namespace first.
    pub wrap: Vec<String>,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    /// Every line of every run, across restarts.
    all_log: Arc<Mutex<Vec<String>>>,
    /// When armed: the log reader kills enisync (SIGKILL) on the first line holding all
    /// of these, within microseconds of the line being written.
    kill_on: Arc<Mutex<Option<Vec<String>>>>,
}

impl Sandbox {
    /// Builds the namespace, links, addresses and the fake cloud; writes the config.
    pub fn new(tag: &str, layout: Layout) -> Self {
        assert!(
            unsafe_free_is_root(),
            "end-to-end tests need root (network namespaces); run them as root, as CI does"
        );
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let ns = format!("es{}-{tag}-{n}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        sh(Command::new("ip").args(["netns", "add", &ns]));
        let sb_dir = std::env::temp_dir().join(format!("enisync-e2e-{ns}"));
        let _ = std::fs::remove_dir_all(&sb_dir);
        std::fs::create_dir_all(&sb_dir).expect("sandbox dir");

        let mut script = String::from("link set lo up\n");
        // eth0: the primary ENI; eth1: a secondary ENI. Each veth's peer stays in the
        // namespace so the link has carrier.
        for (name, peer, mac, addr) in [
            ("eth0", "peer0", MAC0, "10.0.0.10/24"),
            ("eth1", "peer1", MAC1, "10.0.1.10/24"),
        ] {
            script += &format!("link add {name} address {mac} type veth peer name {peer}\n");
            script +=
                &format!("link set {peer} up\nlink set {name} up\naddr add {addr} dev {name}\n");
        }
        for a in &layout.aux {
            script += &format!("addr add 10.0.1.{a}/24 dev eth1\n");
        }
        if !layout.aux6.is_empty() {
            for a in std::iter::once(&ENI1_PRIMARY6).chain(&layout.aux6) {
                script += &format!("addr add {}/64 dev eth1 nodad\n", aux6(*a));
            }
        }
        let sandbox_ns = ns.clone();
        let batch = sb_dir.join("setup.batch");
        std::fs::write(&batch, script).expect("write batch");
        sh(Command::new("ip")
            .args(["-n", &sandbox_ns, "-batch"])
            .arg(&batch));

        let fake = FakeCloud::new();
        fake.add_key(SECRET_ID, SECRET_KEY);
        fake.set_task_duration(Duration::from_millis(layout.task_ms));
        fake.add_instance(FakeInstance::new(INSTANCE, "ap-guangzhou"))
            .expect("instance");
        fake.add_eni(
            FakeEni::new(
                ENI0,
                MAC0,
                "vpc-sandbox",
                "subnet-0",
                "10.0.0.0/24",
                Ipv4Addr::new(10, 0, 0, 10),
            )
            .attached(INSTANCE, 0)
            .primary_eni(),
        )
        .expect("eni0");
        fake.add_eni(
            FakeEni::new(
                ENI1,
                MAC1,
                "vpc-sandbox",
                "subnet-1",
                "10.0.1.0/24",
                ENI1_PRIMARY,
            )
            .attached(INSTANCE, 1)
            .secondaries(layout.aux.iter().map(|a| aux(*a)))
            .ipv6_entries(&layout.aux6),
        )
        .expect("eni1");
        let listener = listener_in(&ns);
        let server = fake.serve_in_thread(listener).expect("serve fake cloud");

        let mut cloud = vec![
            format!("endpoint = \"{}\"", server.v3_endpoint()),
            format!("v3_endpoint = \"{}\"", server.v3_endpoint()),
            "region = \"ap-guangzhou\"".into(),
            // The fake serves plain HTTP inside the namespace.
            "allow_plain_http = true".into(),
        ];
        if layout.config_keys {
            cloud.push(format!("secret_id = \"{SECRET_ID}\""));
            cloud.push(format!("secret_key = \"{SECRET_KEY}\""));
        }
        if layout.legacy {
            cloud.push("api = \"legacy\"".into());
            cloud[0] = format!("endpoint = \"{}\"", server.legacy_endpoint());
        }
        // Later keys win by replacing earlier ones with the same name.
        for over in &layout.cloud {
            let key = over.split('=').next().unwrap_or("").trim();
            cloud.retain(|l| l.split('=').next().unwrap_or("").trim() != key);
            cloud.push(over.clone());
        }
        let mut release = vec![
            "grace = \"300ms\"".to_string(),
            "coalesce = \"20ms\"".into(),
        ];
        for over in &layout.release {
            let key = over.split('=').next().unwrap_or("").trim();
            release.retain(|l| l.split('=').next().unwrap_or("").trim() != key);
            release.push(over.clone());
        }
        let config = format!(
            "[cloud]\n{}\n\n[metadata]\nendpoint = \"{}\"\n\n[release]\n{}\n\n[routing]\nmode = \"{}\"\n\n[state]\ndir = \"{}\"\n\n[control]\nsocket = \"{}\"\n\n[log]\nlevel = \"{}\"\nformat = \"{}\"\n{}\n",
            cloud.join("\n"),
            server.metadata_endpoint(),
            release.join("\n"),
            layout.routing_mode,
            sb_dir.join("state").display(),
            sb_dir.join("enisync.sock").display(),
            LOG_LEVEL,
            layout.log_format.unwrap_or("auto"),
            layout.extra_config,
        );
        let config_path = sb_dir.join("enisync.toml");
        std::fs::write(&config_path, config).expect("write config");
        std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        Self {
            ns,
            fake,
            server,
            dir: sb_dir,
            config_path,
            env: Vec::new(),
            wrap: Vec::new(),
            child: None,
            log: Arc::default(),
            all_log: Arc::default(),
            kill_on: Arc::default(),
        }
    }

    /// Runs the daemon in its namespace without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN
    /// (`setpriv` inside `ip netns exec`, which needs CAP_SYS_ADMIN itself): the IPv6
    /// deletion probe cannot load on any kernel, a real failure rather than a switch, and
    /// `status` always carries its warning.
    pub fn without_bpf(&mut self) {
        self.wrap = [
            "sh",
            "-c",
            "ns=$4; shift 4; exec ip netns exec \"$ns\" setpriv \
             --inh-caps=-bpf,-perfmon,-sys_admin --bounding-set=-bpf,-perfmon,-sys_admin \"$@\"",
            "sh",
        ]
        .map(String::from)
        .to_vec();
    }

    /// Starts `enisync run` in the namespace and waits until it says it is ready. The
    /// log starts afresh with each start.
    pub fn start(&mut self) {
        self.spawn();
        self.wait_log("enisync ready", Duration::from_secs(20));
    }

    /// Starts `enisync run` without waiting for it to be ready.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "enisync is already running");
        self.log.lock().expect("log").clear();
        let mut child = self
            .run_command()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn enisync");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::clone(&self.log);
        let all_log = Arc::clone(&self.all_log);
        let kill_on = Arc::clone(&self.kill_on);
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                {
                    let mut armed = kill_on.lock().expect("kill_on");
                    if armed
                        .as_ref()
                        .is_some_and(|needles| needles.iter().all(|n| line.contains(n.as_str())))
                    {
                        // SAFETY: kill(2) on the pid of our own child, which we have not
                        // reaped yet (so the pid cannot have been reused).
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                        *armed = None;
                    }
                }
                all_log.lock().expect("log").push(line.clone());
                log.lock().expect("log").push(line);
            }
        });
        self.child = Some(child);
    }

    /// `ip netns exec <ns> enisync run --config <path>`, without RUST_LOG (the config's
    /// `log.level` applies), for the caller to finish and spawn.
    pub fn run_command(&self) -> Command {
        let mut cmd = match self.wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg("ip");
                c
            }
            None => Command::new("ip"),
        };
        cmd.args([
            "netns",
            "exec",
            &self.ns,
            env!("CARGO_BIN_EXE_enisync"),
            "run",
            "--config",
        ])
        .arg(&self.config_path)
        .env_remove("RUST_LOG");
        cmd
    }

    /// Runs `enisync run` to its end (for start-up refusals).
    pub fn run_to_exit(&self) -> std::process::Output {
        self.run_command().output().expect("run enisync")
    }

    /// The control socket of this sandbox's enisync.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("enisync.sock")
    }

    /// Runs the enisync CLI (host side) against this sandbox's daemon.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_enisync"))
            .args(args)
            .arg("--socket")
            .arg(self.socket())
            .output()
            .expect("run the enisync CLI")
    }

    /// `GET path` on 127.0.0.1:`port` inside the namespace: (status, body).
    pub fn http_get(&self, port: u16, path: &str) -> (u16, String) {
        self.try_http_get(port, path)
            .expect("HTTP GET in the sandbox")
    }

    /// Like [`Sandbox::http_get`], `None` when nothing listens yet.
    pub fn try_http_get(&self, port: u16, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let ns_path = format!("/var/run/netns/{}", self.ns);
        let mut stream = std::thread::spawn(move || {
            let file = std::fs::File::open(&ns_path).expect("open netns");
            // SAFETY: setns affects only this short-lived thread, which connects one
            // socket and exits; the socket keeps the namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            std::net::TcpStream::connect(("127.0.0.1", port))
        })
        .join()
        .expect("connect thread")
        .ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    }

    /// enisync's pid while it runs (`ip netns exec` execs it, so the child is enisync).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (a `kill` name: `HUP`, `TERM`, `KILL`) to enisync.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("enisync is running").to_string();
        sh(Command::new("kill").args([&format!("-{signal}"), &pid]));
    }

    /// Arms a `kill -9` on the first log line holding every one of `needles`.
    pub fn arm_kill_on(&self, needles: &[&str]) {
        *self.kill_on.lock().expect("kill_on") =
            Some(needles.iter().map(|n| (*n).to_owned()).collect());
    }

    /// Waits (bounded) until enisync has died, after an armed kill; panics if it lives on.
    pub fn wait_dead(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("enisync was started");
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                *self.kill_on.lock().expect("kill_on") = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!(
            "enisync still alive after {timeout:?} (kill armed on {:?}); log:\n{}",
            self.kill_on.lock().expect("kill_on"),
            self.log_text()
        );
    }

    /// `kill -9`, and waits for the process to be gone.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("enisync is running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether enisync has exited (and how), without waiting.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Stops with SIGTERM; returns the status and how long the exit took. Panics if it
    /// takes longer than `limit` (the process is then killed).
    pub fn stop_within(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let mut child = self.child.take().expect("enisync is running");
        let started = Instant::now();
        sh(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        while started.elapsed() < limit {
            if let Ok(Some(status)) = child.try_wait() {
                return (status, started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "enisync did not stop within {limit:?} of SIGTERM; log:\n{}",
            self.log_text()
        );
    }

    /// Every log line of every run so far.
    pub fn all_log_text(&self) -> String {
        self.all_log.lock().expect("log").join("\n")
    }

    /// How many lines of this run's log contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log_lines()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until `cond` holds, checking every 20 ms; panics with `what` and the log on
    /// timeout.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if cond() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The journal file's text (empty when absent).
    pub fn journal_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("state").join("intents.journal")).unwrap_or_default()
    }

    /// Rewrites the config file through `edit`.
    pub fn edit_config(&self, edit: impl FnOnce(&str) -> String) {
        let text = std::fs::read_to_string(&self.config_path).expect("read config");
        std::fs::write(&self.config_path, edit(&text)).expect("write config");
    }

    /// Unassign calls the cloud accepted (answer `Success`).
    pub fn accepted_unassigns(&self) -> Vec<Call> {
        self.unassigns()
            .into_iter()
            .filter(|c| c.answer == "Success")
            .collect()
    }

    /// Stops enisync with SIGTERM and waits for it (bounded).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // `ip netns exec` execs the binary, so the child's pid is enisync's.
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &str) -> String {
        sh(Command::new("ip")
            .arg("-n")
            .arg(&self.ns)
            .args(args.split_whitespace()))
    }

    /// Runs a batch of `ip` commands in one process (as fast as the kernel takes them).
    pub fn ip_batch(&self, lines: &[String]) {
        let path = self
            .dir
            .join(format!("batch-{}", COUNTER.fetch_add(1, Ordering::SeqCst)));
        std::fs::write(&path, lines.join("\n") + "\n").expect("write batch");
        sh(Command::new("ip")
            .args(["-n", &self.ns, "-batch"])
            .arg(&path));
    }

    /// A shell command inside the namespace.
    pub fn exec(&self, script: &str) -> String {
        sh(Command::new("ip").args(["netns", "exec", &self.ns, "sh", "-c", script]))
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    pub fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }

    /// Waits for a log line containing `needle`; panics with the log on timeout.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_lines().iter().any(|l| l.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "no log line with {needle:?} within {timeout:?}; log:\n{}",
            self.log_text()
        );
    }

    /// Unassign calls the fake cloud received (both protocols).
    pub fn unassigns(&self) -> Vec<Call> {
        self.fake.calls_of("UnassignPrivateIpAddresses")
    }

    /// Waits until `n` unassign calls arrived and every task finished.
    pub fn wait_unassigns(&self, n: usize, timeout: Duration) -> Vec<Call> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let calls = self.unassigns();
            if calls.len() >= n {
                return calls;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "expected {n} unassign calls within {timeout:?}, got {:?}; log:\n{}",
            self.unassigns(),
            self.log_text()
        );
    }

    /// Lets a quiet period pass (long enough for any release to have gone out) and
    /// asserts no unassign was sent.
    pub fn assert_no_unassign_for(&self, quiet: Duration) {
        std::thread::sleep(quiet);
        let calls = self.unassigns();
        assert!(
            calls.is_empty(),
            "unexpected unassign calls: {calls:?}\nlog:\n{}",
            self.log_text()
        );
    }

    pub fn ips_in_cloud(&self) -> Vec<Ipv4Addr> {
        self.fake.ips_of(ENI1)
    }

    pub fn ipv6_in_cloud(&self) -> Vec<Ipv6Addr> {
        self.fake.ipv6_of(ENI1)
    }

    /// `UnassignIpv6Addresses` calls the fake cloud received.
    pub fn unassigns6(&self) -> Vec<Call> {
        self.fake.calls_of("UnassignIpv6Addresses")
    }

    /// Waits until `n` IPv6 unassign calls arrived.
    pub fn wait_unassigns6(&self, n: usize, timeout: Duration) -> Vec<Call> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let calls = self.unassigns6();
            if calls.len() >= n {
                return calls;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "expected {n} UnassignIpv6Addresses calls within {timeout:?}, got {:?}; log:\n{}",
            self.unassigns6(),
            self.log_text()
        );
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop();
        self.server.stop();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Binds a TCP listener on 127.0.0.1 inside the namespace `ns`: a thread enters the
/// namespace, binds, and hands the socket back. A socket keeps the namespace it was
/// created in, so the fake cloud serves inside the sandbox from this process.
pub fn listener_in(ns: &str) -> TcpListener {
    in_ns(ns, || {
        TcpListener::bind("127.0.0.1:0").expect("bind in namespace")
    })
    .join()
    .expect("listener thread")
}

/// Runs `f` on a thread that entered the network namespace `ns`: sockets it creates stay
/// in that namespace after the thread ends.
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

fn unsafe_free_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

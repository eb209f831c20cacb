//! keepalived: two "instances" (network namespaces `a` and `b`), each
//! with its own enisync and its own ENI in ONE fake cloud, joined by a bridge that lives
//! in a third namespace, where the fake listens (10.0.1.1) and answers metadata by the
//! caller's source address. keepalived (Debian package) runs in each instance in unicast
//! mode (VPCs have no multicast), with a VIP that is an aux IP.
//!
//! The notify scripts are two lines of bash that hand "master" to a helper the test runs
//! inside the same namespace (a thread that entered it); the helper speaks to the fake's
//! API 3.0, signed with `enisync::cloud::sign`, from that namespace, as the recipe's
//! script would. Two recipes:
//! - **migrate**: the new master calls `MigratePrivateIpAddress` (Tencent's recipe);
//! - **assign**: the new master waits (polling `DescribeNetworkInterfaces`) until the old
//!   master's enisync has released the VIP, then calls `AssignPrivateIpAddresses`.
//!
//! With claims (`Duo::enable_claims`), there is no notify script at all: each node's
//! enisync claims the VIP when keepalived adds it (docs/design.md, "Claims").
//!
//! Needs root and `keepalived` (CI installs it); fails, never skips, without them.

#[path = "common/sandbox.rs"]
mod sandbox;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enisync::cloud::sign::{Tc3Request, tc3_sign};
use enisync_fakecloud::{FakeCloud, FakeEni, FakeInstance, FakeServer};
use sandbox::{in_ns, sh};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const SECRET_ID: &str = "AKIDduoEXAMPLE";
const SECRET_KEY: &str = "duoSecretKeyEXAMPLE";
const REGION: &str = "ap-guangzhou";

static COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recipe {
    Migrate,
    Assign,
}

/// One instance: a namespace with eth0 (its ENI) on the bridge.
struct Node {
    name: &'static str,
    ns: String,
    ip: Ipv4Addr,
    /// The other node's address (its `unicast_peer`).
    peer: Ipv4Addr,
    eni: &'static str,
    priority: u8,
    enisync: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    keepalived: Option<Child>,
    /// What the notify helper did, one line per takeover.
    notes: Arc<Mutex<Vec<String>>>,
    helper_port: u16,
}

struct Duo {
    br: String,
    dir: PathBuf,
    fake: FakeCloud,
    server: FakeServer,
    a: Node,
    b: Node,
    advert_int: u32,
    /// enisync claims the VIP itself (`[claim]`): keepalived runs without a notify script.
    claims: bool,
}

fn ip_ns(ns: &str, args: &str) -> String {
    sh(Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace()))
}

impl Duo {
    fn new(tag: &str, recipe: Option<Recipe>, grace: &str, advert_int: u32) -> Self {
        assert!(
            Command::new("keepalived").arg("--version").output().is_ok(),
            "keepalived is not installed (CI: apt-get install -y keepalived)"
        );
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = format!("ka{}{tag}{n}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("enisync-{base}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let br = format!("{base}-br");
        for ns in [&br, &format!("{base}-a"), &format!("{base}-b")] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(Command::new("ip").args(["netns", "add", ns]));
            ip_ns(ns, "link set lo up");
        }
        ip_ns(&br, "link add br0 type bridge");
        ip_ns(&br, "link set br0 up");
        ip_ns(&br, &format!("addr add {GATEWAY}/24 dev br0"));
        let fake = FakeCloud::new();
        fake.add_key(SECRET_ID, SECRET_KEY);
        fake.set_task_duration(Duration::from_millis(300));
        let specs = [
            (
                "a",
                Ipv4Addr::new(10, 0, 1, 10),
                "eni-nodea001",
                "52:54:00:aa:00:01",
                150u8,
            ),
            (
                "b",
                Ipv4Addr::new(10, 0, 1, 20),
                "eni-nodeb001",
                "52:54:00:bb:00:01",
                100u8,
            ),
        ];
        let mut nodes = Vec::new();
        for (name, ip, eni, mac, priority) in specs {
            let ns = format!("{base}-{name}");
            ip_ns(
                &br,
                &format!("link add v{name} type veth peer name eth0 netns {ns}"),
            );
            ip_ns(&br, &format!("link set v{name} master br0"));
            ip_ns(&br, &format!("link set v{name} up"));
            ip_ns(&ns, &format!("link set eth0 address {mac}"));
            ip_ns(&ns, &format!("addr add {ip}/24 dev eth0"));
            ip_ns(&ns, "link set eth0 up");
            let instance = format!("ins-node{name}");
            fake.add_instance(FakeInstance::new(&instance, REGION).source_ip(ip.into()))
                .expect("instance");
            let mut spec = FakeEni::new(eni, mac, "vpc-duo", "subnet-duo", "10.0.1.0/24", ip)
                .attached(&instance, 0)
                .primary_eni();
            if name == "a" {
                spec = spec.secondaries([VIP]);
            }
            fake.add_eni(spec).expect("eni");
            nodes.push(Node {
                name,
                ns,
                ip,
                peer: Ipv4Addr::UNSPECIFIED,
                eni,
                priority,
                enisync: None,
                log: Arc::default(),
                keepalived: None,
                notes: Arc::default(),
                helper_port: 0,
            });
        }
        let listener = in_ns(&br, || TcpListener::bind((GATEWAY, 0)).expect("bind"))
            .join()
            .expect("listener");
        let server = fake.serve_in_thread(listener).expect("serve");
        let mut b = nodes.pop().expect("b");
        let mut a = nodes.pop().expect("a");
        a.peer = b.ip;
        b.peer = a.ip;
        let mut duo = Self {
            br,
            dir,
            fake,
            server,
            a,
            b,
            advert_int,
            claims: false,
        };
        let port = duo.server.addr().port();
        for node in [&mut duo.a, &mut duo.b] {
            write_config(&duo.dir, node, port, grace);
            node.helper_port = start_helper(node, port, recipe, duo.fake.clone());
        }
        duo
    }

    fn start_enisync(&mut self) {
        for node in [&mut self.a, &mut self.b] {
            let config = self.dir.join(format!("{}.toml", node.name));
            let mut child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &node.ns,
                    env!("CARGO_BIN_EXE_enisync"),
                    "run",
                    "--config",
                ])
                .arg(&config)
                .env_remove("RUST_LOG")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn enisync");
            let stderr = child.stderr.take().expect("stderr");
            let log = Arc::clone(&node.log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().expect("log").push(line);
                }
            });
            node.enisync = Some(child);
        }
        for node in [&self.a, &self.b] {
            wait(
                &format!("{}: enisync ready", node.name),
                Duration::from_secs(20),
                || {
                    node.log
                        .lock()
                        .expect("log")
                        .iter()
                        .any(|l| l.contains("enisync ready"))
                },
                || self.logs(),
            );
        }
    }

    fn start_keepalived(&self, node: &mut Node) {
        let conf = self.dir.join(format!("keepalived-{}.conf", node.name));
        // The node's own record, not `self.a`/`self.b`: the caller may have taken the
        // node out of `self` (then a placeholder, 0.0.0.0, stands there).
        let peer = node.peer;
        let notify = self.dir.join(format!("notify-{}.sh", node.name));
        // With claims, no notify script at all: enisync sees the VIP added and claims it.
        let notify_line = if self.claims {
            String::new()
        } else {
            format!("  notify_master \"{}\"\n", notify.display())
        };
        std::fs::write(
            &notify,
            format!(
                "#!/bin/bash\nexec 3<>/dev/tcp/127.0.0.1/{}\necho master >&3\nread -t 60 reply <&3\n",
                node.helper_port
            ),
        )
        .expect("notify script");
        std::fs::set_permissions(&notify, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n  router_id node-{name}\n  script_user root\n}}\n\
                 vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  \
                 priority {prio}\n  advert_int {adv}\n  unicast_src_ip {src}\n  unicast_peer {{\n    {peer}\n  }}\n  \
                 virtual_ipaddress {{\n    {VIP}/24 dev eth0\n  }}\n{notify_line}}}\n",
                name = node.name,
                prio = node.priority,
                adv = self.advert_int,
                src = node.ip,
            ),
        )
        .expect("keepalived.conf");
        let d = &self.dir;
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &node.ns,
                "keepalived",
                "-n",
                "-l",
                "-D",
                "-G",
                "-P",
                "-f",
            ])
            .arg(&conf)
            .arg(format!(
                "--pid={}",
                d.join(format!("ka-{}.pid", node.name)).display()
            ))
            .arg(format!(
                "--vrrp_pid={}",
                d.join(format!("vrrp-{}.pid", node.name)).display()
            ))
            .stdout(
                std::fs::File::create(d.join(format!("keepalived-{}.log", node.name)))
                    .expect("log"),
            )
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn keepalived");
        node.keepalived = Some(child);
    }

    /// Stops a node's keepalived with SIGTERM (it removes the VIP, and tells the peer).
    fn stop_keepalived(node: &mut Node) {
        if let Some(mut child) = node.keepalived.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn has_vip(node: &Node) -> bool {
        ip_ns(&node.ns, "-4 addr show dev eth0").contains(&format!("{VIP}/"))
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for node in [&self.a, &self.b] {
            out += &format!(
                "--- enisync {} ---\n{}\n",
                node.name,
                node.log.lock().expect("log").join("\n")
            );
            out += &format!(
                "--- keepalived {} ---\n{}\n",
                node.name,
                std::fs::read_to_string(self.dir.join(format!("keepalived-{}.log", node.name)))
                    .unwrap_or_default()
            );
            out += &format!(
                "--- notify {} ---\n{:?}\n",
                node.name,
                node.notes.lock().expect("notes")
            );
        }
        out += "--- cloud calls ---\n";
        for call in self.fake.calls() {
            if call.surface != enisync_fakecloud::Surface::Metadata {
                out += &call.summary();
                out.push('\n');
            }
        }
        out
    }

    /// No call failed the fake's checks (signature, key, parameters); in a split brain
    /// a Migrate may still lose a race (`ResourceNotFound`, a busy ENI).
    fn assert_no_call_failed_checks(&self) {
        let failed: Vec<String> = self
            .fake
            .calls()
            .iter()
            .filter(|c| {
                [
                    "AuthFailure",
                    "InvalidParameter",
                    "MissingParameter",
                    "UnknownParameter",
                ]
                .iter()
                .any(|p| c.answer.starts_with(p))
            })
            .map(|c| c.summary())
            .collect();
        assert!(
            failed.is_empty(),
            "calls failed the fake's checks: {failed:?}"
        );
    }

    /// Every mutating call answered Success: no call failed for a race.
    fn assert_no_failed_mutation(&self) {
        let failed: Vec<String> = self
            .fake
            .calls()
            .iter()
            .filter(|c| {
                matches!(
                    c.action.as_str(),
                    "UnassignPrivateIpAddresses"
                        | "AssignPrivateIpAddresses"
                        | "MigratePrivateIpAddress"
                ) && c.answer != "Success"
            })
            .map(|c| c.summary())
            .collect();
        assert!(
            failed.is_empty(),
            "calls failed: {failed:?}\n{}",
            self.logs()
        );
        let failed_tasks: Vec<_> = self
            .fake
            .tasks()
            .into_iter()
            .filter(|t| t.status == enisync_fakecloud::FakeTaskStatus::Failed)
            .collect();
        assert!(failed_tasks.is_empty(), "{failed_tasks:?}");
    }

    /// Brings both up: enisync, then keepalived on both; `a` (higher priority) ends up
    /// master with the VIP.
    fn bring_up(&mut self) {
        self.start_enisync();
        let mut a = std::mem::replace(&mut self.a, placeholder());
        let mut b = std::mem::replace(&mut self.b, placeholder());
        self.start_keepalived(&mut a);
        self.start_keepalived(&mut b);
        self.a = a;
        self.b = b;
        let limit = Duration::from_secs(u64::from(self.advert_int) * 5 + 10);
        wait(
            "a is master with the VIP",
            limit,
            || Self::has_vip(&self.a),
            || self.logs(),
        );
        assert!(!Self::has_vip(&self.b));
    }

    /// Turns claims on: each node's enisync claims the VIP (`[claim]`, the other node as
    /// its peer), keepalived gets no notify script.
    fn enable_claims(&mut self, settle: &str, holdoff: &str) {
        self.enable_claims_with(settle, holdoff, "");
    }

    /// [`Self::enable_claims`] with more `[claim]` lines.
    fn enable_claims_with(&mut self, settle: &str, holdoff: &str, extra: &str) {
        self.claims = true;
        for (node, peer) in [(&self.a, &self.b), (&self.b, &self.a)] {
            let path = self.dir.join(format!("{}.toml", node.name));
            let mut config = std::fs::read_to_string(&path).expect("config");
            config += &format!(
                "\n[claim]\ncidrs = [\"{VIP}/32\"]\npeers = [\"ins-node{}\"]\nsettle = \"{settle}\"\n\
                 startup_holdoff = \"{holdoff}\"\nreverify_interval = \"5s\"\n{extra}",
                peer.name
            );
            std::fs::write(&path, config).expect("config");
        }
    }

    /// Drops VRRP between the two nodes, or lets it through again: their bridge ports
    /// are isolated from each other (the fake, on the bridge itself, stays reachable).
    fn block_vrrp(&self, blocked: bool) {
        let state = if blocked { "on" } else { "off" };
        for port in ["va", "vb"] {
            ip_ns(
                &self.br,
                &format!("link set dev {port} type bridge_slave isolated {state}"),
            );
        }
    }

    /// Starts both enisync and both keepalived, asserting nothing about who is master.
    fn start_all(&mut self) {
        self.start_enisync();
        let mut a = std::mem::replace(&mut self.a, placeholder());
        let mut b = std::mem::replace(&mut self.b, placeholder());
        self.start_keepalived(&mut a);
        self.start_keepalived(&mut b);
        self.a = a;
        self.b = b;
    }

    /// The Migrates into `node`'s ENI, with the time the fake saw each (ms).
    fn migrates_into(&self, node: &Node) -> Vec<i64> {
        self.fake
            .calls_of("MigratePrivateIpAddress")
            .iter()
            .filter(|c| c.eni.as_deref().is_some_and(|e| e.ends_with(node.eni)))
            .map(|c| c.at_ms)
            .collect()
    }

    /// Where the fake binds the VIP: exactly one ENI, `AVAILABLE`.
    fn vip_bound_to(&self, node: &Node) -> bool {
        self.fake.owner_of(VIP).as_deref() == Some(node.eni)
            && self.fake.eni(node.eni).is_some_and(|e| {
                e.ips
                    .iter()
                    .any(|i| i.addr == VIP && i.state == "AVAILABLE")
            })
            && [&self.a, &self.b]
                .iter()
                .filter(|n| self.fake.eni(n.eni).is_some_and(|e| e.ip(VIP).is_some()))
                .count()
                == 1
    }

    fn restart_a_keepalived(&mut self) {
        let mut a = std::mem::replace(&mut self.a, placeholder());
        Self::stop_keepalived(&mut a);
        self.start_keepalived(&mut a);
        self.a = a;
    }
}

fn placeholder() -> Node {
    Node {
        name: "",
        ns: String::new(),
        ip: Ipv4Addr::UNSPECIFIED,
        peer: Ipv4Addr::UNSPECIFIED,
        eni: "",
        priority: 0,
        enisync: None,
        log: Arc::default(),
        keepalived: None,
        notes: Arc::default(),
        helper_port: 0,
    }
}

impl Drop for Duo {
    fn drop(&mut self) {
        for node in [&mut self.a, &mut self.b] {
            Duo::stop_keepalived(node);
            if let Some(mut child) = node.enisync.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.server.stop();
        for ns in [self.a.ns.clone(), self.b.ns.clone(), self.br.clone()] {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool, logs: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_config(dir: &std::path::Path, node: &Node, port: u16, grace: &str) {
    let base = format!("http://{GATEWAY}:{port}");
    let config = format!(
        "[cloud]\nendpoint = \"{base}/\"\nv3_endpoint = \"{base}/\"\nregion = \"{REGION}\"\n\
         allow_plain_http = true\n\
         secret_id = \"{SECRET_ID}\"\nsecret_key = \"{SECRET_KEY}\"\n\n\
         [metadata]\nendpoint = \"{base}/latest/meta-data/\"\n\n\
         [release]\ngrace = \"{grace}\"\n\n[routing]\nmode = \"cleanup\"\n\n\
         [state]\ndir = \"{}\"\n\n[control]\nsocket = \"{}\"\n\n\
         [log]\nlevel = \"info,enisync=debug\"\n",
        dir.join(format!("state-{}", node.name)).display(),
        // The two nodes share one filesystem: each needs its own control socket.
        dir.join(format!("{}.sock", node.name)).display()
    );
    let path = dir.join(format!("{}.toml", node.name));
    std::fs::write(&path, config).expect("config");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// The notify helper: listens on 127.0.0.1 inside the node's namespace; each "master"
/// line from the notify script runs the recipe against the fake's API (from inside the
/// namespace), then answers. Returns the port.
fn start_helper(node: &Node, api_port: u16, recipe: Option<Recipe>, fake: FakeCloud) -> u16 {
    let notes = Arc::clone(&node.notes);
    let eni = node.eni;
    let (tx, rx) = std::sync::mpsc::channel();
    in_ns(&node.ns, move || {
        let listener = TcpListener::bind("127.0.0.1:0").expect("helper bind");
        tx.send(listener.local_addr().expect("addr").port())
            .expect("port");
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            let api = Api { port: api_port };
            let note = match recipe {
                None => "no recipe".to_owned(),
                Some(r) => api
                    .take_over(r, eni)
                    .unwrap_or_else(|e| format!("error: {e}")),
            };
            let _ = fake.calls().len(); // keeps the fake alive as long as the helper
            notes.lock().expect("notes").push(note.clone());
            let _ = writeln!(stream, "{note}");
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("helper port")
}

/// A minimal API 3.0 client over a plain TCP socket of the current namespace.
struct Api {
    port: u16,
}

impl Api {
    fn call(&self, action: &str, body: &serde_json::Value) -> Result<serde_json::Value, String> {
        let host = format!("{GATEWAY}:{}", self.port);
        let payload = body.to_string();
        let timestamp = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| e.to_string())?
                .as_secs(),
        )
        .map_err(|e| e.to_string())?;
        let content_type = "application/json";
        let signature = tc3_sign(
            &Tc3Request {
                method: "POST",
                host: &host,
                query: "",
                content_type,
                payload: payload.as_bytes(),
                service: "vpc",
                timestamp,
            },
            SECRET_KEY,
        );
        let request = format!(
            "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nX-TC-Action: {action}\r\n\
             X-TC-Version: 2017-03-12\r\nX-TC-Timestamp: {timestamp}\r\nX-TC-Region: {REGION}\r\n\
             Authorization: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            signature.authorization(SECRET_ID, "vpc"),
            payload.len()
        );
        let mut stream = TcpStream::connect((GATEWAY, self.port)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .map_err(|e| e.to_string())?;
        let body = reply.split("\r\n\r\n").nth(1).ok_or("no body")?;
        // The fake may answer chunked: take the JSON object inside.
        let start = body.find('{').ok_or("no JSON")?;
        let end = body.rfind('}').ok_or("no JSON")?;
        let value: serde_json::Value =
            serde_json::from_str(&body[start..=end]).map_err(|e| e.to_string())?;
        let response = value["Response"].clone();
        if let Some(code) = response["Error"]["Code"].as_str() {
            return Err(format!("{action}: {code}"));
        }
        Ok(response)
    }

    /// The ENI that holds the VIP now, if any.
    fn holder(&self) -> Result<Option<String>, String> {
        let r = self.call(
            "DescribeNetworkInterfaces",
            &serde_json::json!({"Filters": [{"Name": "address-ip", "Values": [VIP.to_string()]}]}),
        )?;
        Ok(r["NetworkInterfaceSet"]
            .as_array()
            .and_then(|s| s.first())
            .and_then(|e| e["NetworkInterfaceId"].as_str())
            .map(str::to_owned))
    }

    fn wait_task(&self, task: &str) -> Result<(), String> {
        for _ in 0..200 {
            let r = self.call(
                "DescribeVpcTaskResult",
                &serde_json::json!({"TaskId": task}),
            )?;
            match r["Status"].as_str() {
                Some("SUCCESS") => return Ok(()),
                Some("FAILED") => return Err(format!("task {task} FAILED")),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        Err(format!("task {task} still running"))
    }

    fn take_over(&self, recipe: Recipe, own: &str) -> Result<String, String> {
        match recipe {
            Recipe::Migrate => match self.holder()? {
                Some(h) if h == own => Ok("already ours".into()),
                Some(h) => {
                    let r = self.call(
                        "MigratePrivateIpAddress",
                        &serde_json::json!({
                            "SourceNetworkInterfaceId": h,
                            "DestinationNetworkInterfaceId": own,
                            "PrivateIpAddress": VIP.to_string(),
                        }),
                    )?;
                    self.wait_task(r["RequestId"].as_str().ok_or("no RequestId")?)?;
                    Ok(format!("migrated from {h}"))
                }
                None => Err("nobody holds the VIP".into()),
            },
            Recipe::Assign => {
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    match self.holder()? {
                        Some(h) if h == own => return Ok("already ours".into()),
                        None => break,
                        Some(_) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        Some(h) => return Err(format!("{h} never released the VIP")),
                    }
                }
                let r = self.call(
                    "AssignPrivateIpAddresses",
                    &serde_json::json!({
                        "NetworkInterfaceId": own,
                        "PrivateIpAddresses": [{"PrivateIpAddress": VIP.to_string()}],
                    }),
                )?;
                self.wait_task(r["RequestId"].as_str().ok_or("no RequestId")?)?;
                Ok("assigned after the release".into())
            }
        }
    }
}

fn takeover(recipe: Recipe, tag: &str) {
    let mut duo = Duo::new(tag, Some(recipe), "3s", 1);
    duo.bring_up();
    assert_eq!(duo.fake.owner_of(VIP).as_deref(), Some(duo.a.eni));
    // The master fails: its keepalived stops (the VIP leaves a's host, b takes over).
    let mut a = std::mem::replace(&mut duo.a, placeholder());
    Duo::stop_keepalived(&mut a);
    duo.a = a;
    wait(
        "b is master with the VIP",
        Duration::from_secs(20),
        || Duo::has_vip(&duo.b),
        || duo.logs(),
    );
    wait(
        "the VIP on b's ENI in the cloud",
        Duration::from_secs(60),
        || {
            duo.fake.owner_of(VIP).as_deref() == Some(duo.b.eni)
                && duo.fake.eni(duo.b.eni).is_some_and(|e| {
                    e.ips
                        .iter()
                        .any(|i| i.addr == VIP && i.state == "AVAILABLE")
                })
        },
        || duo.logs(),
    );
    // Past a's grace period and any re-check: nothing else happens.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        duo.fake.owner_of(VIP).as_deref(),
        Some(duo.b.eni),
        "{}",
        duo.logs()
    );
    assert!(!Duo::has_vip(&duo.a));
    duo.assert_no_failed_mutation();
    let unassigns = duo.fake.calls_of("UnassignPrivateIpAddresses").len();
    match recipe {
        Recipe::Migrate => assert_eq!(unassigns, 0, "migrated, never released:\n{}", duo.logs()),
        Recipe::Assign => assert_eq!(
            unassigns,
            1,
            "released once by a's enisync:\n{}",
            duo.logs()
        ),
    }
    // a's enisync saw keepalived remove the VIP and named it: keepalived's netlink
    // port is not its pid, and an unknown remover would be held.
    let a_log = duo.a.log.lock().expect("log").join("\n");
    let vip_line = a_log
        .lines()
        .find(|l| {
            l.contains(&format!("ip={VIP} "))
                && (l.contains("decision=\"pending\"") || l.contains("decision=\"held\""))
        })
        .unwrap_or_else(|| panic!("a's enisync saw no removal of the VIP:\n{}", duo.logs()));
    assert!(
        vip_line.contains("decision=\"pending\"") && vip_line.contains("remover=\"keepalived"),
        "the VIP's removal is identified as keepalived's: {vip_line}"
    );
    println!("{recipe:?}: a's removal: {vip_line}");
    println!(
        "{recipe:?}: b's notify: {:?}",
        duo.b.notes.lock().expect("notes")
    );
}

#[test]
fn takeover_by_migrate() {
    takeover(Recipe::Migrate, "m");
}

#[test]
fn takeover_by_assign_after_release() {
    takeover(Recipe::Assign, "s");
}

/// keepalived restarted on the master: the VIP drops and comes back (b holds it on its
/// host meanwhile; no notify recipe, so the cloud keeps it on a's ENI and only the
/// grace period stands between a's enisync and a wrong release). With the default grace
/// period (30 s), nothing is ever released. (`KA_TEST_GRACE=3s` shows the test fails
/// when the grace is shorter than the restart.)
fn restart_releases_nothing(advert_int: u32, tag: &str) {
    let grace = std::env::var("KA_TEST_GRACE").unwrap_or_else(|_| "30s".into());
    let mut duo = Duo::new(tag, None, &grace, advert_int);
    duo.bring_up();
    wait(
        "the VIP on a's ENI",
        Duration::from_secs(20),
        || duo.fake.owner_of(VIP).as_deref() == Some(duo.a.eni),
        || duo.logs(),
    );
    let restarted = Instant::now();
    duo.restart_a_keepalived();
    wait(
        "the VIP back on a (preempted)",
        Duration::from_secs(u64::from(advert_int) * 6 + 20),
        || Duo::has_vip(&duo.a) && !Duo::has_vip(&duo.b),
        || duo.logs(),
    );
    let back_after = restarted.elapsed();
    // Past the 30 s grace period of every removal the restart caused, and the checks.
    let until = restarted + Duration::from_secs(36);
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    let unassigns = duo.fake.calls_of("UnassignPrivateIpAddresses");
    assert!(
        unassigns.is_empty(),
        "released: {unassigns:?}\n{}",
        duo.logs()
    );
    wait(
        "the VIP on a's ENI again",
        Duration::from_secs(10),
        || duo.fake.owner_of(VIP).as_deref() == Some(duo.a.eni),
        || duo.logs(),
    );
    duo.assert_no_failed_mutation();
    let a_log = duo.a.log.lock().expect("log").join("\n");
    assert!(
        a_log.contains("back on the host within the grace period"),
        "a's enisync saw the VIP leave and come back:\n{}",
        duo.logs()
    );
    println!(
        "advert_int {advert_int}: VIP back on a {back_after:?} after the restart; nothing released"
    );
}

#[test]
fn keepalived_restart_releases_nothing_advert_1() {
    restart_releases_nothing(1, "r1");
}

#[test]
fn keepalived_restart_releases_nothing_advert_3() {
    restart_releases_nothing(3, "r3");
}

/// Claims, no notify script (docs/design.md, "Claims"): the master's enisync sees
/// keepalived add the VIP and, after `claim.settle`, migrates it from the peer's ENI.
/// Failover by stopping the master, then failback when it comes back (it preempts).
/// At each end the fake binds the VIP to exactly the node that holds it, nothing is
/// released, and no call failed.
#[test]
fn claims_failover_and_failback_without_a_notify_script() {
    let mut duo = Duo::new("cf", None, "30s", 1);
    duo.enable_claims("3s", "0s");
    duo.bring_up();
    // The master's own claim finds the VIP already on its ENI: no call.
    wait(
        "a's enisync claimed the VIP it holds",
        Duration::from_secs(20),
        || {
            duo.a
                .log
                .lock()
                .expect("log")
                .iter()
                .any(|l| l.contains("decision=\"claimed\"") && l.contains(&format!("ip={VIP}")))
        },
        || duo.logs(),
    );
    assert!(duo.vip_bound_to(&duo.a), "{}", duo.logs());
    assert!(
        duo.fake.calls_of("MigratePrivateIpAddress").is_empty(),
        "{}",
        duo.logs()
    );

    // Failover: a's keepalived stops, b becomes master and adds the VIP.
    let mut a = std::mem::replace(&mut duo.a, placeholder());
    Duo::stop_keepalived(&mut a);
    duo.a = a;
    wait(
        "b is master with the VIP",
        Duration::from_secs(20),
        || Duo::has_vip(&duo.b),
        || duo.logs(),
    );
    wait(
        "the VIP bound to b's ENI",
        Duration::from_secs(30),
        || duo.vip_bound_to(&duo.b),
        || duo.logs(),
    );
    assert_eq!(duo.fake.calls_of("MigratePrivateIpAddress").len(), 1);
    let b_log = duo.b.log.lock().expect("log").join("\n");
    assert!(
        b_log.contains("adder=\"keepalived"),
        "b's enisync named keepalived as the adder:\n{}",
        duo.logs()
    );

    // Failback: a's keepalived comes back with the higher priority and preempts.
    let mut a = std::mem::replace(&mut duo.a, placeholder());
    duo.start_keepalived(&mut a);
    duo.a = a;
    wait(
        "a is master again",
        Duration::from_secs(30),
        || Duo::has_vip(&duo.a) && !Duo::has_vip(&duo.b),
        || duo.logs(),
    );
    wait(
        "the VIP bound to a's ENI again",
        Duration::from_secs(30),
        || duo.vip_bound_to(&duo.a),
        || duo.logs(),
    );
    // Past the re-verifications of both nodes: it stays, nobody fights.
    std::thread::sleep(Duration::from_secs(12));
    assert!(duo.vip_bound_to(&duo.a), "{}", duo.logs());
    assert_eq!(
        duo.fake.calls_of("MigratePrivateIpAddress").len(),
        2,
        "{}",
        duo.logs()
    );
    assert!(
        duo.fake.calls_of("UnassignPrivateIpAddresses").is_empty(),
        "a claim address is never released:\n{}",
        duo.logs()
    );
    duo.assert_no_failed_mutation();
    for node in [&duo.a, &duo.b] {
        let log = node.log.lock().expect("log").join("\n");
        assert!(
            !log.contains("decision=\"contested\""),
            "{}: no contest in a clean failover:\n{}",
            node.name,
            duo.logs()
        );
    }
}

/// keepalived restarted on the master with claims on: the VIP leaves a and comes back
/// (b holds it for a moment, less than `claim.settle`): no Migrate, no release.
#[test]
fn claims_master_restart_within_settle_claims_and_releases_nothing() {
    let mut duo = Duo::new("cr", None, "30s", 1);
    duo.enable_claims("10s", "0s");
    duo.bring_up();
    wait(
        "a's enisync claimed the VIP it holds",
        Duration::from_secs(20),
        || {
            duo.a
                .log
                .lock()
                .expect("log")
                .iter()
                .any(|l| l.contains("decision=\"claimed\""))
        },
        || duo.logs(),
    );
    let restarted = Instant::now();
    duo.restart_a_keepalived();
    wait(
        "the VIP back on a (preempted)",
        Duration::from_secs(20),
        || Duo::has_vip(&duo.a) && !Duo::has_vip(&duo.b),
        || duo.logs(),
    );
    println!("VIP back on a {:?} after the restart", restarted.elapsed());
    // Past b's settle time and both nodes' re-verifications.
    std::thread::sleep(Duration::from_secs(15));
    assert!(
        duo.fake.calls_of("MigratePrivateIpAddress").is_empty(),
        "{}",
        duo.logs()
    );
    assert!(
        duo.fake.calls_of("UnassignPrivateIpAddresses").is_empty(),
        "{}",
        duo.logs()
    );
    assert!(duo.vip_bound_to(&duo.a), "{}", duo.logs());
    duo.assert_no_failed_mutation();
}

/// Both nodes start with VRRP blocked for 20 s: each becomes MASTER and adds the VIP,
/// but no Migrate goes out within `claim.startup_holdoff` (default 60 s). Once VRRP
/// flows, b steps down and the VIP stays where it was.
#[test]
fn claims_a_node_started_with_vrrp_blocked_makes_no_migrate() {
    let mut duo = Duo::new("cb", None, "30s", 1);
    duo.enable_claims("3s", "60s");
    duo.block_vrrp(true);
    duo.start_all();
    wait(
        "both nodes are MASTER (no VRRP between them)",
        Duration::from_secs(20),
        || Duo::has_vip(&duo.a) && Duo::has_vip(&duo.b),
        || duo.logs(),
    );
    std::thread::sleep(Duration::from_secs(14));
    duo.block_vrrp(false);
    wait(
        "b steps down once VRRP flows",
        Duration::from_secs(20),
        || Duo::has_vip(&duo.a) && !Duo::has_vip(&duo.b),
        || duo.logs(),
    );
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        duo.fake.calls_of("MigratePrivateIpAddress").is_empty(),
        "{}",
        duo.logs()
    );
    let b_log = duo.b.log.lock().expect("log").join("\n");
    assert!(
        b_log.contains("reason=\"startup_holdoff\""),
        "b's claim waited for the hold-off:\n{}",
        duo.logs()
    );
    assert!(duo.vip_bound_to(&duo.a), "{}", duo.logs());
    duo.assert_no_failed_mutation();
}

/// Split brain: VRRP dropped for 120 s, both nodes MASTER with the VIP. Migrates stay
/// within `max_migrations_per_minute` (3) per node in any minute, both nodes raise the
/// `contested` alarm, and once VRRP flows again the binding converges to the master.
#[test]
fn claims_split_brain_is_bounded_alarms_on_both_and_converges() {
    let mut duo = Duo::new("cx", None, "30s", 1);
    duo.enable_claims_with(
        "3s",
        "0s",
        "contest_backoff = \"5s\"\ncontest_backoff_max = \"20s\"\nmax_migrations_per_minute = 3\n",
    );
    duo.bring_up();
    wait(
        "a's enisync claimed the VIP it holds",
        Duration::from_secs(20),
        || {
            duo.a
                .log
                .lock()
                .expect("log")
                .iter()
                .any(|l| l.contains("decision=\"claimed\""))
        },
        || duo.logs(),
    );
    duo.block_vrrp(true);
    let split = Instant::now();
    wait(
        "b is MASTER too",
        Duration::from_secs(20),
        || Duo::has_vip(&duo.b),
        || duo.logs(),
    );
    std::thread::sleep(Duration::from_secs(120).saturating_sub(split.elapsed()));
    duo.block_vrrp(false);
    wait(
        "b steps down once VRRP flows",
        Duration::from_secs(20),
        || Duo::has_vip(&duo.a) && !Duo::has_vip(&duo.b),
        || duo.logs(),
    );
    wait(
        "the binding converges to a",
        Duration::from_secs(60),
        || duo.vip_bound_to(&duo.a),
        || duo.logs(),
    );
    for node in [&duo.a, &duo.b] {
        let times = duo.migrates_into(node);
        for (i, t) in times.iter().enumerate() {
            let within = times[i..].iter().take_while(|u| **u - t < 60_000).count();
            assert!(
                within <= 3,
                "{}: {within} Migrates within a minute {times:?}\n{}",
                node.name,
                duo.logs()
            );
        }
        let log = node.log.lock().expect("log").join("\n");
        assert!(
            log.contains("decision=\"contested\""),
            "{} raised the contested alarm:\n{}",
            node.name,
            duo.logs()
        );
    }
    let total = duo.fake.calls_of("MigratePrivateIpAddress").len();
    println!("split brain of 120 s: {total} Migrates in all");
    // Settled: nobody moves it any more.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(
        duo.fake.calls_of("MigratePrivateIpAddress").len(),
        total,
        "{}",
        duo.logs()
    );
    assert!(duo.vip_bound_to(&duo.a), "{}", duo.logs());
    duo.assert_no_call_failed_checks();
}

/// Claims, no notify script: failover by the master's link going down. a's eth0 goes
/// down in its namespace; b hears no adverts, becomes MASTER and claims the VIP from a's
/// ENI. a's enisync releases nothing (the VIP left a down link, and a claim address is
/// never released). At the end of each phase the fake binds the VIP to exactly the node
/// that holds it and no call failed. Link up again: a preempts and the binding follows
/// it back (failback).
#[test]
fn claims_failover_by_the_masters_link_going_down() {
    let mut duo = Duo::new("cl", None, "30s", 1);
    duo.enable_claims("3s", "0s");
    duo.bring_up();
    wait(
        "a's enisync claimed the VIP it holds",
        Duration::from_secs(20),
        || {
            duo.a
                .log
                .lock()
                .expect("log")
                .iter()
                .any(|l| l.contains("decision=\"claimed\"") && l.contains(&format!("ip={VIP}")))
        },
        || duo.logs(),
    );
    assert!(duo.vip_bound_to(&duo.a), "{}", duo.logs());

    // a's link goes down: its keepalived cannot send adverts, b takes over.
    ip_ns(&duo.a.ns, "link set eth0 down");
    wait(
        "b is master with the VIP",
        Duration::from_secs(30),
        || Duo::has_vip(&duo.b),
        || duo.logs(),
    );
    wait(
        "the VIP bound to b's ENI",
        Duration::from_secs(60),
        || duo.vip_bound_to(&duo.b),
        || duo.logs(),
    );
    assert_eq!(
        duo.migrates_into(&duo.b).len(),
        1,
        "one Migrate into b:\n{}",
        duo.logs()
    );
    // Past a's grace period and both nodes' re-verifications: still b's, never released.
    std::thread::sleep(Duration::from_secs(12));
    assert!(duo.vip_bound_to(&duo.b), "{}", duo.logs());
    assert!(
        !Duo::has_vip(&duo.a),
        "a's keepalived (FAULT) took the VIP off the down link:\n{}",
        duo.logs()
    );
    let a_log = duo.a.log.lock().expect("log").join("\n");
    assert!(
        a_log
            .lines()
            .any(|l| l.contains("decision=\"not_released\"")
                && l.contains(&format!("ip={VIP} "))
                && l.contains("IP inside claim.cidrs")),
        "a's enisync decided not to release the VIP that left its down link:\n{}",
        duo.logs()
    );
    assert!(
        duo.fake.calls_of("UnassignPrivateIpAddresses").is_empty(),
        "a claim address is never released:\n{}",
        duo.logs()
    );
    duo.assert_no_failed_mutation();
    duo.assert_no_call_failed_checks();

    // Link up: a (priority 150) preempts and claims it back.
    ip_ns(&duo.a.ns, "link set eth0 up");
    wait(
        "a is master again",
        Duration::from_secs(30),
        || Duo::has_vip(&duo.a) && !Duo::has_vip(&duo.b),
        || duo.logs(),
    );
    wait(
        "the VIP bound to a's ENI again",
        Duration::from_secs(90),
        || duo.vip_bound_to(&duo.a),
        || duo.logs(),
    );
    // Past the re-verifications of both nodes: it stays, nobody fights.
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        duo.vip_bound_to(&duo.a) && Duo::has_vip(&duo.a) && !Duo::has_vip(&duo.b),
        "{}",
        duo.logs()
    );
    assert!(!duo.migrates_into(&duo.a).is_empty(), "{}", duo.logs());
    assert!(
        duo.fake.calls_of("UnassignPrivateIpAddresses").is_empty(),
        "a claim address is never released:\n{}",
        duo.logs()
    );
    duo.assert_no_failed_mutation();
    duo.assert_no_call_failed_checks();
}

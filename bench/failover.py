#!/usr/bin/env python3
"""Failover benchmark (run it through bench/failover.sh, which builds, installs and makes
the test CA first): how long a keepalived VIP takes to follow the new master in the cloud.

Two "instances" (network namespaces `<tag>-a`, `<tag>-b`), each with eth0 (its ENI) on a
bridge in a third namespace (`<tag>-hub`, the "VPC"), where one fake cloud listens on
10.0.1.1 (metadata over HTTP on :80, the API over HTTPS on :443, the run's test CA) and
answers metadata by the caller's address. keepalived runs on both in unicast mode (VPCs
have no multicast), equal priorities, `nopreempt`, advert_int 1. A failover = SIGTERM to
the master's keepalived (it sends priority 0; the backup takes over and adds the VIP);
then the stopped one is started again (it stays BACKUP), so the next failover goes the
other way.

Systems, one after the other, each on fresh namespaces and a fresh fake:
- `settle0`: enisync on both nodes, claims on (`[claim]`, the peer instance listed), no
  notify script, `claim.settle = "0s"`;
- `settle0-warm`: `settle0` again, with both enisync processes' and the fake's resident
  pages read every 200 ms by a SCHED_IDLE process through /proc/PID/mem
  (bench.warm_pages): on the machine this was written on, memory idle for seconds is slow
  at its next touch (bench/idle_memory.py), and each failover comes after 11 s of
  idleness; this system measures the same path without that;
- `default`: the same as `settle0` with enisync's default `claim.settle`;
- `recipe`: no enisync; keepalived's `notify_master` runs bench/failover_notify.py (the
  notify-script recipe: official SDK, MigratePrivateIpAddress from the peer's ENI).
For enisync, `claim.startup_holdoff = "0s"` (the default 60 s would hold every Migrate
for the first minute; the benchmark starts both nodes together on purpose).

Clock: CLOCK_MONOTONIC everywhere. "VIP added" is the RTM_NEWADDR as a netlink monitor in
the new master's namespace reads it (a process of its own, SCHED_FIFO so that it is not
woken after the agent it measures; netlink messages carry no kernel timestamp). The fake
stamps each request when its handler gets it, and each task's end and binding move
(`fakecloud --events`, `GET /_fake/events`).

Prints one table; writes <out>/failover.md and <out>/failover.json. Measures, asserts
nothing.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in bench/ from a root run
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (namespaces, processes, percentiles, machine facts)
from bench import in_netns, pct, sh, spawn, stop  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MONO_NS = time.monotonic_ns  # CLOCK_MONOTONIC, the fake's event clock
VIP = "10.0.1.100"
GATEWAY = "10.0.1.1"
REGION = "ap-guangzhou"
SECRET_ID = "AKIDfailover00000000000000000000000"
SECRET_KEY = "failoverSecretKey000000000000000"
NODES = {
    # name: (address, ENI, MAC, instance)
    "a": ("10.0.1.10", "eni-nodea001", "52:54:00:fa:00:01", "ins-nodea001"),
    "b": ("10.0.1.20", "eni-nodeb001", "52:54:00:fb:00:01", "ins-nodeb001"),
}
SYSTEMS = ["settle0", "settle0-warm", "default", "recipe"]
LABEL = {
    "settle0": "enisync, claim.settle = 0",
    "settle0-warm": "enisync, claim.settle = 0, memory kept warm",
    "default": "enisync, default claim.settle",
    "recipe": "notify script + SDK (recipe)",
}
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTMGRP_IPV4_IFADDR = 0x10
IFA_ADDRESS, IFA_LOCAL = 1, 2


def log(*a):
    print("failover:", *a, file=sys.stderr, flush=True)


def default_settle_s():
    """enisync's default `claim.settle`, read from its one source (src/config/defaults.rs):
    the goal line needs the number, the daemon gets no value from the benchmark."""
    text = open(os.path.join(ROOT, "src", "config", "defaults.rs")).read()
    m = re.search(r"fn d_claim_settle\(\) -> Duration \{\s*Duration::from_(secs|millis)\((\d+)\)", text)
    if not m:
        raise SystemExit("failover: cannot read claim.settle's default from src/config/defaults.rs")
    return int(m.group(2)) / (1 if m.group(1) == "secs" else 1000)


# ---------------------------------------------------------------- the netlink monitor --


def monitor_main(vip):
    """`failover.py --monitor VIP`, run inside a node's namespace: one line per
    RTM_NEWADDR/RTM_DELADDR of `vip`, `<CLOCK_MONOTONIC ns> add|del`, stamped as soon as
    the message is read."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((0, RTMGRP_IPV4_IFADDR))
    want = socket.inet_aton(vip)
    out = sys.stdout
    out.write("READY\n")
    out.flush()
    while True:
        data = s.recv(1 << 16)
        t = MONO_NS()
        off = 0
        while off + 16 <= len(data):
            length, kind = struct.unpack_from("IH", data, off)
            if length < 16:
                break
            if kind in (RTM_NEWADDR, RTM_DELADDR):
                a = off + 16 + 8  # nlmsghdr, ifaddrmsg
                end = off + length
                while a + 4 <= end:
                    alen, atype = struct.unpack_from("HH", data, a)
                    if alen < 4:
                        break
                    if atype in (IFA_LOCAL, IFA_ADDRESS) and data[a + 4:a + alen] == want:
                        out.write(f"{t} {'add' if kind == RTM_NEWADDR else 'del'}\n")
                        out.flush()
                        break
                    a += (alen + 3) & ~3
            off += (length + 3) & ~3


# ---------------------------------------------------------------- the two nodes -------


class Node:
    def __init__(self, duo, name):
        self.duo = duo
        self.name = name
        self.ip, self.eni, self.mac, self.instance = NODES[name]
        self.ns = f"{duo.tag}-{name}"
        self.dir = os.path.join(duo.dir, name)
        os.makedirs(self.dir)
        self.vip_events = []  # (t_ns, "add"|"del")
        self.cond = threading.Condition()
        self.keepalived = None
        self.ka_log = os.path.join(self.dir, "keepalived.log")
        self.enisync = None
        self.monitor = None

    def start_monitor(self):
        argv = [sys.executable, os.path.abspath(__file__), "--monitor", VIP]
        if self.duo.rt_monitor:
            argv = ["chrt", "-f", "50"] + argv
        self.monitor = spawn(self.ns, argv)
        line = self.monitor.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"{self.name}: netlink monitor did not start: {line!r}")
        threading.Thread(target=self._read_monitor, daemon=True).start()

    def _read_monitor(self):
        for line in self.monitor.stdout:
            t, what = line.split()
            with self.cond:
                self.vip_events.append((int(t), what))
                self.cond.notify_all()

    def first_vip(self, what, after_ns):
        with self.cond:
            return next((t for t, w in self.vip_events if w == what and t >= after_ns), None)

    def has_vip(self):
        return f"{VIP}/" in sh("ip", "-n", self.ns, "-4", "addr", "show", "dev", "eth0")

    def write_keepalived_conf(self, notify):
        peer = self.duo.peer(self).ip
        notify_line = f'  notify_master "{notify}"\n' if notify else ""
        conf = (
            "global_defs {\n"
            f"  router_id node-{self.name}\n  script_user root\n"
            "}\n"
            "vrrp_instance VI_1 {\n"
            "  state BACKUP\n  nopreempt\n  interface eth0\n  virtual_router_id 51\n"
            f"  priority 100\n  advert_int 1\n  unicast_src_ip {self.ip}\n"
            f"  unicast_peer {{\n    {peer}\n  }}\n"
            f"  virtual_ipaddress {{\n    {VIP}/24 dev eth0\n  }}\n"
            f"{notify_line}"
            "}\n")
        self.ka_conf = os.path.join(self.dir, "keepalived.conf")
        with open(self.ka_conf, "w") as f:
            f.write(conf)

    def start_keepalived(self):
        d = self.dir
        out = open(self.ka_log, "a")
        self.keepalived = spawn(self.ns, ["keepalived", "-n", "-l", "-D", "-G", "-P", "-f", self.ka_conf,
                                          f"--pid={d}/ka.pid", f"--vrrp_pid={d}/vrrp.pid"],
                                stdout=out, stderr=subprocess.STDOUT)
        out.close()

    def stop_keepalived(self):
        # As `systemctl stop`: SIGTERM to the process group (keepalived and its VRRP child).
        stop(self.keepalived, 10)
        self.keepalived = None

    def ka_mark(self):
        """Where keepalived's log ends now (for `ka_seen`)."""
        try:
            return os.path.getsize(self.ka_log)
        except OSError:
            return 0

    def ka_seen(self, needle, mark=0):
        """Whether keepalived logged `needle` after `mark`."""
        try:
            with open(self.ka_log, "rb") as f:
                f.seek(mark)
                return needle.encode() in f.read()
        except OSError:
            return False


class Duo:
    """The hub (bridge + fake cloud) and the two nodes of one system's run."""

    def __init__(self, system, args, tmp, n):
        self.system = system
        self.args = args
        self.tag = f"efo{os.getpid() % 100000}{n}"
        self.dir = os.path.join(tmp, self.tag)
        os.makedirs(self.dir)
        self.rt_monitor = args.rt_monitor
        self.hub = f"{self.tag}-hub"
        self.events = []
        self.last_seq = 0
        self.conn = None
        self.warmer = None
        for ns in [self.hub] + [f"{self.tag}-{x}" for x in NODES]:
            sh("ip", "netns", "add", ns)
            bench.LIVE_NS.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        batch = ["link add br0 type bridge", "link set br0 up", f"addr add {GATEWAY}/24 dev br0"]
        self.nodes = {x: Node(self, x) for x in NODES}
        for node in self.nodes.values():
            batch += [f"link add v{node.name} type veth peer name eth0 netns {node.ns}",
                      f"link set v{node.name} master br0", f"link set v{node.name} up"]
        sh("ip", "-n", self.hub, "-batch", "-", input="\n".join(batch) + "\n")
        for node in self.nodes.values():
            sh("ip", "-n", node.ns, "-batch", "-", input=(
                f"link set eth0 address {node.mac}\naddr add {node.ip}/24 dev eth0\nlink set eth0 up\n"))
        scenario = {
            "task_duration_ms": args.task_ms,
            "keys": [{"secret_id": SECRET_ID, "secret_key": SECRET_KEY}],
            "instances": [{"id": n.instance, "region": REGION, "zone": f"{REGION}-3", "source_ips": [n.ip],
                           "cam_role": "failover-role"} for n in self.nodes.values()],
            "enis": [{"id": n.eni, "mac": n.mac, "vpc_id": "vpc-failover", "subnet_id": "subnet-failover",
                      "subnet_cidr": "10.0.1.0/24", "primary": True, "instance_id": n.instance, "device_index": 0,
                      "primary_ip": n.ip, "secondary_ips": [VIP] if n.name == "a" else []}
                     for n in self.nodes.values()],
        }
        path = os.path.join(self.dir, "scenario.json")
        with open(path, "w") as f:
            json.dump(scenario, f)
        self.fake_log = open(os.path.join(self.dir, "fakecloud.log"), "w")
        self.fake = spawn(self.hub, [bench.BIN["fakecloud"], "--listen", f"{GATEWAY}:80", "--scenario", path,
                                     "--tls-listen", f"{GATEWAY}:443", "--tls-cert", bench.TLS["cert"],
                                     "--tls-key", bench.TLS["key"], "--events", "--timestamps"],
                          stdout=self.fake_log, stderr=subprocess.STDOUT)
        self._wait(lambda: "fakecloud: HTTPS" in open(self.fake_log.name).read(), 20, "the fake cloud to listen")
        for node in self.nodes.values():
            node.start_monitor()

    def peer(self, node):
        return self.nodes["b" if node.name == "a" else "a"]

    @staticmethod
    def _wait(pred, timeout, what):
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise TimeoutError(f"waiting for {what}")
            time.sleep(0.05)

    # ---- the fake's event log (from inside the hub namespace) ------------------------

    def _get(self, path):
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(GATEWAY, 80, timeout=10)
                    with in_netns(self.hub):
                        self.conn.connect()
                self.conn.request("GET", path)
                return json.loads(self.conn.getresponse().read())
            except (OSError, http.client.HTTPException):
                self.conn = None
                if attempt:
                    raise

    def poll_events(self):
        got = self._get(f"/_fake/events?since={self.last_seq}")
        if got.get("dropped"):
            raise RuntimeError("the fake dropped events: raise its cap")
        for e in got["events"]:
            self.events.append(e)
            self.last_seq = e["seq"]
        return self.events

    def binding(self):
        """The ENIs that hold the VIP in the fake, and whether it is AVAILABLE there."""
        state = self._get("/_fake/state")
        out = []
        for eni in state["enis"]:
            for ip in eni["ips"]:
                if ip["addr"] == VIP:
                    out.append((eni["id"], ip["state"]))
        return out

    # ---- systems -----------------------------------------------------------------------

    def start_enisync(self, settle):
        for node in self.nodes.values():
            peer = self.peer(node)
            claim = [f'cidrs = ["{VIP}/32"]', f'peers = ["{peer.instance}"]', 'startup_holdoff = "0s"']
            if settle is not None:
                claim.append(f'settle = "{settle}"')
            conf = (f'[cloud]\nendpoint = "https://{GATEWAY}/"\nregion = "{REGION}"\nca_file = "{bench.TLS["ca"]}"\n\n'
                    f'[metadata]\nendpoint = "http://{GATEWAY}/latest/meta-data/"\n\n'
                    f'[routing]\nmode = "cleanup"\n\n[state]\ndir = "{node.dir}/state"\n\n'
                    f'[control]\nsocket = "{node.dir}/enisync.sock"\n\n'
                    f'[log]\nformat = "plain"\nlevel = "{self.args.enisync_log}"\n\n'
                    "[claim]\n" + "\n".join(claim) + "\n")
            node.config = os.path.join(node.dir, "enisync.toml")
            with open(os.open(node.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(conf)
            node.enisync_log = os.path.join(node.dir, "enisync.log")
            out = open(node.enisync_log, "w")
            node.enisync = spawn(node.ns, [bench.BIN["enisync"], "run", "--config", node.config],
                                 stdout=out, stderr=subprocess.STDOUT)
            out.close()
        for node in self.nodes.values():
            self._wait(lambda: node.enisync.poll() is not None or "enisync ready" in open(node.enisync_log).read(),
                       30, f"{node.name}: enisync ready")
            if node.enisync.poll() is not None:
                raise RuntimeError(f"{node.name}: enisync exited; see {node.enisync_log}")

    def write_recipe(self):
        template = open(os.path.join(ROOT, "bench", "failover_notify.py")).read()
        for node in self.nodes.values():
            values = {"SECRET_ID": SECRET_ID, "SECRET_KEY": SECRET_KEY, "REGION": REGION, "VIP": VIP,
                      "THIS_ENI": node.eni, "PEER_ENI": self.peer(node).eni, "ENDPOINT": GATEWAY,
                      "CA_FILE": bench.TLS["ca"], "LOG": os.path.join(node.dir, "notify.log")}
            # The venv's interpreter in the #! line: keepalived resolves a command's
            # symlinks before it runs it, and the venv's `python` is a symlink (run as
            # the real interpreter, it would not find the venv's SDK).
            script = f"#!{bench.BIN['python']}\n" + template.split("\n", 1)[1]
            for k, v in values.items():
                script = script.replace(f"@{k}@", v)
            path = os.path.join(node.dir, "notify_master.py")
            with open(path, "w") as f:
                f.write(script)
            os.chmod(path, 0o700)
            node.write_keepalived_conf(path)

    def enisync_log_count(self, needle):
        n = 0
        for node in self.nodes.values():
            if node.enisync is not None or getattr(node, "enisync_log", None):
                with open(node.enisync_log, errors="replace") as f:
                    n += sum(1 for line in f if needle in line)
        return n

    def start_warmer(self):
        """bench.warm_pages on both enisync processes and the fake (`--warm fake`: the
        fake only) every 200 ms (SCHED_IDLE), until they exit."""
        agents = [str(n.enisync.pid) for n in self.nodes.values()] if self.args.warm == "all" else []
        pids = agents + [str(self.fake.pid)]
        self.warmer_log = os.path.join(self.dir, "warmer.log")
        with open(self.warmer_log, "w") as out:
            self.warmer = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "bench.py"), "--warm", "0.2"]
                                           + pids, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True)
        bench.LIVE_PROCS.append(self.warmer)

    def warmer_rounds(self):
        """Pages read per round and a round's time (p50 / max), from the warmer's log."""
        rounds = []
        with open(self.warmer_log) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0].isdigit():
                    rounds.append((int(parts[0]), float(parts[1])))
        if not rounds:
            return None
        pages = sorted(r[0] for r in rounds)
        secs = sorted(r[1] for r in rounds)
        return {"rounds": len(rounds), "pages_p50": pages[len(pages) // 2],
                "round_ms_p50": secs[len(secs) // 2] * 1000, "round_ms_max": secs[-1] * 1000}

    def close(self):
        stop(self.warmer)
        for node in self.nodes.values():
            stop(node.keepalived, 10)
            stop(node.enisync)
            stop(node.monitor)
        stop(self.fake)
        self.fake_log.close()
        for ns in [self.hub] + [n.ns for n in self.nodes.values()]:
            sh("ip", "netns", "del", ns, check=False)
            if ns in bench.LIVE_NS:
                bench.LIVE_NS.remove(ns)


# ---------------------------------------------------------------- one system's run -----


def run_delay_ns(p):
    """Time the process's threads spent runnable but waiting for a CPU (schedstat)."""
    if p is None:
        return None
    total = 0
    try:
        for tid in os.listdir(f"/proc/{p.pid}/task"):
            with open(f"/proc/{p.pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return total


def calls(events, action):
    return [e for e in events if e["event"] == "request" and e["call"]["action"] == action]


def run_system(system, count, args, tmp, n):
    duo = Duo(system, args, tmp, n)
    R = {"system": system, "label": LABEL[system], "samples": [], "setup": {}}
    try:
        a, b = duo.nodes["a"], duo.nodes["b"]
        if system == "recipe":
            duo.write_recipe()
        else:
            for node in duo.nodes.values():
                node.write_keepalived_conf(None)
            duo.start_enisync("0s" if system in ("settle0", "settle0-warm") else None)
            if system == "settle0-warm":
                duo.start_warmer()
        # a first (the cloud binds the VIP to a's ENI), then b, which stays BACKUP.
        a.start_keepalived()
        duo._wait(a.has_vip, 20, "a MASTER with the VIP")
        b.start_keepalived()
        duo._wait(lambda: b.ka_seen("Entering BACKUP STATE"), 20, "b BACKUP")
        # Let the start settle: a's claim (no call: the VIP is a's already), or the
        # recipe's first notify (it fails: b's ENI does not hold the VIP) and its retries.
        time.sleep(args.settle_pause)
        master, backup = a, b
        spacing = args.spacing if system != "recipe" else 0.0
        settle_s = (0.0 if system in ("settle0", "settle0-warm")
                    else (None if system == "recipe" else default_settle_s()))
        converge_s = (settle_s or 0) + args.task_ms / 1000 + args.converge_timeout
        for i in range(count):
            waits0 = (run_delay_ns(backup.enisync), run_delay_ns(duo.fake))
            t_trigger = MONO_NS()
            master.stop_keepalived()
            s = {"i": i, "to": backup.name, "t_trigger": t_trigger}
            try:
                duo._wait(lambda: backup.first_vip("add", t_trigger) is not None, 15, f"#{i}: VIP added on {backup.name}")
            except TimeoutError:
                s["error"] = "the VIP was never added on the backup"
                R["samples"].append(s)
                log(system, f"#{i}", s["error"])
                break
            s["t_add"] = backup.first_vip("add", t_trigger)
            s["t_del_old"] = master.first_vip("del", t_trigger)

            def converged():
                duo.poll_events()
                held = duo.binding()
                return held == [(backup.eni, "AVAILABLE")]

            try:
                duo._wait(converged, converge_s, f"#{i}: the VIP bound to {backup.name}")
                s["converged_wait"] = True
            except TimeoutError:
                s["converged_wait"] = False
            # How long the new master's agent and the fake waited for a CPU meanwhile
            # (the machine's load, not their work).
            waits1 = (run_delay_ns(backup.enisync), run_delay_ns(duo.fake))
            for k, key in enumerate(["agent_cpu_wait_ms", "fake_cpu_wait_ms"]):
                if waits0[k] is not None and waits1[k] is not None:
                    s[key] = (waits1[k] - waits0[k]) / 1e6
            # The recipe's script, or enisync's poll, may still run: give it a moment.
            time.sleep(args.task_ms / 1000 + 0.3)
            mark = master.ka_mark()
            master.start_keepalived()
            try:
                duo._wait(lambda: master.ka_seen("Entering BACKUP STATE", mark), 20, f"#{i}: {master.name} BACKUP")
            except TimeoutError:
                s["error"] = f"{master.name} did not come back as BACKUP"
            left = t_trigger / 1e9 + spacing - time.monotonic()
            if left > 0:
                time.sleep(left)
            duo.poll_events()
            # Converged: the fake binds the VIP to exactly the node that holds it.
            holder = [x for x in (master, backup) if x.has_vip()]
            s["holders"] = [x.name for x in holder]
            s["binding"] = duo.binding()
            s["converged"] = len(holder) == 1 and s["binding"] == [(holder[0].eni, "AVAILABLE")]
            R["samples"].append(s)
            log(system, f"#{i + 1}/{count} -> {backup.name}:", "converged" if s["converged"] else f"NOT converged {s}")
            if len(holder) == 1 and holder[0] is backup:
                master, backup = backup, master
            elif len(holder) == 1:
                pass
            else:
                s["error"] = f"VIP on {s['holders']}"
                break
        duo.poll_events()
        R["events"] = duo.events
        analyse(R, duo)
        if duo.warmer is not None:
            R["warmer"] = duo.warmer_rounds()
        if system != "recipe":
            R["contested"] = duo.enisync_log_count('decision="contested"')
            R["claim_wait"] = duo.enisync_log_count('decision="claim_wait"')
            R["released"] = len(calls(duo.events, "UnassignPrivateIpAddresses"))
    finally:
        duo.close()
        if os.environ.get("BENCH_KEEP") == "1":
            log("kept", duo.dir)
    R.pop("events", None)
    return R


def analyse(R, duo):
    """Per failover: from the RTM_NEWADDR on the new master to the first Migrate into its
    ENI, the task's end, the binding move, and (enisync) the poll that saw SUCCESS."""
    ev = duo.events
    migrates = calls(ev, "MigratePrivateIpAddress")
    polls = calls(ev, "DescribeVpcTaskResult")
    lookups = calls(ev, "DescribeNetworkInterfaces")
    samples = R["samples"]
    for k, s in enumerate(samples):
        if "t_add" not in s:
            continue
        node = duo.nodes[s["to"]]
        t0 = s["t_add"]
        t_end_window = samples[k + 1]["t_trigger"] if k + 1 < len(samples) else float("inf")
        into = [m for m in migrates if s["t_trigger"] <= m["mono_ns"] < t_end_window
                and m["call"]["params"].get("DestinationNetworkInterfaceId") == node.eni]
        s["migrates"] = len(into)
        s["migrates_refused"] = sum(1 for m in into if m["call"]["answer"] != "Success")
        s["migrates_all"] = sum(1 for m in migrates if s["t_trigger"] <= m["mono_ns"] < t_end_window)
        ms = lambda t: None if t is None else (t - t0) / 1e6  # noqa: E731
        if s.get("t_del_old") is not None:
            s["keepalived_ms"] = (t0 - s["t_del_old"]) / 1e6
        if into:
            s["request_ms"] = ms(into[0]["mono_ns"])
            # enisync looks the holder up first: the last lookup from the new master
            # between the VIP's addition and the Migrate splits the time in two.
            src = NODES[s["to"]][0]
            looked = [e for e in lookups if t0 <= e["mono_ns"] <= into[0]["mono_ns"]
                      and e["call"]["source"].rsplit(":", 1)[0] == src]
            if looked:
                s["lookup_ms"] = ms(looked[-1]["mono_ns"])
        ok = next((m for m in into if m["call"]["answer"] == "Success"), None)
        if ok is None:
            continue
        task = ok["call"]["task"]
        s["ok_request_ms"] = ms(ok["mono_ns"])
        end = next((e for e in ev if e["event"] == "task_ended" and e["task"] == task), None)
        if end:
            s["task_end_ms"] = ms(end["mono_ns"])
            s["task_status"] = end["status"]
        bound = next((e for e in ev if e["event"] == "bound" and e["task"] == task and e["to"] == node.eni), None)
        if bound:
            s["bound_ms"] = ms(bound["mono_ns"])
        seen = next((p for p in polls if p["call"]["task"] == task and p["call"].get("task_status") == "SUCCESS"), None)
        if seen:
            s["seen_ms"] = ms(seen["mono_ns"])


# ---------------------------------------------------------------- the table -----------


def stats(samples, key):
    xs = [s[key] for s in samples if s.get(key) is not None]
    if not xs:
        return None
    return {"n": len(xs), "p50": pct(xs, 50), "p99": pct(xs, 99), "max": max(xs), "min": min(xs)}


def cell(st, unit_s=False):
    if st is None:
        return "—"
    f = (lambda v: f"{v / 1000:.2f} s") if unit_s else (lambda v: f"{v:.1f}" if v >= 10 else f"{v:.2f}")
    return f"{f(st['p50'])} / {f(st['p99'])} / {f(st['max'])}"


def build_table(results, args, settle_default):
    systems = [r for r in results if r]
    head = "| figure (p50 / p99 / max, ms) | " + " | ".join(LABEL[r["system"]] for r in systems) + " |"
    rows = [head, "|---|" + "---|" * len(systems)]

    def row(name, values):
        rows.append(f"| {name} | " + " | ".join(values) + " |")

    row("failovers run / converged / not converged",
        [f"{len(r['samples'])} / {sum(1 for s in r['samples'] if s.get('converged'))} / "
         f"{sum(1 for s in r['samples'] if not s.get('converged'))}" for r in systems])
    row("keepalived: VIP removed on the old master → added on the new one (context)",
        [cell(stats(r["samples"], "keepalived_ms")) for r in systems])
    row("VIP added → holder lookup (DescribeNetworkInterfaces) at the fake",
        [cell(stats(r["samples"], "lookup_ms")) if r["system"] != "recipe" else "looks nothing up"
         for r in systems])
    row("VIP added → first Migrate request at the fake",
        [cell(stats(r["samples"], "request_ms")) for r in systems])
    row("VIP added → task SUCCESS at the fake",
        [cell(stats(r["samples"], "task_end_ms")) for r in systems])
    row("VIP added → the fake binds the VIP to the new master's ENI",
        [cell(stats(r["samples"], "bound_ms")) for r in systems])
    row("VIP added → the agent saw SUCCESS (its first poll answered SUCCESS)",
        [cell(stats(r["samples"], "seen_ms")) if r["system"] != "recipe" else "never polls" for r in systems])
    row("CPU wait of the new master's enisync (all threads) / of the fake, per failover (schedstat)",
        [(cell(stats(r["samples"], "agent_cpu_wait_ms")) + " // " if r["system"] != "recipe" else "")
         + cell(stats(r["samples"], "fake_cpu_wait_ms")) for r in systems])
    row("Migrate calls into the new master per failover: total / refused",
        [f"{sum(s.get('migrates', 0) for s in r['samples'])} / {sum(s.get('migrates_refused', 0) for s in r['samples'])}"
         for r in systems])
    row("enisync: contested alarms / claim_wait records / releases",
        [f"{r['contested']} / {r['claim_wait']} / {r['released']}" if r["system"] != "recipe" else "n/a"
         for r in systems])
    goals = []
    by = {r["system"]: r for r in systems}
    for system in ("settle0", "settle0-warm"):
        if system not in by:
            continue
        st = stats(by[system]["samples"], "request_ms")
        ok = st is not None and st["p99"] <= 5.0
        p99 = "—" if st is None else "%.2f ms" % st["p99"]
        goals.append(f"- {LABEL[system]}: VIP added → Migrate request p99 ≤ 5 ms: {p99} over "
                     f"{0 if st is None else st['n']} failovers: **{'met' if ok else 'MISSED'}**")
    if "default" in by:
        st = stats(by["default"]["samples"], "bound_ms")
        bound_ms = (settle_default + args.task_ms / 1000 + 0.5) * 1000
        n = 0 if st is None else st["n"]
        ok = st is not None and st["max"] <= bound_ms and n >= 50
        rec = stats(by["recipe"]["samples"], "bound_ms") if "recipe" in by else None
        goals.append(f"- default settle ({settle_default:g} s): VIP up → binding moved ≤ settle + task "
                     f"({args.task_ms} ms) + 0.5 s = {bound_ms / 1000:.2f} s over ≥ 50 failovers: "
                     f"p50 {cell_one(st, 'p50')}, max {cell_one(st, 'max')} over {n}"
                     f"{'' if n >= 50 else ' (fewer than 50)'}: **{'met' if ok else 'MISSED'}**; "
                     f"recipe p50 {cell_one(rec, 'p50')}, max {cell_one(rec, 'max')}")
    not_conv = sum(1 for r in systems for s in r["samples"] if not s.get("converged"))
    goals.append(f"- every failover converged: **{'met' if not_conv == 0 else f'MISSED ({not_conv} did not)'}**")
    return "\n".join(rows), "\n".join(goals)


def cell_one(st, key):
    return "—" if st is None else f"{st[key] / 1000:.3f} s"


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--monitor":
        monitor_main(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description="keepalived failover: enisync claims vs the notify-script recipe")
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--venv", required=True)
    ap.add_argument("--tls-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="of " + ",".join(SYSTEMS))
    ap.add_argument("--settle0-failovers", type=int, default=20, help="for settle0 and settle0-warm each")
    ap.add_argument("--default-failovers", type=int, default=50)
    ap.add_argument("--recipe-failovers", type=int, default=20)
    ap.add_argument("--task-ms", type=int, default=300, help="the fake's task duration")
    ap.add_argument("--spacing", type=float, default=11.0,
                    help="enisync only: seconds from one failover to the next, so that each node's "
                         "Migrates (every other failover) stay within claim.max_migrations_per_minute "
                         "(default 3: one per 20 s)")
    ap.add_argument("--converge-timeout", type=float, default=20.0,
                    help="seconds beyond settle + task time to wait for the binding")
    ap.add_argument("--settle-pause", type=float, default=6.0, help="seconds after start before the first failover")
    ap.add_argument("--warm", choices=["all", "fake"], default="all",
                    help="settle0-warm: whose pages are kept warm (fake: the fake's only, so the column "
                         "shows what enisync's own cold memory costs)")
    ap.add_argument("--enisync-log", default="info", help="enisync's [log] level (diagnosis: e.g. info,enisync=debug)")
    ap.add_argument("--no-rt-monitor", dest="rt_monitor", action="store_false",
                    help="run the netlink monitors without SCHED_FIFO")
    args = ap.parse_args()
    bench.BIN.update(enisync=os.path.join(args.bin_dir, "enisync"), fakecloud=os.path.join(args.bin_dir, "fakecloud"),
                     python=os.path.join(args.venv, "bin", "python"))
    bench.TLS.update(ca=os.path.join(args.tls_dir, "ca.pem"), cert=os.path.join(args.tls_dir, "server.pem"),
                     key=os.path.join(args.tls_dir, "server.key"))
    counts = {"settle0": args.settle0_failovers, "settle0-warm": args.settle0_failovers, "default": args.default_failovers, "recipe": args.recipe_failovers}
    systems = [s for s in args.systems.split(",") if s]
    for s in systems:
        if s not in SYSTEMS:
            ap.error(f"--systems: unknown {s!r}")
    settle_default = default_settle_s()
    tmp = tempfile.mkdtemp(prefix="enisync-failover.", dir=os.environ.get("BENCH_TMP", "/var/tmp"))
    R = {"machine": bench.machine(), "args": vars(args), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
         "default_settle_s": settle_default, "results": []}
    t_start = time.monotonic()
    try:
        for n, system in enumerate(systems):
            log(f"{LABEL[system]}: {counts[system]} failovers")
            R["results"].append(run_system(system, counts[system], args, tmp, n))
    finally:
        for p in bench.LIVE_PROCS:
            stop(p, 2)
        for ns in list(bench.LIVE_NS):
            sh("ip", "netns", "del", ns, check=False)
        R["duration_s"] = time.monotonic() - t_start
        R["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "failover.json"), "w") as f:
            json.dump(R, f, indent=1, default=str)
        if os.environ.get("BENCH_KEEP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)
    table, goals = build_table(R["results"], args, settle_default)
    m = R["machine"]
    notes = (f"enisync: claim.startup_holdoff = 0s (lowered for the benchmark: the default 60 s holds every "
             f"Migrate for a minute after start); failovers {args.spacing:g} s apart for enisync "
             f"(claim.max_migrations_per_minute, default 3, is never the limit); fake tasks {args.task_ms} ms "
             f"(ended on the fake's 20 ms tick or the next request); netlink monitor "
             f"{'SCHED_FIFO' if args.rt_monitor else 'not real-time'}.\n"
             + "".join(f"{LABEL[r['system']]}: {r['warmer']['pages_p50']} resident pages "
                       f"({'both enisync processes and the fake' if args.warm == 'all' else 'the fake only'}) read every 200 ms "
                       f"(a round {r['warmer']['round_ms_p50']:.1f} ms p50, {r['warmer']['round_ms_max']:.1f} ms max, "
                       f"SCHED_IDLE; {r['warmer']['rounds']} rounds).\n"
                       for r in R["results"] if r and r.get("warmer")) +
             f"load average {' / '.join(m['loadavg_start'])} at the start, {' / '.join(m['loadavg_end'])} at the end "
             f"(1 / 5 / 15 min); {m.get('cores')} cores; run time {R['duration_s']:.0f} s.")
    text = f"{table}\n\nGoals:\n{goals}\n\n{notes}"
    with open(os.path.join(args.out, "failover.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    print(f"\nresults in {args.out}/failover.json")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""enisync benchmark orchestrator (run it through bench/run.sh, which builds, installs and
generates the test CA first).

Every phase runs in network namespaces of its own (`enisync-bench-<pid>-<n>`), each with
veth "ENIs" carrying fixed MACs and the fake cloud (`fakecloud`, HTTPS with the
benchmark's test CA) listening on 127.0.0.1:8443 inside. Addresses are deleted with
RTM_DELADDR from this process (the request `ip addr del` sends), timestamped with
CLOCK_MONOTONIC just before the send; the fake stamps each call it answers with the same
clock (`--timestamps`). No traffic leaves the namespaces; every wait is bounded.

Prints one table and writes target/bench/results.json and target/bench/table.md.
"""

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MONO = time.monotonic  # CLOCK_MONOTONIC on Linux, the fake's --timestamps clock
PORT = 8443  # HTTPS: the API (and everything else)
HTTP_PORT = 8080  # plain HTTP: the metadata service, as on a CVM
REGION = "ap-guangzhou"
SECRET_ID = "AKIDbench000000000000000000000000000"
SECRET_KEY = "benchSecretKey00000000000000000000"
INSTANCE = "ins-bench001"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

libc = ctypes.CDLL("libc.so.6", use_errno=True)
CLONE_NEWNET = 0x40000000
NS_LOCK = threading.Lock()
_ns_counter = [0]
LIVE_NS = []
LIVE_PROCS = []


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- namespaces ----------


class in_netns:
    """Switches the calling thread into a named network namespace (and back). Processes
    spawned and sockets opened meanwhile live there."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        NS_LOCK.acquire()
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)

    def __exit__(self, *exc):
        try:
            if libc.setns(self.home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
        finally:
            os.close(self.home)
            NS_LOCK.release()


def sh(*cmd, input=None, check=True):
    r = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stdout}{r.stderr}")
    return r.stdout


# ---------------------------------------------------------------- rtnetlink -----------

RTM_NEWADDR, RTM_DELADDR = 20, 21
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
IFA_ADDRESS, IFA_LOCAL = 1, 2


class Rtnl:
    """A NETLINK_ROUTE socket opened inside a namespace, for timed address deletions."""

    def __init__(self, ns):
        with in_netns(ns):
            self.s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.s.bind((0, 0))
        self.seq = 0

    def _msg(self, kind, ip, prefix, ifindex, flags):
        self.seq += 1
        if ":" in ip:  # IPv6: IFA_ADDRESS only, as `ip -6 addr del` sends it
            family, attrs = socket.AF_INET6, struct.pack("HH", 20, IFA_ADDRESS) + socket.inet_pton(socket.AF_INET6, ip)
        else:
            family, packed, attrs = socket.AF_INET, socket.inet_aton(ip), b""
            for t in (IFA_LOCAL, IFA_ADDRESS):
                attrs += struct.pack("HH", 8, t) + packed
        body = struct.pack("BBBBI", family, prefix, 0, 0, ifindex) + attrs
        return struct.pack("IHHII", 16 + len(body), kind, flags, self.seq, 0) + body

    def delete(self, ip, prefix, ifindex, ack=True):
        """Sends RTM_DELADDR; returns the monotonic time just before the send."""
        msg = self._msg(RTM_DELADDR, ip, prefix, ifindex, NLM_F_REQUEST | NLM_F_ACK)
        t = MONO()
        self.s.send(msg)
        if ack:
            self.acks(1)
        return t

    def acks(self, n, timeout=10):
        """Reads n acks; raises on a netlink error."""
        self.s.settimeout(timeout)
        got = 0
        while got < n:
            data = self.s.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("IH", data, off)
                if kind == NLMSG_ERROR:
                    (err,) = struct.unpack_from("i", data, off + 16)
                    if err != 0:
                        raise OSError(-err, os.strerror(-err))
                    got += 1
                off += (length + 3) & ~3
        self.s.settimeout(None)

    def close(self):
        self.s.close()


# ---------------------------------------------------------------- processes -----------


def spawn(ns, cmd, env=None, stdout=subprocess.PIPE, stderr=None, text=True):
    base = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C.UTF-8"}
    base.update(env or {})
    with in_netns(ns):
        p = subprocess.Popen(cmd, env=base, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                             text=text, start_new_session=True)
    LIVE_PROCS.append(p)
    return p


def stop(p, timeout=5):
    if p is None or p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(5)


def warm_pages(pid):
    """Reads one byte of every resident page of process `pid` through /proc/PID/mem (the
    kernel's own mapping of the page, not the process's), and returns how many. It runs
    none of the process's code and maps nothing new: pages that are not resident
    (/proc/PID/pagemap, bit 63) are skipped, so RSS does not change.

    Why: on the virtual machine these benchmarks were written on, private anonymous
    memory left untouched for a second or more costs 5-25 us per 4 KiB page at its next
    read, with no page fault counted (bench/idle_memory.py, BENCHMARKS.md "Idle memory";
    the cause is below the guest, not found); a process woken after seconds of idleness
    pays that on every page of the path it runs. Reading the pages from another process
    every 200 ms keeps them warm, so a figure taken with it is the process's own path.
    Needs root."""
    touched = 0
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read().splitlines()
        mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError:
        return 0
    try:
        pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    except OSError:
        os.close(mem)
        return 0
    try:
        for line in maps:
            fields = line.split()
            if fields[1][0] != "r" or (len(fields) > 5 and fields[5] in ("[vvar]", "[vvar_vclock]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                entries = os.pread(pagemap, (end - start) // PAGE * 8, start // PAGE * 8)
            except OSError:
                continue
            for k, (entry,) in enumerate(struct.iter_unpack("<Q", entries)):
                if entry >> 63:
                    try:
                        os.pread(mem, 1, start + k * PAGE)
                    except OSError:
                        break  # unmapped meanwhile
                    touched += 1
    finally:
        os.close(pagemap)
        os.close(mem)
    return touched


def warm_main(period_s, pids):
    """`python3 bench.py --warm PERIOD PID...` (SCHED_IDLE: it only takes a CPU nobody
    else wants): warm_pages() on each live PID every PERIOD seconds, until none is left;
    prints `<pages> <round seconds>` per round."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    while True:
        t0 = time.monotonic()
        alive = [p for p in pids if os.path.exists(f"/proc/{p}")]
        if not alive:
            return
        pages = sum(warm_pages(p) for p in alive)
        print(pages, f"{time.monotonic() - t0:.4f}", flush=True)
        time.sleep(period_s)


def children(pid):
    """All descendants of pid (by /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo and len(out) < 10000:
        p = todo.pop()
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(x) for x in f.read().split()]
                out += kids
                todo += kids
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return out


def proc_status(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_s(pid):
    """utime+stime of pid (all its threads), seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def runtime_ns(pid):
    """Sum of the threads' on-CPU time from schedstat (ns resolution)."""
    total = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass
    except FileNotFoundError:
        pass
    return total


def ctxsw(pid):
    """Voluntary + nonvoluntary context switches summed over the threads alive now."""
    vol = nonvol = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{t}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            vol += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            nonvol += int(line.split()[1])
            except (FileNotFoundError, ProcessLookupError):
                pass
    except FileNotFoundError:
        pass
    return vol, nonvol


def tree(pid):
    return [pid] + children(pid)


def tree_rss_kb(pid):
    return sum(proc_status(p, "VmRSS") for p in tree(pid))


def tree_cpu_s(pid):
    """CPU of a process tree: each live process's own and its reaped children's (so the
    short-lived tccli processes of the shell baseline count)."""
    total = 0.0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / CLK_TCK
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def tree_ctxsw(pid):
    v = n = 0
    for p in tree(pid):
        a, b = ctxsw(p)
        v += a
        n += b
    return v, n


class RssSampler(threading.Thread):
    """Samples the summed VmRSS of a process tree every 20 ms; keeps the peak."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.alive = pid, 0, True

    def run(self):
        while self.alive:
            self.peak = max(self.peak, tree_rss_kb(self.pid))
            time.sleep(0.02)

    def stop(self):
        self.alive = False
        self.join(2)
        return self.peak


# ---------------------------------------------------------------- the sandbox ----------


class Sandbox:
    """One namespace = one CVM: eth0 (primary ENI) and eth1..ethN (secondary ENIs, veth,
    peer up inside), aux IPs, and the fake cloud on 127.0.0.1:8443 (HTTPS)."""

    def __init__(self, tag, aux_per_eni, task_ms, tmp, tls, churn=False, aux6=0):
        _ns_counter[0] += 1
        self.ns = f"enisync-bench-{os.getpid()}-{_ns_counter[0]}"
        self.tag = tag
        self.dir = os.path.join(tmp, self.ns)
        os.makedirs(self.dir)
        self.task_ms = task_ms
        sh("ip", "netns", "add", self.ns)
        LIVE_NS.append(self.ns)
        self.enis = {}  # ifname -> eni id
        self.aux = {}  # ifname -> [ip]
        self.aux6 = {}  # ifname -> [IPv6 address], permanent, nodad, listed in Ipv6AddressSet
        batch = ["link set lo up"]
        enis_json = []
        specs = [("eth0", "52:54:00:00:00:01", 0, [])]
        for k, n in enumerate(aux_per_eni, start=1):
            specs.append((f"eth{k}", f"52:54:00:00:01:{k:02x}", k, [f"10.0.{k}.{11 + i}" for i in range(n)]))
        for ifname, mac, k, aux in specs:
            eni = f"eni-bench{k:03d}"
            batch += [f"link add {ifname} address {mac} type veth peer name peer{k}",
                      f"link set peer{k} up", f"link set {ifname} up",
                      f"addr add 10.0.{k}.10/24 dev {ifname}"]
            batch += [f"addr add {ip}/24 dev {ifname}" for ip in aux]
            aux6_ips = [f"2402:4e00:{k:x}::{0x11 + i:x}" for i in range(aux6)] if k else []
            batch += [f"addr add {ip}/64 dev {ifname} nodad" for ip in aux6_ips]
            enis_json.append({"id": eni, "mac": mac, "vpc_id": "vpc-bench001", "subnet_id": f"subnet-{k}",
                              "subnet_cidr": f"10.0.{k}.0/24", "primary": k == 0, "instance_id": INSTANCE,
                              "device_index": k, "primary_ip": f"10.0.{k}.10", "secondary_ips": aux,
                              "ipv6_ips": aux6_ips})
            if k:
                self.enis[ifname] = eni
                self.aux[ifname] = aux
                self.aux6[ifname] = aux6_ips
        if churn:
            batch += ["link add churn0 type veth peer name churn1", "link set churn1 up", "link set churn0 up"]
        sh("ip", "-n", self.ns, "-batch", "-", input="\n".join(batch) + "\n")
        links = json.loads(sh("ip", "-n", self.ns, "-j", "link", "show"))
        self.ifindex = {l["ifname"]: l["ifindex"] for l in links}
        scenario = {
            "task_duration_ms": task_ms,
            "keys": [{"secret_id": SECRET_ID, "secret_key": SECRET_KEY}],
            "instances": [{"id": INSTANCE, "region": REGION, "zone": f"{REGION}-3", "cam_role": "bench-role"}],
            "enis": enis_json,
        }
        self.scenario = os.path.join(self.dir, "scenario.json")
        with open(self.scenario, "w") as f:
            json.dump(scenario, f)
        self.calls = []  # (t, line)
        self.cond = threading.Condition()
        self.fake = spawn(self.ns, [BIN["fakecloud"], "--listen", f"127.0.0.1:{HTTP_PORT}", "--scenario", self.scenario,
                                    "--tls-listen", f"127.0.0.1:{PORT}", "--tls-cert", tls["cert"], "--tls-key", tls["key"], "--timestamps"])
        threading.Thread(target=self._read_fake, daemon=True).start()
        self.wait_for(lambda: any(l.startswith("fakecloud: HTTPS") for _, l in self.calls), 20, "fakecloud to listen")
        self.rtnl = Rtnl(self.ns)
        self.procs = []

    def _read_fake(self):
        log_f = open(os.path.join(self.dir, "fakecloud.log"), "w")
        for line in self.fake.stdout:
            log_f.write(line)
            log_f.flush()
            line = line.rstrip("\n")
            t = None
            if line.startswith("@"):
                stamp, line = line[1:].split(" ", 1)
                t = float(stamp)
            with self.cond:
                self.calls.append((t, line))
                self.cond.notify_all()

    def wait_for(self, pred, timeout, what):
        deadline = MONO() + timeout
        with self.cond:
            while not pred():
                left = deadline - MONO()
                if left <= 0:
                    raise TimeoutError(f"{self.tag}: waiting for {what}")
                self.cond.wait(min(left, 0.5))

    def unassigns(self):
        """[(t, eni, [ips], answer)] of every UnassignPrivateIpAddresses (and
        UnassignIpv6Addresses) the fake answered."""
        out = []
        with self.cond:
            lines = list(self.calls)
        for t, line in lines:
            m = re.match(r"v3 Unassign(?:PrivateIpAddresses|Ipv6Addresses) (\S+) \[([^\]]*)\].* -> (\S+)", line)
            if m:
                out.append((t, m.group(1), [x.strip() for x in m.group(2).split(",") if x.strip()], m.group(3)))
        return out

    def task_successes(self):
        with self.cond:
            return [t for t, l in self.calls if l.startswith("v3 DescribeVpcTaskResult") and l.endswith("SUCCESS (from 127.0.0.1)")]

    def count(self, prefix):
        with self.cond:
            return sum(1 for _, l in self.calls if l.startswith(prefix))

    def released(self, ip):
        return any(ip in ips and ans == "Success" for _, _, ips, ans in self.unassigns())

    def first_call_for(self, ip, after):
        for t, _, ips, _ in self.unassigns():
            if ip in ips and t >= after:
                return t
        return None

    def delete(self, ifname, ip, ack=True):
        return self.rtnl.delete(ip, 64 if ":" in ip else 24, self.ifindex[ifname], ack=ack)

    def close(self):
        for p in self.procs:
            stop(p)
        stop(self.fake)
        self.rtnl.close()
        sh("ip", "netns", "del", self.ns, check=False)
        if self.ns in LIVE_NS:
            LIVE_NS.remove(self.ns)


# ---------------------------------------------------------------- the three systems ----


class System:
    name = "?"
    p = None
    ready_at = None
    started_at = None

    def pid(self):
        return self.p.pid

    def wait_ready(self, timeout=60):
        deadline = MONO() + timeout
        while self.ready_at is None:
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.p.returncode}; see {self.logfile}")
            if MONO() > deadline:
                raise TimeoutError(f"{self.name} not ready within {timeout}s; see {self.logfile}")
            time.sleep(0.005)

    def stop(self):
        stop(self.p)


class Enisync(System):
    name = "enisync"

    def __init__(self, sb, grace="0ms", release=(), netlink=(), cam_role=False, env=None, argv_prefix=(),
                 cloud_extra=()):
        self.sb = sb
        d = sb.dir
        self.logfile = os.path.join(d, "enisync.log")
        self.notify_path = os.path.join(d, "notify.sock")
        self.notes = []  # (t, message)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.notify_path)
        threading.Thread(target=self._read_notify, daemon=True).start()
        cloud = [f'endpoint = "https://127.0.0.1:{PORT}/"', f'region = "{REGION}"', f'ca_file = "{TLS["ca"]}"']
        if not cam_role:
            cloud += [f'secret_id = "{SECRET_ID}"', f'secret_key = "{SECRET_KEY}"']
        cloud += list(cloud_extra)
        rel = [f'grace = "{grace}"'] + list(release)
        conf = (f"[cloud]\n" + "\n".join(cloud) + "\n\n"
                f'[metadata]\nendpoint = "http://127.0.0.1:{HTTP_PORT}/latest/meta-data/"\n\n'
                f"[release]\n" + "\n".join(rel) + "\n\n"
                f'[routing]\nmode = "cleanup"\n\n[state]\ndir = "{d}/state"\n\n'
                f'[control]\nsocket = "{d}/enisync.sock"\n\n'
                f'[log]\nformat = "plain"\nlevel = "info"\n'
                + ("\n[netlink]\n" + "\n".join(netlink) + "\n" if netlink else ""))
        self.config = os.path.join(d, "enisync.toml")
        with open(os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(conf)
        e = {"NOTIFY_SOCKET": self.notify_path}
        e.update(env or {})
        self.log_f = open(self.logfile, "w")
        self.started_at = MONO()
        self.p = spawn(sb.ns, list(argv_prefix) + [BIN["enisync"], "run", "--config", self.config], env=e,
                       stdout=self.log_f, stderr=subprocess.STDOUT)
        sb.procs.append(self.p)

    def _read_notify(self):
        while True:
            try:
                data = self.sock.recv(4096).decode(errors="replace")
            except OSError:
                return
            t = MONO()
            self.notes.append((t, data))
            if "READY=1" in data and self.ready_at is None:
                self.ready_at = t

    def log_count(self, needle):
        with open(self.logfile, errors="replace") as f:
            return sum(1 for line in f if needle in line)

    def stop(self):
        super().stop()
        self.sock.close()
        self.log_f.close()


class Shell(System):
    name = "shell+tccli"

    def __init__(self, sb, grace_s=0):
        self.sb = sb
        self.logfile = os.path.join(sb.dir, "shell.log")
        emap = os.path.join(sb.dir, "eni-map")
        with open(emap, "w") as f:
            f.writelines(f"{i} {e}\n" for i, e in sb.enis.items())
        home = os.path.join(sb.dir, "home")
        os.makedirs(home, exist_ok=True)
        env = {"ENI_MAP": emap, "ENDPOINT": f"127.0.0.1:{PORT}", "REGION": REGION,
               "TENCENTCLOUD_SECRET_ID": SECRET_ID, "TENCENTCLOUD_SECRET_KEY": SECRET_KEY,
               "TCCLI": BIN["tccli"], "GRACE": str(grace_s), "HOME": home,
               "REQUESTS_CA_BUNDLE": TLS["ca"]}
        self.lines = []
        self.started_at = MONO()
        self.p = spawn(sb.ns, ["bash", os.path.join(ROOT, "bench", "baseline_shell.sh")], env=env,
                       stderr=subprocess.STDOUT)
        sb.procs.append(self.p)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        with open(self.logfile, "w") as log_f:
            for line in self.p.stdout:
                t = MONO()
                log_f.write(line)
                log_f.flush()
                self.lines.append((t, line.strip()))
                if line.strip() == "READY" and self.ready_at is None:
                    self.ready_at = t


class Sdk(Shell):
    name = "python SDK"

    def __init__(self, sb, grace_s=0):
        self.sb = sb
        self.logfile = os.path.join(sb.dir, "sdk.log")
        cfg = {"endpoint": f"127.0.0.1:{PORT}", "region": REGION, "secret_id": SECRET_ID,
               "secret_key": SECRET_KEY, "ca_file": TLS["ca"], "grace_s": grace_s, "enis": sb.enis}
        path = os.path.join(sb.dir, "sdk.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.lines = []
        self.started_at = MONO()
        self.p = spawn(sb.ns, [BIN["python"], os.path.join(ROOT, "bench", "baseline_sdk.py"), path],
                       env={"REQUESTS_CA_BUNDLE": TLS["ca"], "PYTHONUNBUFFERED": "1"}, stderr=subprocess.STDOUT)
        sb.procs.append(self.p)
        threading.Thread(target=self._read, daemon=True).start()


def make(kind, sb, grace_s=0, **kw):
    if kind == "enisync":
        return Enisync(sb, grace=f"{int(grace_s * 1000)}ms", **kw)
    if kind == "shell":
        return Shell(sb, grace_s)
    return Sdk(sb, grace_s)


KINDS = ["enisync", "shell", "sdk"]
LABEL = {"enisync": "enisync", "shell": "shell + tccli", "sdk": "Python SDK follower"}


# ---------------------------------------------------------------- statistics ----------


def pct(xs, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(xs)
    if not s:
        return None
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


# ---------------------------------------------------------------- phases --------------


def phase_latency(kind, samples, spacing, task_ms, tmp, wrap=()):
    """Grace 0: delete one aux IP at a time; time to the Unassign arriving."""
    sb = Sandbox(f"latency-{kind}", [samples], task_ms, tmp, TLS)
    try:
        sys_ = make(kind, sb, 0, argv_prefix=wrap) if kind == "enisync" else make(kind, sb, 0)
        sys_.wait_ready()
        time.sleep(1.0)  # let `ip monitor` subscribe (baselines print READY just before)
        lat, missing = [], 0
        for ip in sb.aux["eth1"][:samples]:
            t0 = sb.delete("eth1", ip)
            try:
                sb.wait_for(lambda: sb.first_call_for(ip, t0) is not None, 20, f"Unassign of {ip}")
                lat.append((sb.first_call_for(ip, t0) - t0) * 1000)
            except TimeoutError:
                missing += 1
            time.sleep(spacing)
        log(f"latency {kind}: n={len(lat)} p50={pct(lat, 50):.2f}ms p99={pct(lat, 99):.2f}ms missing={missing}")
        return {"samples_ms": lat, "missing": missing, "p50": pct(lat, 50), "p99": pct(lat, 99)}
    finally:
        sb.close()


def phase_latency_v6(samples, spacing, task_ms, tmp):
    """IPv6, grace 0, enisync only. The kernel names no sender for IPv6 address changes;
    enisync's IPv6 deletion probe names the requester where the kernel lets it load
    (fentry programs; docs/design.md, "IPv6"), and then the figure is removal → request,
    as for IPv4. Where the probe does not load (the daemon logs "IPv6 deletion probe
    unavailable") every IPv6 removal is held until `enisync release --held`, and the
    figure is instead the time from just before the confirming CLI starts to the
    UnassignIpv6Addresses arriving (the CLI's own start-up and its control-socket round
    trip included). Samples closer than 1 s apart wait for the IPv6 call's token bucket
    (`cloud.max_ipv6_calls_per_second`, default 1)."""
    sb = Sandbox("latency-enisync-v6", [0], task_ms, tmp, TLS, aux6=samples)
    try:
        sys_ = make("enisync", sb, 0)
        sys_.wait_ready()
        time.sleep(1.0)
        probe = sys_.log_count("IPv6 deletion probe: attached") > 0
        sock = os.path.join(sb.dir, "enisync.sock")
        lat, missing = [], 0
        for n, ip in enumerate(sb.aux6["eth1"][:samples], start=1):
            if probe:
                t0 = MONO()
                sb.delete("eth1", ip)
            else:
                sb.delete("eth1", ip)
                deadline = MONO() + 20
                while sys_.log_count("held until an operator confirms") < n and MONO() < deadline:
                    time.sleep(0.002)
                t0 = MONO()
                subprocess.run([BIN["enisync"], "release", "--held", "--socket", sock], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                sb.wait_for(lambda: sb.first_call_for(ip, t0) is not None, 20, f"UnassignIpv6Addresses of {ip}")
                lat.append((sb.first_call_for(ip, t0) - t0) * 1000)
            except TimeoutError:
                missing += 1
            time.sleep(spacing)
        what = ("removal → UnassignIpv6Addresses (named by the deletion probe)" if probe
                else "confirmation (enisync release --held) → UnassignIpv6Addresses (no deletion probe)")
        log(f"latency enisync IPv6 ({what}): n={len(lat)} p50={pct(lat, 50):.2f}ms "
            f"p99={pct(lat, 99):.2f}ms missing={missing}")
        return {"samples_ms": lat, "missing": missing, "p50": pct(lat, 50), "p99": pct(lat, 99),
                "measured": what}
    finally:
        sb.close()


def phase_idle_and_grace(samples, spacing, grace_s, task_ms, idle_s, watchdog_s, tmp):
    """Three systems side by side, one namespace each: idle footprint over idle_s (no
    events), then `samples` deletions spaced `spacing` apart, each released after the
    default grace period; reports the delay beyond the grace. A fourth namespace runs an
    identical enisync under strace to name every wakeup (that one is not measured)."""
    sbs, systems = {}, {}
    traced = None
    try:
        for kind in KINDS + ["traced"]:
            sbs[kind] = Sandbox(f"grace-{kind}", [samples], task_ms, tmp, TLS)
        wd_env = {"WATCHDOG_USEC": str(watchdog_s * 1_000_000)}
        for kind in KINDS:
            if kind == "enisync":
                systems[kind] = Enisync(sbs[kind], grace=f"{grace_s}s", cam_role=True, env=wd_env)
            else:
                systems[kind] = make(kind, sbs[kind], grace_s)
        traced = Enisync(sbs["traced"], grace=f"{grace_s}s", cam_role=True, env=wd_env)
        for s in list(systems.values()) + [traced]:
            s.wait_ready()
        time.sleep(3.0)
        strace_out = os.path.join(sbs["traced"].dir, "strace.txt")
        st = None
        if shutil.which("strace"):
            st = subprocess.Popen(["strace", "-f", "-tt", "-T", "-s", "80", "-o", strace_out, "-p", str(traced.pid())],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            LIVE_PROCS.append(st)
            time.sleep(1.0)
        before = {k: (tree_cpu_s(s.pid()), tree_ctxsw(s.pid()), runtime_ns(s.pid())) for k, s in systems.items()}
        wd_before = {k: sum(1 for _, m in s.notes if "WATCHDOG=1" in m) for k, s in systems.items() if k == "enisync"}
        t_idle = MONO()
        time.sleep(idle_s)
        idle = {}
        for k, s in systems.items():
            cpu0, (v0, n0), _ = before[k]
            v1, n1 = tree_ctxsw(s.pid())
            idle[k] = {
                "cpu_ms": (tree_cpu_s(s.pid()) - cpu0) * 1000,
                "wakeups": (v1 - v0) + (n1 - n0), "voluntary": v1 - v0, "nonvoluntary": n1 - n0,
                "rss_kb": tree_rss_kb(s.pid()),
                "processes": len(tree(s.pid())),
                "threads": sum(proc_status(p, "Threads") for p in tree(s.pid())),
                "ready_ms": ((s.ready_at - s.started_at) * 1000) if s.ready_at else None,
            }
        idle["enisync"]["watchdog_pings"] = sum(1 for _, m in systems["enisync"].notes if "WATCHDOG=1" in m) - wd_before["enisync"]
        idle["enisync"]["hwm_kb"] = proc_status(systems["enisync"].pid(), "VmHWM")
        idle["enisync"]["metadata_credential_fetches"] = sbs["enisync"].count("meta cam/security-credentials/")
        if st:
            st.send_signal(signal.SIGINT)
            st.wait(10)
            idle["enisync"]["strace"] = classify_strace(strace_out, traced.notify_path)
        log("idle:", json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "strace"} for k, v in idle.items()}))
        # Grace: deletions in every namespace at the same moments.
        t0s = {k: {} for k in KINDS}
        for ip in sbs["enisync"].aux["eth1"][:samples]:
            for k in KINDS:
                t0s[k][ip] = sbs[k].delete("eth1", ip)
            time.sleep(spacing)
        out = {}
        for k in KINDS:
            sb = sbs[k]
            beyond, missing = [], 0
            for ip, t0 in t0s[k].items():
                try:
                    sb.wait_for(lambda: sb.first_call_for(ip, t0) is not None, grace_s + 60, f"Unassign of {ip}")
                    beyond.append((sb.first_call_for(ip, t0) - t0 - grace_s) * 1000)
                except TimeoutError:
                    missing += 1
            out[k] = {"beyond_ms": beyond, "missing": missing, "p50": pct(beyond, 50), "p99": pct(beyond, 99)}
            log(f"grace {k}: beyond p50={out[k]['p50']} p99={out[k]['p99']} missing={missing}")
        return idle, out
    finally:
        for s in list(systems.values()) + ([traced] if traced else []):
            s.stop()
        for sb in sbs.values():
            sb.close()


def classify_strace(path, notify_path):
    """Names each wakeup of the traced enisync. A wakeup is a blocking wait
    (epoll_wait/futex) that slept more than 1 ms and returned; it is named by what the
    thread did before it blocked again: sent WATCHDOG=1 (watchdog ping), dumped netlink
    (periodic resync), connected to the metadata service (credential refresh), nothing
    at all (a step of tokio's hierarchical timer wheel toward a later deadline), or
    anything else ("other", with examples)."""
    try:
        lines = open(path, errors="replace").read().splitlines()
    except FileNotFoundError:
        return {"error": "no strace output"}
    wakeups, cur = [], None
    for line in lines:
        m = re.match(r"(\d+)\s+(\d\d:\d\d:\d\d\.\d+)\s+(.*)", line)
        if not m:
            continue
        call = m.group(3)
        if "<unfinished ...>" in call or "+++" in call or "---" in call:
            continue
        dur = re.search(r"<(\d+\.\d+)>\s*$", call)
        slept = dur is not None and float(dur.group(1)) > 0.001
        blocking = re.match(r"(<\.\.\. )?(epoll_wait|epoll_pwait2?|futex)", call) is not None
        if blocking and slept:
            cur = {"at": m.group(2), "tid": m.group(1), "woke_by": call[:90], "next": []}
            wakeups.append(cur)
            continue
        if cur is not None and len(cur["next"]) < 8 and not (blocking and not slept and call.startswith("epoll")):
            cur["next"].append(call[:140])
    named = {"watchdog ping": 0, "periodic resync": 0, "credential refresh": 0,
             "timer-wheel step (no work)": 0, "other": 0}
    for w in wakeups:
        text = " ".join(w["next"])
        if "WATCHDOG=1" in text:
            w["source"] = "watchdog ping"
        elif "RTM_GETADDR" in text or "RTM_GETLINK" in text:
            w["source"] = "periodic resync"
        elif f"htons({HTTP_PORT})" in text:
            w["source"] = "credential refresh"
        elif not w["next"]:
            w["source"] = "timer-wheel step (no work)"
        else:
            w["source"] = "other"
        named[w["source"]] += 1
    return {"wakeups": len(wakeups), "by_source": named,
            "other_examples": [w for w in wakeups if w["source"] == "other"][:5],
            "all": [(w["at"], w["source"]) for w in wakeups]}


def phase_mass(kind, n_enis, per_eni, task_ms, bound_s, tmp, release_extra, cloud_extra=()):
    """All aux IPs of n_enis ENIs deleted at once."""
    sb = Sandbox(f"mass-{kind}", [per_eni] * n_enis, task_ms, tmp, TLS)
    s = None
    try:
        extra = {"release": release_extra, "cloud_extra": cloud_extra} if kind == "enisync" else {}
        s = make(kind, sb, 0, **extra)
        s.wait_ready()
        time.sleep(1.0)
        sampler = RssSampler(s.pid())
        sampler.start()
        cpu0 = tree_cpu_s(s.pid())
        all_ips = [(i, ip) for i in sb.aux for ip in sb.aux[i]]
        t0 = MONO()
        for i, ip in all_ips:
            sb.delete(i, ip, ack=False)
        sb.rtnl.acks(len(all_ips))
        t_deleted = MONO()
        want = {ip for _, ip in all_ips}

        def all_released():
            done = set()
            for _, _, ips, ans in sb.unassigns():
                if ans == "Success":
                    done.update(ips)
            return want <= done

        bound_hit = False
        try:
            sb.wait_for(all_released, bound_s, "every IP released")
        except TimeoutError:
            bound_hit = True
        ok = [(t, e, ips) for t, e, ips, a in sb.unassigns() if a == "Success"]
        released = set()
        dup = 0
        for _, _, ips in ok:
            for ip in ips:
                dup += ip in released
                released.add(ip)
        released &= want
        cloud_done = (max(t for t, _, _ in ok) + task_ms / 1000 - t0) if ok and not bound_hit else None
        agent_done = None
        if kind != "shell" and not bound_hit:
            # The agent saw every task end: as many SUCCESS polls as successful calls.
            try:
                sb.wait_for(lambda: len(sb.task_successes()) >= len(ok), 30, "task results")
                agent_done = max(sb.task_successes()) - t0
            except TimeoutError:
                pass
        time.sleep(0.5)
        peak_kb = sampler.stop()
        r = {
            "calls_total": len(sb.unassigns()), "calls_ok": len(ok),
            "calls_refused": len(sb.unassigns()) - len(ok),
            "describe_calls": sb.count("v3 DescribeNetworkInterfaces"),
            "task_polls": sb.count("v3 DescribeVpcTaskResult"),
            "released": len(released), "of": len(want), "duplicates": dup,
            "bound_hit": bound_hit, "bound_s": bound_s,
            "delete_s": t_deleted - t0,
            "all_success_s": cloud_done, "agent_confirmed_s": agent_done,
            "peak_rss_kb": peak_kb, "cpu_ms": (tree_cpu_s(s.pid()) - cpu0) * 1000,
            # Per ENI, the size of each successful call in order: shows how a burst split.
            "batches": {eni: [len(ips) for _, e, ips, ans in sb.unassigns() if e == eni and ans == "Success"]
                        for eni in sorted({e for _, e, _, _ in sb.unassigns()})},
        }
        if kind == "enisync":
            r["hwm_kb"] = proc_status(s.pid(), "VmHWM")
        log(f"mass {kind}:", json.dumps(r))
        return r
    finally:
        if s:
            s.stop()
        sb.close()


def phase_load(events, aux_n, task_ms, tmp, netlink_extra, label, wrap=()):
    """enisync only: `events` address add/delete events, mostly churn on a non-ENI veth,
    with aux_n aux-IP deletions on eth1 spread through them. CPU per event, overruns,
    every aux IP released exactly once."""
    sb = Sandbox(f"load-{label}", [aux_n], task_ms, tmp, TLS, churn=True)
    s = None
    try:
        s = Enisync(sb, grace="0ms", release=["burst_limit = 100000"], netlink=netlink_extra, argv_prefix=wrap)
        s.wait_ready()
        time.sleep(1.0)
        churn_events = events - aux_n
        pairs = churn_events // 2
        working = 200
        aux = list(sb.aux["eth1"])
        # Build rounds: add `working` addresses, delete them, until pairs are used up.
        batch = []
        done = 0
        while done < pairs:
            k = min(working, pairs - done)
            batch += [f"addr add 10.200.{c // 250}.{c % 250 + 1}/32 dev churn0" for c in range(k)]
            batch += [f"addr del 10.200.{c // 250}.{c % 250 + 1}/32 dev churn0" for c in range(k)]
            done += k
        # Spread the aux deletions evenly through the batch.
        step = len(batch) // (aux_n + 1)
        for i, ip in enumerate(aux):
            batch.insert((i + 1) * step + i, f"addr del {ip}/24 dev eth1")
        assert len(batch) == pairs * 2 + aux_n
        path = os.path.join(sb.dir, "load.batch")
        with open(path, "w") as f:
            f.write("\n".join(batch) + "\n")
        pid = s.pid()
        cpu0, rt0 = cpu_s(pid), runtime_ns(pid)
        t0 = MONO()
        sh("ip", "-n", sb.ns, "-batch", path)
        t_batch = MONO() - t0
        want = set(aux)

        def settled():
            got = set()
            for _, _, ips, ans in sb.unassigns():
                if ans == "Success":
                    got.update(ips)
            return want <= got

        try:
            sb.wait_for(settled, 120, "every aux IP released")
        except TimeoutError:
            pass
        # Let the tasks and routing finish, then read the CPU.
        time.sleep(3.0)
        cpu1, rt1 = cpu_s(pid), runtime_ns(pid)
        counts = {}
        for _, _, ips, ans in sb.unassigns():
            if ans == "Success":
                for ip in ips:
                    counts[ip] = counts.get(ip, 0) + 1
        r = {
            "events": len(batch), "batch_s": t_batch,
            "cpu_us_per_event": (cpu1 - cpu0) * 1e6 / len(batch),
            "runtime_us_per_event": (rt1 - rt0) / 1000 / len(batch),
            "overruns": s.log_count("overran"),
            "resyncs_logged": s.log_count("resync"),
            "aux_removed": aux_n,
            "released_once": sum(1 for ip in want if counts.get(ip) == 1),
            "lost": sum(1 for ip in want if ip not in counts),
            "duplicates": sum(1 for ip in want if counts.get(ip, 0) > 1),
            "foreign_released": sum(1 for ip in counts if ip not in want),
            "calls": len(sb.unassigns()),
            "hwm_kb": proc_status(pid, "VmHWM"), "rss_kb": proc_status(pid, "VmRSS"),
            "receive_buffer": netlink_extra,
        }
        log(f"load {label}:", json.dumps(r))
        return r
    finally:
        if s:
            s.stop()
        sb.close()


# ---------------------------------------------------------------- the table -----------


def fmt(v, unit="", nd=1):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return f"{v:.{nd}f}{unit}"
    return f"{v}{unit}"


def ratio(a, b):
    if a is None or b is None or not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or b == 0:
        return "—"
    r = a / b
    return f"{r:.3f}" if r < 0.1 else f"{r:.2f}"


def build_table(R, args):
    rows = []  # (figure, enisync, shell, ratio, sdk, ratio, target, verdict)

    def row(fig, e, s, p, target="", ok=None, unit="", nd=1, rs=None, rp=None):
        rows.append([fig, fmt(e, unit, nd), fmt(s, unit, nd), rs if rs is not None else ratio(e, s),
                     fmt(p, unit, nd), rp if rp is not None else ratio(e, p), target,
                     "" if ok is None else ("met" if ok else "MISSED")])

    L = R.get("latency", {})
    if L:
        e, s, p = L.get("enisync", {}), L.get("shell", {}), L.get("sdk", {})
        row("latency, grace 0: p50 (ms)", e.get("p50"), s.get("p50"), p.get("p50"), nd=2)
        e99 = e.get("p99")
        ok = e99 is not None and e99 <= 5 and all(e99 < (x.get("p99") or 1e9) for x in (s, p))
        row(f"latency, grace 0: p99 (ms) [n={len(e.get('samples_ms', []))}/{len(s.get('samples_ms', []))}/{len(p.get('samples_ms', []))}]",
            e99, s.get("p99"), p.get("p99"), "≤ 5 ms, < both", ok, nd=2)
    L6 = R.get("latency6")
    if L6:
        start = "removal" if L6.get("measured", "").startswith("removal") else "confirmation"
        row(f"IPv6 {start} → UnassignIpv6Addresses: p50 (ms) [n={len(L6.get('samples_ms', []))}]",
            L6.get("p50"), None, None, nd=2)
        row(f"IPv6 {start} → UnassignIpv6Addresses: p99 (ms)", L6.get("p99"), None, None, nd=2)
    G = R.get("grace", {})
    if G:
        e, s, p = G.get("enisync", {}), G.get("shell", {}), G.get("sdk", {})
        row(f"latency beyond the {args.grace_s} s grace: p50 (ms)", e.get("p50"), s.get("p50"), p.get("p50"), nd=1)
        row(f"latency beyond the {args.grace_s} s grace: p99 (ms) [n={len(e.get('beyond_ms', []))} each]",
            e.get("p99"), s.get("p99"), p.get("p99"), nd=1)
    M = R.get("mass", {})
    if M:
        e, s, p = M.get("enisync", {}), M.get("shell", {}), M.get("sdk", {})
        minimum = args.mass_enis * -(-args.mass_per_eni // 10)
        row(f"mass release {args.mass_enis}×{args.mass_per_eni}: successful Unassign calls (min {minimum})",
            e.get("calls_ok"), s.get("calls_ok"), p.get("calls_ok"), f"= {minimum}", e.get("calls_ok") == minimum, nd=0)
        row("mass release: Unassign calls refused (busy ENI, retried)", e.get("calls_refused"), s.get("calls_refused"),
            p.get("calls_refused"), nd=0)

        def done(x):
            if not x:
                return None
            if x.get("bound_hit"):
                return f">{x['bound_s']} (bound; {x['released']}/{x['of']} released)"
            return x.get("all_success_s")
        ok = e.get("released") == e.get("of") and not e.get("bound_hit")
        row("mass release: time until every task is SUCCESS (s)", done(e), done(s), done(p), "all SUCCESS", ok, nd=2,
            rs=ratio(e.get("all_success_s"), s.get("all_success_s")) if not s.get("bound_hit") else f"< {ratio(e.get('all_success_s'), s.get('bound_s'))}",
            rp=ratio(e.get("all_success_s"), p.get("all_success_s")) if not p.get("bound_hit") else "—")
        row("mass release: agent saw every task end (s)", e.get("agent_confirmed_s"), "never polls", p.get("agent_confirmed_s"),
            nd=2, rs="—")
        # The other side of "saw every task end": each poll spends the account-wide
        # DescribeVpcTaskResult budget (20 req/s per account, shared by every node).
        row("mass release: task polls (DescribeVpcTaskResult; 20 req/s per account)", e.get("task_polls"),
            "never polls", p.get("task_polls"), nd=0, rs="—")
        row("mass release: CPU used (ms)", e.get("cpu_ms"), s.get("cpu_ms"), p.get("cpu_ms"), nd=0)
    for key in ("load", "load_overrun"):
        Ld = R.get(key)
        if not Ld:
            continue
        tag = "default buffer" if key == "load" else f"small buffer ({Ld['receive_buffer'][0] if Ld['receive_buffer'] else ''})"
        row(f"netlink load, {Ld['events']} events, {tag}: CPU per event (µs, utime+stime)", Ld["cpu_us_per_event"],
            "n/a", "n/a", "≤ 10 µs", Ld["cpu_us_per_event"] <= 10, nd=2)
        row(f"netlink load, {tag}: overruns / aux released exactly once / lost / duplicated",
            f"{Ld['overruns']} / {Ld['released_once']} of {Ld['aux_removed']} / {Ld['lost']} / {Ld['duplicates']}",
            "n/a", "n/a", "0 lost", Ld["lost"] == 0 and Ld["duplicates"] == 0 and Ld["foreign_released"] == 0)
    I = R.get("idle", {})
    if I:
        e, s, p = I.get("enisync", {}), I.get("shell", {}), I.get("sdk", {})
        mb = lambda kb: None if kb is None else kb / 1024
        row("footprint: RSS idle (MiB, whole process tree)", mb(e.get("rss_kb")), mb(s.get("rss_kb")), mb(p.get("rss_kb")),
            "≤ 10 MB", e.get("rss_kb", 1e9) <= 10 * 1000, nd=1)
        peaks = [(R.get("mass", {}).get("enisync", {}).get("hwm_kb"), "mass"),
                 (R.get("load", {}).get("hwm_kb") if R.get("load") else None, "load"),
                 (R.get("load_overrun", {}).get("hwm_kb") if R.get("load_overrun") else None, "load, small buffer"),
                 (e.get("hwm_kb"), "idle")]
        peaks = [x for x in peaks if x[0]]
        pk = max(peaks) if peaks else (None, "")
        row(f"footprint: RSS peak (MiB; enisync VmHWM, max in {pk[1]}; baselines: sampled tree peak in mass release)",
            mb(pk[0]), mb(R.get("mass", {}).get("shell", {}).get("peak_rss_kb")),
            mb(R.get("mass", {}).get("sdk", {}).get("peak_rss_kb")), "≤ 20 MB", (pk[0] or 1e9) <= 20 * 1000, nd=1)
        B = R.get("binary", {})
        row("footprint: stripped binary / install size (MiB)", mb(B.get("enisync_kb")), mb(B.get("tccli_venv_kb")),
            mb(B.get("sdk_venv_kb")), nd=1)
        row("footprint: start to READY (ms)", e.get("ready_ms"), s.get("ready_ms"), p.get("ready_ms"), "≤ 100 ms",
            (e.get("ready_ms") or 1e9) <= 100, nd=1)
        row(f"footprint: CPU over {args.idle_s} idle s (ms)", e.get("cpu_ms"), s.get("cpu_ms"), p.get("cpu_ms"), nd=0)
        named = e.get("watchdog_pings")
        st = e.get("strace", {})
        src = st.get("by_source") if isinstance(st, dict) else None
        ok = None
        if src is not None:
            # Strict: a timer-wheel step is a wakeup beyond the named one it leads to.
            ok = src.get("other", 1) == 0 and src.get("timer-wheel step (no work)", 0) == 0
        row(f"footprint: wakeups over {args.idle_s} idle s (ctx switches, all threads)",
            f"{e.get('wakeups')} ({named} watchdog pings)", s.get("wakeups"), p.get("wakeups"),
            "only named sources", ok, rs=ratio(e.get("wakeups"), s.get("wakeups")), rp=ratio(e.get("wakeups"), p.get("wakeups")))
        if src is not None:
            row("footprint: idle wakeups by source (strace, second instance)",
                ", ".join(f"{k} {v}" for k, v in src.items()), "", "", rs="", rp="")
    head = ["figure", "enisync", "shell + tccli", "ratio", "Python SDK", "ratio", "target", "enisync"]
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    md = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    md += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    text = ["  ".join(str(h).ljust(w) for h, w in zip(head, widths))]
    text += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(text), "\n".join(md)


# ---------------------------------------------------------------- main ----------------

BIN = {}
TLS = {}


def du_kb(path):
    try:
        return int(sh("du", "-sk", path).split()[0])
    except Exception:
        return None


def machine():
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            info["cpu"] = m.group(1) if m else "?"
    except OSError:
        pass
    info["cores"] = os.cpu_count()
    info["kernel"] = os.uname().release
    info["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    try:
        info["os"] = re.search(r'PRETTY_NAME="(.*)"', open("/etc/os-release").read()).group(1)
    except Exception:
        pass
    with open("/proc/meminfo") as f:
        info["mem_gib"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    return info


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "--warm":
        warm_main(float(sys.argv[2]), [int(p) for p in sys.argv[3:]])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--venv", required=True)
    ap.add_argument("--tls-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--phases", default="latency,idle,mass,load")
    ap.add_argument("--latency-samples", type=int, default=100)
    ap.add_argument("--latency-spacing", type=float, default=0.7)
    ap.add_argument("--tccli-latency-samples", type=int, default=30)
    ap.add_argument("--tccli-spacing", type=float, default=2.5)
    ap.add_argument("--latency-task-ms", type=int, default=100)
    ap.add_argument("--grace-s", type=int, default=30)
    ap.add_argument("--grace-samples", type=int, default=8)
    ap.add_argument("--grace-spacing", type=float, default=2.5)
    ap.add_argument("--idle-s", type=int, default=60)
    ap.add_argument("--watchdog-s", type=int, default=20)
    ap.add_argument("--mass-enis", type=int, default=8)
    ap.add_argument("--mass-per-eni", type=int, default=30)
    ap.add_argument("--task-ms", type=int, default=1000)
    ap.add_argument("--mass-bound-s", type=int, default=150)
    ap.add_argument("--mass-rate", default="")
    ap.add_argument("--load-events", type=int, default=50000)
    ap.add_argument("--load-aux", type=int, default=30)
    ap.add_argument("--overrun-buffer", type=int, default=32768)
    ap.add_argument("--kinds", default="enisync,shell,sdk", help="systems for latency and mass")
    ap.add_argument("--family", default="4", help="latency: 4, 6 or 4,6 (6: enisync's IPv6 path, see phase_latency_v6)")
    ap.add_argument("--enisync-wrap", default="", help="prefix for enisync's argv in the latency phase (profiling), e.g. 'strace -f -tt -o /tmp/s'")
    args = ap.parse_args()
    BIN.update(enisync=os.path.join(args.bin_dir, "enisync"), fakecloud=os.path.join(args.bin_dir, "fakecloud"),
               tccli=os.path.join(args.venv, "bin", "tccli-ca"), python=os.path.join(args.venv, "bin", "python"))
    TLS.update(ca=os.path.join(args.tls_dir, "ca.pem"), cert=os.path.join(args.tls_dir, "server.pem"),
               key=os.path.join(args.tls_dir, "server.key"))
    phases = set(args.phases.split(","))
    tmp = tempfile.mkdtemp(prefix="enisync-bench.", dir=os.environ.get("BENCH_TMP", "/var/tmp"))
    R = {"machine": machine(), "args": vars(args), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    t_start = MONO()
    try:
        R["binary"] = {"enisync_kb": os.path.getsize(BIN["enisync"]) / 1024,
                       "enisync_file": sh("file", "-b", BIN["enisync"]).strip() if shutil.which("file") else "",
                       "tccli_venv_kb": du_kb(args.venv), "sdk_venv_kb": du_kb(args.venv)}
        if "latency" in phases:
            R["latency"] = {}
            for kind in args.kinds.split(","):
                n, sp = (args.tccli_latency_samples, args.tccli_spacing) if kind == "shell" else (args.latency_samples, args.latency_spacing)
                R["latency"][kind] = phase_latency(kind, n, sp, args.latency_task_ms, tmp, args.enisync_wrap.split())
            if "6" in args.family.split(","):
                R["latency6"] = phase_latency_v6(args.latency_samples, args.latency_spacing, args.latency_task_ms, tmp)
        if "idle" in phases:
            R["idle"], R["grace"] = phase_idle_and_grace(args.grace_samples, args.grace_spacing, args.grace_s,
                                                         args.latency_task_ms, args.idle_s, args.watchdog_s, tmp)
        if "mass" in phases:
            R["mass"] = {}
            rel = ["burst_limit = 1000"]
            cloud_extra = [f"max_calls_per_second = {args.mass_rate}"] if args.mass_rate else []
            R["mass"]["release_config"] = rel + cloud_extra
            for kind in args.kinds.split(","):
                R["mass"][kind] = phase_mass(kind, args.mass_enis, args.mass_per_eni, args.task_ms, args.mass_bound_s, tmp,
                                             rel, cloud_extra)
        if "load" in phases:
            R["load"] = phase_load(args.load_events, args.load_aux, args.latency_task_ms, tmp, [], "default",
                                   args.enisync_wrap.split())
            if args.enisync_wrap:
                return
            R["load_overrun"] = phase_load(args.load_events, args.load_aux, args.latency_task_ms, tmp,
                                           [f"receive_buffer = {args.overrun_buffer}"], "small")
    finally:
        for p in LIVE_PROCS:
            stop(p, 2)
        for ns in list(LIVE_NS):
            sh("ip", "netns", "del", ns, check=False)
        R["duration_s"] = MONO() - t_start
        R["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(R, f, indent=1, default=str)
        if os.environ.get("BENCH_KEEP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log("kept", tmp)
    text, md = build_table(R, args)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(md + "\n")
    print(text)
    print(f"\nrun time {R['duration_s']:.0f} s; machine {R['machine']}; results in {args.out}/results.json")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Baseline 2: a long-lived Python follower with the official Tencent Cloud SDK, done well.

Follows `ip -o -4 monitor address`. A deleted IPv4 address on an ENI-backed interface
becomes pending; an address added back cancels it. When its grace period ends, it joins
its ENI's queue. One worker thread per ENI sends at most 10 IPs per
`UnassignPrivateIpAddresses` (after a sliding 20 ms coalescing window, capped at
100 ms, as enisync does), retries busy-ENI and throttling answers, and polls
`DescribeVpcTaskResult` every 200 ms until the task ends, before the ENI's next call.

Run by bench/bench.py inside the benchmark's namespace, with one argument: a JSON file
{"endpoint": "127.0.0.1:8443", "region": ..., "secret_id": ..., "secret_key": ...,
 "ca_file": ..., "grace_s": 0, "enis": {"eth1": "eni-..."}}.
Prints READY once it follows events, and one line per call outcome.
"""

import json
import queue
import subprocess
import sys
import threading
import time

from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.vpc.v20170312 import models, vpc_client

COALESCE = 0.020
COALESCE_CAP = 0.100
POLL = 0.2
RETRY = 0.2
MAX_ATTEMPTS = 50
TASK_CAP = 120.0

cfg = json.load(open(sys.argv[1]))
out_lock = threading.Lock()


def say(*words):
    with out_lock:
        print(*words, flush=True)


def client():
    http = HttpProfile(endpoint=cfg["endpoint"], reqTimeout=10, keepAlive=True)
    # The SDK passes certifi's bundle to requests explicitly, so REQUESTS_CA_BUNDLE alone
    # is not enough: a private CA is given through HttpProfile.certification.
    http.certification = cfg["ca_file"]
    cred = credential.Credential(cfg["secret_id"], cfg["secret_key"])
    return vpc_client.VpcClient(cred, cfg["region"], ClientProfile(httpProfile=http))


class EniWorker(threading.Thread):
    def __init__(self, eni):
        super().__init__(daemon=True)
        self.eni = eni
        self.q = queue.Queue()
        self.cli = client()

    def run(self):
        while True:
            batch = [self.q.get()]
            first = time.monotonic()
            # Sliding window: wait while more arrive within COALESCE, up to the cap.
            while len(batch) < 10:
                left = min(COALESCE, first + COALESCE_CAP - time.monotonic())
                if left <= 0:
                    break
                try:
                    batch.append(self.q.get(timeout=left))
                except queue.Empty:
                    break
            self.release(batch)

    def release(self, ips):
        req = models.UnassignPrivateIpAddressesRequest()
        req.NetworkInterfaceId = self.eni
        specs = []
        for ip in ips:
            s = models.PrivateIpAddressSpecification()
            s.PrivateIpAddress = ip
            specs.append(s)
        req.PrivateIpAddresses = specs
        for _ in range(MAX_ATTEMPTS):
            try:
                resp = self.cli.UnassignPrivateIpAddresses(req)
                break
            except TencentCloudSDKException as e:
                code = e.get_code() or ""
                if "MutexOperationTaskRunning" in code or "LimitExceeded" in code or "ClientNetworkError" in code:
                    time.sleep(RETRY)
                    continue
                say("failed", self.eni, ",".join(ips), code)
                return
        else:
            say("failed", self.eni, ",".join(ips), "attempts")
            return
        task = resp.RequestId
        treq = models.DescribeVpcTaskResultRequest()
        treq.TaskId = task
        deadline = time.monotonic() + TASK_CAP
        while time.monotonic() < deadline:
            time.sleep(POLL)
            try:
                status = self.cli.DescribeVpcTaskResult(treq).Status
            except TencentCloudSDKException:
                continue
            if status != "RUNNING":
                say("task", self.eni, ",".join(ips), status)
                return
        say("task", self.eni, ",".join(ips), "TIMEOUT")


def main():
    workers = {}
    for ifname, eni in cfg["enis"].items():
        w = EniWorker(eni)
        w.start()
        workers[ifname] = w
    grace = float(cfg.get("grace_s", 0))
    pending = {}  # ip -> (ifname, due)
    cond = threading.Condition()

    def timer():
        # Sleeps until the earliest due removal (no periodic wakeups while idle).
        with cond:
            while True:
                now = time.monotonic()
                for ip in [ip for ip, (_, d) in pending.items() if d <= now]:
                    workers[pending.pop(ip)[0]].q.put(ip)
                nxt = min((d for _, d in pending.values()), default=None)
                cond.wait(None if nxt is None else max(0.0, nxt - now))

    if grace:
        threading.Thread(target=timer, daemon=True).start()
    mon = subprocess.Popen(["ip", "-o", "-4", "monitor", "address"], stdout=subprocess.PIPE, text=True, bufsize=1)
    say("READY")
    for line in mon.stdout:
        words = line.split()
        if len(words) < 5:
            continue
        deleted = words[0] == "Deleted"
        if deleted:
            words = words[1:]
        ifname, family, cidr = words[1], words[2], words[3]
        if family != "inet":
            continue
        ip = cidr.split("/")[0]
        if not deleted:
            with cond:
                pending.pop(ip, None)
            continue
        if ifname not in workers:
            continue
        if not grace:
            workers[ifname].q.put(ip)
        else:
            with cond:
                pending[ip] = (ifname, time.monotonic() + grace)
                cond.notify()


if __name__ == "__main__":
    main()

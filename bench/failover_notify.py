#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""The baseline of bench/failover.py: the notify-script recipe of Tencent Cloud's keepalived
guide. keepalived runs it from `notify_master` on the node that has just become MASTER
(after it added the VIP). It moves the VIP from the peer's ENI to this node's ENI with
`MigratePrivateIpAddress` through the official SDK (tencentcloud-sdk-python), with the
keys and the ENI ids written in the script, and a fixed number of attempts. It looks
nothing up and does not follow the task.

This file is a template: bench/failover.py writes one copy per node with the @...@
values filled in. The two lines marked "bench only" point the SDK at the fake cloud and
its test CA; in the guide the endpoint is the public one and the CA the system's.
"""

import json
import sys
import time

from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.vpc.v20170312 import models, vpc_client

SECRET_ID = "@SECRET_ID@"
SECRET_KEY = "@SECRET_KEY@"
REGION = "@REGION@"
VIP = "@VIP@"
THIS_ENI = "@THIS_ENI@"  # this node's ENI: the VIP moves here
PEER_ENI = "@PEER_ENI@"  # the other node's ENI: the VIP comes from there
ENDPOINT = "@ENDPOINT@"  # bench only (the guide: vpc.tencentcloudapi.com)
CA_FILE = "@CA_FILE@"  # bench only: the benchmark's throwaway CA
LOG = "@LOG@"
ATTEMPTS = 3
RETRY_INTERVAL_S = 1


def log(*words):
    with open(LOG, "a") as f:
        print(time.strftime("%H:%M:%S"), *words, file=f)


def migrate_vip():
    cred = credential.Credential(SECRET_ID, SECRET_KEY)
    http_profile = HttpProfile()
    http_profile.endpoint = ENDPOINT
    http_profile.certification = CA_FILE  # bench only
    client = vpc_client.VpcClient(cred, REGION, ClientProfile(httpProfile=http_profile))
    req = models.MigratePrivateIpAddressRequest()
    req.from_json_string(json.dumps({
        "SourceNetworkInterfaceId": PEER_ENI,
        "DestinationNetworkInterfaceId": THIS_ENI,
        "PrivateIpAddress": VIP,
    }))
    for attempt in range(1, ATTEMPTS + 1):
        try:
            resp = client.MigratePrivateIpAddress(req)
            log("migrated", VIP, PEER_ENI, "->", THIS_ENI, resp.to_json_string())
            return 0
        except TencentCloudSDKException as err:
            log("attempt", attempt, "failed:", err)
            if attempt < ATTEMPTS:
                time.sleep(RETRY_INTERVAL_S)
    return 1


if __name__ == "__main__":
    sys.exit(migrate_vip())

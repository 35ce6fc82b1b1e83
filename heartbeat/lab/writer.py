#!/usr/bin/env python3
"""Acked-write recorder for the failover lab: sets k<i>=v<i> through the tap until a stop
file appears (or MAX_SECONDS), logging every acknowledged write with a timestamp.
usage: writer.py HOST:PORT LOGFILE STOPFILE [MAX_SECONDS] [PREFIX]"""
import os, sys, time
from pymemcache.client.base import Client

host, port = sys.argv[1].rsplit(":", 1)
log = open(sys.argv[2], "a", buffering=1)
stop, max_s = sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 120
prefix = sys.argv[5] if len(sys.argv) > 5 else "w"
c = None
t_end = time.time() + max_s
i = 0
while time.time() < t_end and not os.path.exists(stop):
    key, val = "%s%d" % (prefix, i), "v%d-%s" % (i, prefix)
    try:
        if c is None:
            c = Client((host, int(port)), connect_timeout=1, timeout=3, default_noreply=False)
        if c.set(key, val.encode()):
            log.write("ack %.6f %s %s\n" % (time.time(), key, val))
            i += 1
        else:
            log.write("nak %.6f %s\n" % (time.time(), key))
    except Exception as e:  # the service is moving: retry with the next key
        log.write("err %.6f %s %s\n" % (time.time(), key, str(e).replace("\n", " ")[:120]))
        c = None
        i += 1
        time.sleep(0.05)
    time.sleep(0.002)

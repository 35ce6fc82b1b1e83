#!/usr/bin/env bash
# failover-lab.sh - Understudy under real heartbeat 3.0.6, in network namespaces.
#
# Two cluster nodes (usA 10.78.0.1, usB 10.78.0.2), each with memcached, `understudy serve`
# and heartbeat (v1 haresources: "usa understudy IPaddr2::VIP"), and a client namespace
# (usC) running `understudy tap` against the VIP in sync mode plus a writer that records
# every acknowledged write. Everything lives in namespaces this script creates; the host's
# network is never touched. Adapted from the lab recipe in the project's DESIGN notes.
#
#   failover-lab.sh check        exit 0 if this machine can run the lab, else print why
#   failover-lab.sh run          the whole scenario: crash, rejoin, partition/heal;
#                                prints RESULT key=value lines, exits 0 if all checks pass
#   failover-lab.sh down         kill everything in the lab namespaces (by pid), delete them
#
# Environment: UNDERSTUDY_BIN (the built binary), PYTHON (a python3 with pymemcache),
# LAB_STATE (default /tmp/understudy-lab), MAX_SECONDS (watchdog, default 240).
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RA=$HERE/../understudy
BIN=${UNDERSTUDY_BIN:-/usr/local/bin/understudy}
PYTHON=${PYTHON:-python3}
STATE=${LAB_STATE:-/tmp/understudy-lab}
MAX_SECONDS=${MAX_SECONDS:-240}
NET=10.78.0
HB=/usr/libexec/heartbeat/heartbeat
NS_A=usA NS_B=usB NS_C=usC NS_NET=usNet
SECRET=$STATE/secret
# shellcheck source=lab-common.sh
. "$HERE/lab-common.sh"

can_run() {
    local b
    for b in "$HB" /usr/lib/ocf/resource.d/heartbeat/IPaddr2 /usr/bin/unshare /usr/bin/nsenter /usr/bin/memcached "$BIN"; do
        [ -x "$b" ] || { echo "missing $b (apt-get install heartbeat resource-agents memcached)"; return 1; }
    done
    can_make_namespaces
}

fresh_run_dir() {  # fresh_run_dir NS: the node's /run, as after a boot
    local d=$STATE/$1/run
    rm -rf "$d"; mkdir -p "$d/heartbeat/ccm" "$d/heartbeat/crm" "$d/heartbeat/dopd" "$d/crm" "$d/resource-agents" "$d/lock" "$d/understudy"
    chown -R hacluster:haclient "$d/heartbeat" "$d/crm"
    chmod 750 "$d/heartbeat" "$d/heartbeat/ccm" "$d/heartbeat/crm" "$d/heartbeat/dopd" "$d/crm"
    chmod 1777 "$d/lock"; chmod 1755 "$d/resource-agents"; chmod 700 "$d/understudy"
    ln -s /dev/shm "$d/shm"
}

node_prepare() {
    local ns=$1 d=$STATE/$1 peer
    peer=$(peer_of "$ns")
    rm -rf "$d"; mkdir -p "$d/log" "$d/state"
    cp -a /etc/ha.d "$d/etc-ha.d"
    cp -a /var/lib/heartbeat "$d/varlib"
    fresh_run_dir "$ns"
    cat > "$d/etc-ha.d/ha.cf" <<HA
logfile $d/log/ha-log
debugfile $d/log/ha-debug
logfacility none
use_logd no
udpport 694
keepalive 200ms
warntime 500ms
deadtime 1
initdead 10
ucast eth0 $(ip_of "$peer")
auto_failback off
node usa
node usb
crm off
HA
    printf 'auth 1\n1 sha1 understudy-lab-not-a-secret\n' > "$d/etc-ha.d/authkeys"
    chmod 600 "$d/etc-ha.d/authkeys"
    echo "usa understudy IPaddr2::$VIP/24/eth0" > "$d/etc-ha.d/haresources"
    sed "s#^BIN=.*#BIN=$BIN#" "$RA" > "$d/etc-ha.d/resource.d/understudy"
    chmod 755 "$d/etc-ha.d/resource.d/understudy"
}

# The daemon and heartbeat run in the node's own mount + UTS namespace (its /run, /etc/ha.d).
node_start() {
    local ns=$1 d=$STATE/$1 peer
    peer=$(peer_of "$ns")
    timeout 20 ip netns exec "$ns" unshare --mount --uts --propagation private -- /bin/sh -c '
        set -e
        hostname "$1"
        mount --bind "$2/etc-ha.d" /etc/ha.d
        mount --bind "$2/varlib"   /var/lib/heartbeat
        mount --bind "$2/run"      /run
        ulimit -l unlimited 2>/dev/null || true
        setsid "$4" serve --role passive --memcached 127.0.0.1:11211 --listen "$5:11311,$8:11311" \
            --peer "$6:11311" --peer-memcached "$6:11211" --secret-file "$7" \
            --control /run/understudy/control.sock --state-dir "$2/state" \
            --probe-interval 200 --probe-failures 5 >> "$2/log/understudy.log" 2>&1 < /dev/null &
        i=0; while [ ! -S /run/understudy/control.sock ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
        exec "$3"
    ' lab-node "$(host_of "$ns")" "$d" "$HB" "$BIN" "$(ip_of "$ns")" "$(ip_of "$peer")" "$SECRET" "$VIP" \
        >> "$d/log/start.out" 2>&1 || { log "start of $ns failed: $(tail -3 "$d/log/start.out")"; return 1; }
}

hb_pid() { tr -dc 0-9 < "$STATE/$1/run/heartbeat.pid" 2>/dev/null; }
on_node() { local ns=$1; shift; local p; p=$(hb_pid "$ns"); [ -n "$p" ] && nsenter -t "$p" -m -u -n -- "$@"; }
status_of() { on_node "$1" "$BIN" status --control /run/understudy/control.sock 2>/dev/null; }
role_of() { status_of "$1" | sed -n 's/^role://p'; }
field_of() { status_of "$1" | sed -n "s/^$2://p"; }
is_active() { [ "$(role_of "$1")" = active ]; }
is_passive_in_sync() { [ "$(role_of "$1")" = passive ] && [ "$(field_of "$1" in_sync)" = true ]; }
active_nodes() { local n; for n in $NODES; do is_active "$n" && echo "$n"; done; }
actives() { active_nodes | wc -l; }

# Each node's role and whether it holds the VIP, as one line.
roles_line() { local n; for n in $NODES; do printf '%s=%s%s ' "$n" "$(role_of "$n")" "$(has_vip "$n" && echo +vip)"; done; }

# settled LINE: a roles_line with exactly one active, and the VIP on it alone. Judged on the
# line that was logged, so the verdict and the log are one observation (and each poll asks
# every node's daemon once, not twice).
settled() {
    [ "$(grep -o '=active' <<< "$1" | wc -l)" = 1 ] && [ "$(grep -o '+vip' <<< "$1" | wc -l)" = 1 ] \
        && [[ $1 == *=active+vip* ]]
}

# watch_settled BOUND STABLE: waits up to BOUND seconds for `settled` to hold STABLE seconds
# running, logging each change of roles and VIP. After a heal, heartbeat 3.0.6 restarts on
# both nodes and leaves the group unheld for its initdead (about 15 s) before the home node
# takes it again. A check at a fixed time after the heal could land in that gap (one run
# here cleared it by 1.3 s). The restart begins within seconds of the heal, so 25 s of one
# active, holding the VIP, comes after it.
# Each poll asks every node's daemon, so it polls every 0.5 s, not wait_until's 0.1.
SETTLED_SINCE=""
watch_settled() {
    ROLES_LOGGED="" SETTLED_FROM=""
    POLL=0.5 wait_until "$1" settled_for "$2"
}
# settled_for STABLE: one poll of watch_settled; true once `settled` has held STABLE seconds.
settled_for() {
    local line; line=$(roles_line)
    [ "$line" = "$ROLES_LOGGED" ] || { log "roles: $line"; ROLES_LOGGED=$line; }
    settled "$line" || { SETTLED_FROM=""; return 1; }
    [ -n "$SETTLED_FROM" ] || SETTLED_FROM=$(now)
    awk -v n="$(now)" -v s="$SETTLED_FROM" -v t="$1" 'BEGIN{exit !(n-s>=t)}' || return 1
    SETTLED_SINCE=$SETTLED_FROM
}

scenario() {
    rm -rf "$STATE"; mkdir -p "$STATE"
    new_secret
    net_up || { log "network setup failed"; return 1; }
    local ns
    for ns in $NODES; do node_prepare "$ns"; memcached_start "$ns" || return 1; done
    for ns in $NODES; do node_start "$ns" || return 1; done
    log "nodes up; waiting for heartbeat's first acquisition (about 10 s, hard-coded)"
    wait_until 40 has_vip usA || { log "usa never took the VIP"; return 1; }
    check initial_active_is_a is_active usA
    check initial_b_passive_in_sync wait_until 20 is_passive_in_sync usB
    client_start || { log "tap did not start"; return 1; }

    # 1. crash the active node while writes flow
    writer_start crash
    sleep 3
    local tcrash; tcrash=$(now)
    node_crash usA
    log "crashed usa (every process SIGKILLed, link down)"
    wait_until 30 has_vip usB && log "VIP on usb after $(el "$tcrash")s"
    check b_active_after_crash wait_until 10 is_active usB
    check_crash_writes "$tcrash" crash
    result "b_epoch_after_crash=$(field_of usB epoch)"

    # 2. the old active comes back: follower, full sync, never active on stale data
    node_rejoin usA || return 1
    log "usa rejoined"
    writer_start rejoin
    check a_rejoins_as_passive_in_sync wait_until 60 is_passive_in_sync usA
    check a_did_full_sync [ "$(field_of usA full_syncs)" -ge 1 ]
    check b_still_active is_active usB
    sleep 1
    writer_stop rejoin
    sleep 1
    check a_copy_verifies copy_verifies usA usB

    # 3. partition usb (the active) from everyone but the client? Cut usa off, then heal.
    writer_start part
    sleep 1
    ip -n usNet link set pusA down
    log "partitioned usa"
    wait_until 30 is_active usA && log "usa took over during the partition (split brain, as heartbeat v1 does)"
    sleep 3
    ip -n usNet link set pusA up
    log "healed"
    writer_stop part
    # Heartbeat restarts both after a partition and the home node takes over again (~18 s);
    # Understudy's own probe makes the lower epoch step down within a second or two.
    local t; t=$(now)
    check cluster_settles watch_settled 100 25
    [ -n "$SETTLED_SINCE" ] && result "settled_seconds_after_heal=$(el "$t" "$SETTLED_SINCE")"
    local n; n=$(actives)
    result "actives_after_heal=$n"
    check exactly_one_active [ "$n" = 1 ]
    local rec
    rec=$(ls "$STATE"/usA/state/recovery-* "$STATE"/usB/state/recovery-* 2>/dev/null | tr '\n' ' ')
    result "recovery_files=${rec:-none}"
    # No write acknowledged during the partition is lost silently: it is on the surviving
    # active, or in the recovery file of the node that stepped down.
    local res; res=$(acked_lost part $rec)
    result "partition_acked=$(echo "$res" | cut -d' ' -f1) partition_lost=$(echo "$res" | cut -d' ' -f2) partition_in_recovery_file=$(echo "$res" | cut -d' ' -f3)"
    check partition_no_write_lost_silently [ "$(echo "$res" | cut -d' ' -f2)" = 0 ]
    # After the heal's role changes (full syncs, and resumes where a hand-over completed),
    # the passive's copy is the active's.
    local act pas
    act=$(active_nodes | head -1)
    pas=$(peer_of "$act")
    if [ -n "$act" ] && [ -n "$pas" ]; then
        check final_passive_in_sync wait_until 60 is_passive_in_sync "$pas"
        check final_copy_verifies copy_verifies "$pas" "$act"
    else
        check final_copy_verifies false
    fi
    for ns in $NODES; do result "final_$ns: role=$(role_of "$ns") epoch=$(field_of "$ns" epoch) in_sync=$(field_of "$ns" in_sync)"; done
    return 0
}

lab_main "$@"

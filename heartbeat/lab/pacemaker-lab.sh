#!/usr/bin/env bash
# pacemaker-lab.sh - Understudy under Corosync 3 + Pacemaker 2.1, in network namespaces.
#
# Two cluster nodes (pmA 10.79.0.1, pmB 10.79.0.2), each with memcached, corosync and
# pacemaker in its own mount + UTS namespace. Pacemaker runs the OCF agent
# (heartbeat/understudy-ocf) as a promotable clone, configured from
# heartbeat/understudy-cib.xml.sample, with the VIP colocated with the promoted instance and
# started after the promotion. A client namespace (pmC) runs `understudy tap` against the VIP
# in sync mode and a writer that records every acknowledged write.
#
# Scenario: wait for one promoted instance and an in-sync follower; crash the promoted node
# (SIGKILL of every process in its namespace, link down); check the in-sync follower is
# promoted, the VIP follows, and every acknowledged write is readable through the VIP; then
# bring the crashed node back and check it rejoins unpromoted, full syncs, and verifies clean;
# then move the promoted role back to it (a planned switchover, `crm_resource --move`) and
# check no acknowledged write is lost, the demoted node handed its journal over (no
# recovery file) and follows without a full sync.
#
#   pacemaker-lab.sh check | run | down     (as failover-lab.sh; RESULT key=value lines)
#
# Environment: UNDERSTUDY_BIN, PYTHON (with pymemcache), LAB_STATE (default
# /tmp/understudy-pcmk-lab), MAX_SECONDS (watchdog, default 300), TOKEN (corosync token ms).
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
AGENT=$HERE/../understudy-ocf
CIB=$HERE/../understudy-cib.xml.sample
BIN=${UNDERSTUDY_BIN:-/usr/local/bin/understudy}
PYTHON=${PYTHON:-python3}
STATE=${LAB_STATE:-/tmp/understudy-pcmk-lab}
MAX_SECONDS=${MAX_SECONDS:-300}
TOKEN=${TOKEN:-1000}
NET=10.79.0
NS_A=pmA NS_B=pmB NS_C=pmC NS_NET=pmNet
SECRET=$STATE/secret
CONTROL=/run/understudy/control.sock
# shellcheck source=lab-common.sh
. "$HERE/lab-common.sh"

can_run() {
    local b
    for b in /usr/sbin/corosync /usr/sbin/pacemakerd /usr/sbin/cibadmin /usr/sbin/crm_mon /usr/sbin/crm_attribute \
             /usr/lib/ocf/resource.d/heartbeat/IPaddr2 /usr/lib/ocf/lib/heartbeat/ocf-shellfuncs \
             /usr/bin/unshare /usr/bin/nsenter /usr/bin/memcached "$BIN"; do
        [ -x "$b" ] || [ -f "$b" ] || { echo "missing $b (apt-get install corosync pacemaker resource-agents memcached)"; return 1; }
    done
    can_make_namespaces
}

# A node's /run, as after a boot, with its understudy.conf (the state dir is outside /run
# and survives a "reboot").
fresh_run_dir() {
    local ns=$1 d=$STATE/$1 peer
    peer=$(peer_of "$ns")
    rm -rf "$d/run"; mkdir -p "$d/run/resource-agents" "$d/run/lock" "$d/run/crm" "$d/run/corosync" "$d/run/understudy"
    chmod 1777 "$d/run/lock"; chmod 1755 "$d/run/resource-agents"; chown hacluster:haclient "$d/run/crm"; chmod 700 "$d/run/understudy"
    # Pacemaker, not Understudy's own probes, decides failover here: hooks off.
    cat > "$d/run/understudy/understudy.conf" <<CONF
memcached = 127.0.0.1:11211
listen = $(ip_of "$ns"):11311,$VIP:11311
peer = $(ip_of "$peer"):11311
peer-memcached = $(ip_of "$peer"):11211
secret-file = $SECRET
state-dir = $d/state
on-active-failure = none
on-local-failure = none
CONF
}

# Per node, bind-mounted in the node's own mount namespace: /etc/corosync, /var/lib/corosync,
# /var/lib/pacemaker (the CIB), /var/log/pacemaker, /run, and the OCF resource.d (a copy with
# our agent added as provider "understudy").
node_prepare() {
    local ns=$1 d=$STATE/$1 peer
    peer=$(peer_of "$ns")
    rm -rf "$d"; mkdir -p "$d/log" "$d/ocf" "$d/state"
    chmod 755 "$d" "$d/log"
    cp -a /etc/corosync "$d/etc-corosync"
    cp -a /var/lib/corosync "$d/varlib-corosync"
    cp -a /var/lib/pacemaker "$d/varlib-pacemaker"
    mkdir -p "$d/log-pacemaker"; chown hacluster:haclient "$d/log-pacemaker"; chmod 770 "$d/log-pacemaker"
    touch "$d/log/pacemaker.log"; chown hacluster:haclient "$d/log/pacemaker.log"
    fresh_run_dir "$ns"
    cp -a /usr/lib/ocf/resource.d "$d/ocf/resource.d"
    mkdir -p "$d/ocf/resource.d/understudy"
    install -m 755 "$AGENT" "$d/ocf/resource.d/understudy/understudy"
    cat > "$d/etc-corosync/corosync.conf" <<EOF
totem {
    version: 2
    cluster_name: understudy
    transport: knet
    crypto_cipher: none
    crypto_hash: none
    token: $TOKEN
}
nodelist {
    node {
        ring0_addr: $(ip_of $NS_A)
        name: $(host_of $NS_A)
        nodeid: 1
    }
    node {
        ring0_addr: $(ip_of $NS_B)
        name: $(host_of $NS_B)
        nodeid: 2
    }
}
quorum {
    provider: corosync_votequorum
    two_node: 1
}
logging {
    to_logfile: yes
    logfile: $d/log/corosync.log
    to_syslog: no
    to_stderr: no
    timestamp: hires
}
EOF
}

node_start() {
    local ns=$1 d=$STATE/$1
    timeout 20 ip netns exec "$ns" unshare --mount --uts --propagation private -- /bin/sh -c '
        set -e
        hostname "$1"; d=$2
        mount --bind "$d/etc-corosync"     /etc/corosync
        mount --bind "$d/varlib-corosync"  /var/lib/corosync
        mount --bind "$d/varlib-pacemaker" /var/lib/pacemaker
        mount --bind "$d/log-pacemaker"    /var/log/pacemaker
        mount --bind "$d/run"              /run
        mount --bind "$d/ocf/resource.d"   /usr/lib/ocf/resource.d
        corosync
        export PCMK_logfile="$d/log/pacemaker.log"
        setsid pacemakerd </dev/null >>"$d/log/pacemakerd.out" 2>&1 &
    ' pcmk-node "$(host_of "$ns")" "$d" >> "$d/log/start.out" 2>&1 || { log "start of $ns failed: $(tail -3 "$d/log/start.out")"; return 1; }
}

corosync_pid() { local p; for p in $(node_pids "$1"); do [ "$(cat /proc/$p/comm 2>/dev/null)" = corosync ] && echo "$p" && return; done; }
# Runs a command inside node NS's mount, UTS and network namespaces (its /run, its CIB).
on_node() { local ns=$1; shift; local p; p=$(corosync_pid "$ns"); [ -n "$p" ] || return 1; timeout 20 nsenter -t "$p" -m -u -n -- "$@"; }
both_online() { on_node "$1" crm_mon -1 2>/dev/null | grep -q "Online: \[ $(host_of $NS_A) $(host_of $NS_B) \]"; }
status_of() { on_node "$1" "$BIN" status --control "$CONTROL" 2>/dev/null; }
field_of() { status_of "$1" | sed -n "s/^$2://p"; }
is_active() { [ "$(field_of "$1" role)" = active ]; }
is_passive_in_sync() { [ "$(field_of "$1" role)" = passive ] && [ "$(field_of "$1" in_sync)" = true ]; }
promoted_with_vip() { is_active "$1" && has_vip "$1"; }
promoted_node() { local n; for n in $NODES; do promoted_with_vip "$n" && echo "$n"; done; }
one_promoted_with_vip() { [ "$(promoted_node | wc -l)" = 1 ]; }
unpromoted_on() { on_node "$1" crm_mon -1 2>/dev/null | grep -q "Unpromoted: \[ $(host_of "$2") \]"; }

configure() {
    local ns=$1
    on_node "$ns" crm_attribute -t crm_config -n stonith-enabled -v false
    on_node "$ns" crm_attribute -t crm_config -n no-quorum-policy -v ignore
    on_node "$ns" crm_attribute -t rsc_defaults -n resource-stickiness -v 100 >/dev/null 2>&1
    # Config and log live under the node's own /run, so one path serves both nodes.
    local cib
    cib=$(sed -e "s#value=\"10.0.0.100\"#value=\"$VIP\"#" -e "s#/usr/local/bin/understudy#$BIN#" \
              -e "s#/etc/understudy/understudy.conf#/run/understudy/understudy.conf#" \
              -e "s#/var/log/understudy.log#/run/understudy/understudy.log#" "$CIB")
    echo "$cib" > "$STATE/cib.xml"
    echo "$cib" | sed -n '/^<resources>/,/^<\/resources>/p' | on_node "$ns" cibadmin --replace --scope resources --xml-pipe || return 1
    echo "$cib" | sed -n '/^<constraints>/,/^<\/constraints>/p' | on_node "$ns" cibadmin --replace --scope constraints --xml-pipe || return 1
    log "CIB loaded from $(basename "$CIB") (promotable clone + VIP; stonith off: lab only)"
}

scenario() {
    rm -rf "$STATE"; mkdir -p "$STATE"; chmod 755 "$STATE"
    new_secret
    net_up || { log "network setup failed"; return 1; }
    local ns
    for ns in $NODES; do node_prepare "$ns"; memcached_start "$ns" || return 1; done
    local tstart; tstart=$(now)
    for ns in $NODES; do node_start "$ns" || return 1; done
    wait_until 90 both_online $NS_A || { log "the cluster did not form in 90 s"; return 1; }
    log "cluster formed after $(el "$tstart")s"
    configure $NS_A || { log "cannot load the CIB"; return 1; }
    check one_promoted_with_vip wait_until 90 one_promoted_with_vip
    local prim sec
    prim=$(promoted_node | head -1)
    [ -n "$prim" ] || { log "nothing promoted"; return 1; }
    sec=$(peer_of "$prim")
    log "$(host_of "$prim") promoted with the VIP after $(el "$tstart")s"
    check follower_in_sync wait_until 60 is_passive_in_sync "$sec"
    # The in-sync follower's promotion score must now be the in-sync value (100).
    local score
    wait_until 20 bash -c "[ \"\$(nsenter -t $(corosync_pid "$sec") -m -u -n -- crm_attribute -N $(host_of "$sec") -n master-understudy -l reboot -G -q 2>/dev/null)\" = 100 ]"
    score=$(on_node "$sec" crm_attribute -N "$(host_of "$sec")" -n master-understudy -l reboot -G -q 2>/dev/null)
    result "follower_promotion_score=${score:-none}"
    check follower_scored_in_sync [ "${score:-}" = 100 ]
    client_start || { log "tap did not start"; return 1; }

    writer_start crash
    sleep 3
    local tcrash tprom="" tvip=""
    tcrash=$(now)
    node_crash "$prim"
    log "crashed $(host_of "$prim") (every process SIGKILLed, link down)"
    local i
    for i in $(seq 1 300); do
        [ -z "$tprom" ] && is_active "$sec" && tprom=$(now)
        [ -z "$tvip" ] && has_vip "$sec" && tvip=$(now)
        [ -n "$tprom" ] && [ -n "$tvip" ] && break
        sleep 0.1
    done
    result "promote_seconds=$( [ -n "$tprom" ] && el "$tcrash" "$tprom" || echo none) vip_seconds=$( [ -n "$tvip" ] && el "$tcrash" "$tvip" || echo none)"
    check survivor_promoted [ -n "$tprom" ]
    check vip_moved [ -n "$tvip" ]
    check_crash_writes "$tcrash" crash

    local trejoin; trejoin=$(now)
    node_rejoin "$prim" || return 1
    check old_node_rejoins_unpromoted wait_until 90 unpromoted_on "$sec" "$prim"
    check old_node_in_sync wait_until 60 is_passive_in_sync "$prim"
    result "rejoin_seconds=$(el "$trejoin")"
    check old_node_full_synced [ "$(field_of "$prim" full_syncs)" -ge 1 ]
    check survivor_still_promoted is_active "$sec"
    check old_node_copy_verifies copy_verifies "$prim" "$sec"

    # Planned switchover back: Pacemaker stops the VIP, demotes (the keeper hands its journal
    # to the in-sync follower), promotes the old node and starts the VIP there.
    writer_start switch
    sleep 3
    local tmove; tmove=$(now)
    on_node "$sec" crm_resource --resource understudy-clone --move --promoted --node "$(host_of "$prim")" >/dev/null 2>&1
    check switchover_promoted wait_until 60 promoted_with_vip "$prim"
    result "switchover_seconds=$(el "$tmove")"
    sleep 1
    check_acked_writes switch
    check switchover_handed_over grep -q "handed over: the follower applied the journal to its end" "$STATE/$sec/run/understudy/understudy.log"
    check switchover_no_recovery_file [ -z "$(field_of "$sec" recovery_file)" ]
    check switchover_demoted_follows wait_until 60 is_passive_in_sync "$sec"
    # It handed all of its run over, and the new active continues that run: no full sync.
    result "switchover_demoted_full_syncs=$(field_of "$sec" full_syncs) partial_resyncs=$(field_of "$sec" partial_resyncs)"
    check switchover_demoted_resumed [ "$(field_of "$sec" full_syncs)" = 0 ]
    check switchover_copy_verifies copy_verifies "$sec" "$prim"
    on_node "$sec" crm_resource --resource understudy-clone --clear >/dev/null 2>&1
    for ns in $NODES; do result "final_$ns: role=$(field_of "$ns" role) epoch=$(field_of "$ns" epoch) in_sync=$(field_of "$ns" in_sync)"; done
    return 0
}

lab_main "$@"

# lab-common.sh - what the two-node labs share: namespaces on a bridge, memcached per node,
# a tap and an acked-write recorder in the client namespace, bounded waits, teardown by pid.
# Sourced by failover-lab.sh (heartbeat v1) and pacemaker-lab.sh (Corosync + Pacemaker).
# The sourcing script sets NS_A NS_B NS_C NS_NET (namespace names), NET (a /24 prefix),
# STATE, BIN, PYTHON, SECRET and HERE. Nodes are NS_A = .1, NS_B = .2, client NS_C = .3,
# and the VIP is .100. Nothing here touches the host's own network namespace.
NODES="$NS_A $NS_B"
ALL_NS="$NS_A $NS_B $NS_C $NS_NET"
VIP=$NET.100
FAILS=0

host_of() { echo "$1" | tr 'A-Z' 'a-z'; }
ip_of()   { case $1 in "$NS_A") echo "$NET.1";; "$NS_B") echo "$NET.2";; "$NS_C") echo "$NET.3";; esac; }
peer_of() { case $1 in "$NS_A") echo "$NS_B";; "$NS_B") echo "$NS_A";; esac; }
node_pids() { ns_exists "$1" && ip netns pids "$1" 2>/dev/null; }
has_vip() { ip -n "$1" -o -4 addr show dev eth0 2>/dev/null | grep -q " $VIP/"; }

# Can this machine create the namespaces? Prints why not.
can_make_namespaces() {
    [ "$(id -u)" = 0 ] || { echo "needs root (network namespaces, bind mounts)"; return 1; }
    local probe=${NS_NET}Probe
    ip netns add "$probe" 2>/dev/null || { echo "cannot create network namespaces here (ip netns add failed)"; return 1; }
    ip netns del "$probe"
    unshare --mount --uts true 2>/dev/null || { echo "cannot create mount/UTS namespaces here"; return 1; }
    "$PYTHON" -c 'import pymemcache' 2>/dev/null || { echo "$PYTHON has no pymemcache"; return 1; }
    return 0
}

# The whole run is bounded by MAX_SECONDS. The watchdog's output goes nowhere: a sleeping
# child holding our stdout open would keep whoever reads this script's output waiting.
WD=""
start_watchdog() {
    ( trap 'kill $sp 2>/dev/null; exit 0' TERM; sleep "$MAX_SECONDS" & sp=$!; wait $sp && kill -TERM $$ ) >/dev/null 2>&1 &
    WD=$!
    trap 'log "watchdog or interrupt: tearing down"; teardown; exit 124' TERM INT
    trap '[ -n "$WD" ] && kill $WD 2>/dev/null; teardown' EXIT
}

new_secret() {
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$SECRET"; chmod 600 "$SECRET"
}

T0=$(date +%s.%N)
now() { date +%s.%N; }
el()  { awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN{printf "%.2f", b-a}'; }
log() { printf '[%6ss] %s\n' "$(el "$T0")" "$*"; }
result() { echo "RESULT $*"; }
check() {  # check NAME CONDITION-CMD...
    local name=$1; shift
    if "$@"; then result "$name=ok"; else result "$name=FAIL"; FAILS=$((FAILS + 1)); fi
}
ns_exists() { [ -e "/run/netns/$1" ]; }

wait_until() {  # wait_until SECONDS CMD...  (polls every $POLL seconds, 0.1 unless set)
    local to=$1; shift
    local end; end=$(awk -v n="$(now)" -v t="$to" 'BEGIN{printf "%.3f", n+t}')
    while :; do
        "$@" && return 0
        awk -v n="$(now)" -v e="$end" 'BEGIN{exit !(n>e)}' && return 1
        sleep "${POLL:-0.1}"
    done
}

net_up() {
    local ns
    for ns in $ALL_NS; do ns_exists "$ns" && { log "namespace $ns exists: run down first"; return 1; }; done
    for ns in $ALL_NS; do ip netns add "$ns" || return 1; done
    ip -n $NS_NET link set lo up
    ip -n $NS_NET link add br0 type bridge forward_delay 0 stp_state 0
    ip -n $NS_NET link set br0 up
    for ns in $NS_A $NS_B $NS_C; do
        ip -n $NS_NET link add "p$ns" type veth peer name eth0 netns "$ns"
        ip -n $NS_NET link set "p$ns" master br0
        ip -n $NS_NET link set "p$ns" up
        ip -n "$ns" link set lo up
        ip -n "$ns" addr add "$(ip_of "$ns")/24" brd + dev eth0
        ip -n "$ns" link set eth0 up
    done
    wait_until 5 ip netns exec $NS_A ping -c1 -W1 -q "$(ip_of $NS_B)" >/dev/null 2>&1
}

memcached_start() {
    local ns=$1 d=$STATE/$1
    ip netns exec "$ns" /usr/bin/memcached -u memcache -l 0.0.0.0 -p 11211 -U 0 -m 64 \
        >> "$d/log/memcached.log" 2>&1 &
    disown $!
    wait_until 5 mc_ok "$ns" 127.0.0.1
}

mc_ok() { ip netns exec "$1" timeout 1 bash -c 'exec 3<>/dev/tcp/$0/11211 && printf "version\r\n" >&3 && read -r l <&3 && [ "${l#VERSION}" != "$l" ]' "$2" 2>/dev/null; }

node_crash() {
    local pids; pids=$(node_pids "$1")
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
    ip -n "$1" link set eth0 down
}

client_start() {
    local d=$STATE/$NS_C; mkdir -p "$d"
    ip netns exec $NS_C "$BIN" tap --listen 127.0.0.1:11212 --memcached "$VIP:11211" --journal "$VIP:11311" \
        --secret-file "$SECRET" --mode sync --sync-timeout 2000 >> "$d/tap.log" 2>&1 &
    disown $!
    wait_until 10 grep -q "ready" "$d/tap.log"
}

writer_start() {  # writer_start PREFIX
    local d=$STATE/$NS_C
    rm -f "$d/stop-$1"
    ip netns exec $NS_C "$PYTHON" "$HERE/writer.py" 127.0.0.1:11212 "$d/writes-$1.log" "$d/stop-$1" 120 "$1" >> "$d/writer.out" 2>&1 &
    disown $!
}
writer_stop() { touch "$STATE/$NS_C/stop-$1"; sleep 0.5; }

# Every acknowledged write of PREFIX, read back through the VIP; a write that is not there
# must be in a recovery file with its value. Prints "acked lost recovered first-lost-keys".
acked_lost() {
    local prefix=$1; shift
    ip netns exec $NS_C "$PYTHON" - "$STATE/$NS_C/writes-$prefix.log" "$VIP" "$@" <<'PY'
import base64, json, sys
from pymemcache.client.base import Client
acked = {}
for line in open(sys.argv[1]):
    p = line.split()
    if p[0] == "ack": acked[p[2]] = p[3]
saved = {}
for f in sys.argv[3:]:
    for line in open(f):
        o = json.loads(line)
        if "key_b64" in o and o.get("found"):
            saved[base64.b64decode(o["key_b64"]).decode()] = base64.b64decode(o["value_b64"]).decode()
c = Client((sys.argv[2], 11211), timeout=3)
missing = [k for k, v in acked.items() if (c.get(k) or b"").decode() != v]
recovered = [k for k in missing if saved.get(k) == acked[k]]
lost = [k for k in missing if k not in recovered]
print(len(acked), len(lost), len(recovered), " ".join(lost[:5]))
PY
}

teardown() {
    local ns pids i
    for ns in $ALL_NS; do
        ns_exists "$ns" || continue
        for i in 1 2 3 4 5; do
            pids=$(node_pids "$ns")
            [ -z "$pids" ] && break
            kill -KILL $pids 2>/dev/null
            sleep 0.2
        done
        ip netns del "$ns" 2>/dev/null
    done
}


# A rebooted node: no VIP, a fresh /run (the lab's fresh_run_dir), an empty memcached; its
# state dir survives. The lab's node_start brings its cluster software back.
node_rejoin() {
    local ns=$1 p
    for p in $(node_pids "$ns"); do kill -KILL "$p" 2>/dev/null; done
    ip -n "$ns" addr del "$VIP/24" dev eth0 2>/dev/null
    fresh_run_dir "$ns"
    ip -n "$ns" link set eth0 up
    memcached_start "$ns" && node_start "$ns"
}

# RTO: from the crash to the first write acknowledged after the outage was first seen (the
# first failed write), i.e. the first write that landed on the survivor. Waits up to 30 s.
report_rto() {  # report_rto CRASH_TIME PREFIX
    local log=$STATE/$NS_C/writes-$2.log first
    first_ack_after() { awk -v t="$1" '$2>t && $1=="err" {e=1} e && $1=="ack" {print $2; exit}' "$log"; }
    wait_until 30 bash -c "[ -n \"\$(awk -v t=$1 '\$2>t && \$1==\"err\" {e=1} e && \$1==\"ack\" {print; exit}' $log)\" ]"
    first=$(first_ack_after "$1")
    [ -n "$first" ] && result "rto_seconds=$(el "$1" "$first")"
}

# copy_verifies PASSIVE ACTIVE: `understudy verify`, run on PASSIVE, finds its memcached the
# same as ACTIVE's. (Each lab's on_node enters a node's namespaces its own way.)
copy_verifies() { on_node "$1" "$BIN" verify --active "$(ip_of "$2"):11211" --passive 127.0.0.1:11211; }

# Stops writer PREFIX and checks every write it had acknowledged is readable through the VIP.
check_acked_writes() {  # check_acked_writes PREFIX
    writer_stop "$1"
    local res; res=$(acked_lost "$1")
    result "$1_acked=$(echo "$res" | cut -d' ' -f1) $1_lost=$(echo "$res" | cut -d' ' -f2)"
    check "$1_no_acked_write_lost" [ "$(echo "$res" | cut -d' ' -f2)" = 0 ]
}

# After a crash at TCRASH under writer PREFIX: measure the RTO, then check the writes.
check_crash_writes() {  # check_crash_writes TCRASH PREFIX
    report_rto "$1" "$2"
    sleep 1
    check_acked_writes "$2"
}

# After a failed check, what each node's cluster software and daemon did, so a failure on a
# CI machine (whose $STATE is gone) can be read from the test's output alone.
diagnose() {
    local ns f
    for ns in $NODES; do
        for f in "$STATE/$ns/log/ha-log" "$STATE/$ns/log/pacemaker.log" "$STATE/$ns/log/corosync.log"; do
            [ -f "$f" ] || continue
            echo "--- $ns: $(basename "$f") (resource actions, errors)"
            grep -E 'Acquiring|Releasing|Running .*(understudy|IPaddr2)|ERROR|CRIT|[Gg]iving up|takeover|shutdown|[Rr]estart|is dead|returning|acquisition|understudy-ra|Result of' "$f" \
                | grep -v 'Consider setting\|lock ourselves' | tail -n 60
        done
        [ -f "$STATE/$ns/log/ha-debug" ] && { echo "--- $ns: the resource script's own lines"; grep 'understudy-ra' "$STATE/$ns/log/ha-debug" | tail -n 20; }
        for f in "$STATE/$ns/log/understudy.log" "$STATE/$ns/run/understudy/understudy.log"; do
            [ -f "$f" ] || continue
            echo "--- $ns: understudy.log (roles, warnings)"
            grep -E ' (WARN|ERROR) |node:|hook:' "$f" | tail -n 40
        done
    done
}

# The command line every lab shares; the lab defines can_run and scenario.
lab_main() {
    case ${1:-run} in
        check) local why; if why=$(can_run); then echo ok; else echo "$why"; exit 1; fi ;;
        run)
            local why
            if ! why=$(can_run); then echo "SKIP $why"; exit 77; fi
            start_watchdog
            teardown
            scenario || FAILS=$((FAILS + 1))
            result "failures=$FAILS"
            [ "$FAILS" = 0 ] || diagnose
            log "lab finished in $(el "$T0")s; logs in $STATE"
            [ "$FAILS" = 0 ]
            ;;
        down) teardown ;;
        *) sed -n '2,22p' "$0"; exit 2 ;;
    esac
}

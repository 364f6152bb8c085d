#!/usr/bin/env bash
# make-captures.sh - regenerate the pcap + conntrack-event fixtures in this directory.
#
# What it makes (all in the directory of this script, or $OUT):
#   NAME.pcap     tcpdump capture (nanosecond pcap, snaplen default)
#   NAME.events   `conntrack -E -o timestamp,id,ktimestamp,extended` output of the
#                 netns that generated the traffic (the kernel's events, the reference)
#   NAME.log      stderr of traffic.py / tcpdump / conntrack (what the sockets saw)
# for NAME in
#   {tcp-close,tcp-rst,tcp-refused,tcp-reopen,tcp-simultaneous-open,
#    tcp-simultaneous-open-forced,udp-oneway,udp-reqresp,udp-stream,udp-unreachable,
#    icmp-echo}-v{4,6}               lo in a fresh netns, link type EN10MB (zero MACs)
#   mixed-v{4,6}                     veth ns1<->ns2, captured on ns1's veth (EN10MB, real MACs);
#                                    mixed-vX.events = ns1, mixed-vX.ns2.events = ns2
#   udp-reqresp-any-v4               `tcpdump -i any` in the netns: LINUX_SLL2 (276)
#   tcp-close-v4.pcapng              editcap -F pcapng of tcp-close-v4.pcap
#
# Generated on: Linux 6.18.44-fc-v657 x86_64 (2 vCPU, HZ=250), Debian 12,
#   tcpdump 4.99.3 / libpcap 1.10.3, conntrack-tools 1.4.7, nftables 1.0.6,
#   iproute2 6.1.0, iputils 20221126, editcap (Wireshark) 4.0.17, Python 3.11.
#
# How to run (root; touches nothing outside the namespaces it creates):
#   apt-get install -y tcpdump conntrack nftables iproute2 iputils-ping wireshark-common
#   sudo tests/captures/make-captures.sh               # all scenarios (~5 min)
#   sudo tests/captures/make-captures.sh tcp-reopen-v6 mixed-v4   # only some
#   python3 tests/captures/summarize.py tests/captures  # per-file summary for README.md
#
# Procedure per scenario (host/docs/kernel-behaviour.md, "Making captures"): fresh netns, lo up, per-netns
# sysctls (events=1, acct=1, timestamp=1, short timeouts), nft inet table with `ct state`
# counters on output and input (this is what turns conntrack on in the netns), start
# tcpdump (wait for "listening on") and conntrack -E (wait until its netlink socket is
# subscribed), run traffic.py, sleep 7 s (past every timeout), `conntrack -L` to force
# the timeout DESTROYs out (same page, "Dumps bring DESTROYs forward"), sleep 1 s, SIGINT tcpdump / SIGTERM
# conntrack by pid, delete the netns (also on error, via trap).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${OUT:-$HERE}
PY=${PYTHON:-python3}
TRAFFIC="$HERE/traffic.py"
SETTLE=${SETTLE:-7}

NAMESPACES=()
PIDS=()

cleanup() {
    local pid ns
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for ns in "${NAMESPACES[@]}"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    PIDS=()
    NAMESPACES=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[make-captures] $*" >&2; }

new_ns() { # new_ns NAME: fresh netns with lo up and the conntrack sysctls + ruleset
    local ns=$1
    ip netns del "$ns" 2>/dev/null || true
    ip netns add "$ns"
    NAMESPACES+=("$ns")
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw \
        net.netfilter.nf_conntrack_events=1 \
        net.netfilter.nf_conntrack_acct=1 \
        net.netfilter.nf_conntrack_timestamp=1 \
        net.netfilter.nf_conntrack_tcp_timeout_time_wait=3 \
        net.netfilter.nf_conntrack_tcp_timeout_close=3 \
        net.netfilter.nf_conntrack_udp_timeout=3 \
        net.netfilter.nf_conntrack_udp_timeout_stream=4 \
        net.netfilter.nf_conntrack_icmp_timeout=3 \
        net.netfilter.nf_conntrack_icmpv6_timeout=3
    ip netns exec "$ns" nft -f - <<'EOF'
table inet ctcap {
    chain out {
        type filter hook output priority 0; policy accept;
        ct state new counter
        ct state established counter
        ct state related counter
        ct state invalid counter
    }
    chain in {
        type filter hook input priority 0; policy accept;
        ct state new counter
        ct state established counter
        ct state related counter
        ct state invalid counter
    }
}
EOF
}

del_ns() {
    local ns=$1 i
    ip netns del "$ns" 2>/dev/null || true
    for i in "${!NAMESPACES[@]}"; do
        [[ ${NAMESPACES[$i]} == "$ns" ]] && unset 'NAMESPACES[i]'
    done
    NAMESPACES=("${NAMESPACES[@]}")
}

TCPDUMP_PID=
start_tcpdump() { # start_tcpdump NS IFACE FILE [extra tcpdump args]
    local ns=$1 ifc=$2 file=$3 i; shift 3
    rm -f "$file" "$file.stderr"
    ip netns exec "$ns" tcpdump -Z root -i "$ifc" -n -U --time-stamp-precision=nano "$@" \
        -w "$file" 2>"$file.stderr" &
    TCPDUMP_PID=$!
    PIDS+=("$TCPDUMP_PID")
    for i in $(seq 100); do
        grep -q "listening on" "$file.stderr" 2>/dev/null && return 0
        sleep 0.05
    done
    log "tcpdump did not start:"; cat "$file.stderr" >&2; return 1
}

CONNTRACK_PID=
start_conntrack() { # start_conntrack NS FILE
    local ns=$1 file=$2 i
    rm -f "$file"
    ip netns exec "$ns" stdbuf -oL conntrack -E -o timestamp,id,ktimestamp,extended \
        >"$file" 2>"$file.stderr" &
    CONNTRACK_PID=$!
    PIDS+=("$CONNTRACK_PID")
    # subscribed = a NETLINK_NETFILTER (12) socket with group bits set in this netns
    for i in $(seq 100); do
        if ip netns exec "$ns" awk '$2 == 12 && $4 != "00000000" {f=1} END {exit !f}' \
            /proc/net/netlink; then
            return 0
        fi
        sleep 0.05
    done
    log "conntrack -E did not subscribe"; return 1
}

stop_pid() { # stop_pid PID SIGNAL
    local pid=$1 sig=$2 i
    kill "-$sig" "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

forget_pid() {
    local pid=$1 i
    for i in "${!PIDS[@]}"; do
        [[ ${PIDS[$i]} == "$pid" ]] && unset 'PIDS[i]'
    done
    PIDS=("${PIDS[@]}")
}

finish() { # finish NAME NS... : settle, force DESTROYs, stop observers
    local name=$1; shift
    local ns
    sleep "$SETTLE"
    for ns in "$@"; do
        ip netns exec "$ns" conntrack -L >/dev/null 2>&1 || true
    done
    sleep 1
}

collect_logs() { # collect_logs NAME: merge observer stderr into NAME.log
    local name=$1 f
    {
        for f in "$OUT/$name".*.stderr; do
            [[ -e $f ]] || continue
            echo "== ${f##*/}"
            cat "$f"
        done
    } >>"$OUT/$name.log"
    rm -f "$OUT/$name".*.stderr
}

# ---------------------------------------------------------------- lo scenarios
run_lo() { # run_lo NAME FAMILY IFACE CMD...
    local name=$1 family=$2 ifc=$3; shift 3
    local ns="ctcap-$$-$name"
    log "== $name"
    rm -f "$OUT/$name.log"
    new_ns "$ns"
    if [[ $name == tcp-simultaneous-open-forced-* ]]; then
        # drop a's bare SYN at the input hook: conntrack already saw it on output
        # (lo: the ct is confirmed at POSTROUTING), only the receiving socket misses it
        ip netns exec "$ns" nft add rule inet ctcap in \
            tcp sport 40001 tcp dport 40005 tcp flags == syn counter drop
    fi
    start_tcpdump "$ns" "$ifc" "$OUT/$name.pcap"
    start_conntrack "$ns" "$OUT/$name.events"
    sleep 1
    { echo "# $*"; ip netns exec "$ns" "$@" 2>&1; } >>"$OUT/$name.log" \
        || log "$name: traffic command failed (see $name.log)"
    finish "$name" "$ns"
    stop_pid "$TCPDUMP_PID" INT
    stop_pid "$CONNTRACK_PID" TERM
    {
        echo "== nft counters"
        ip netns exec "$ns" nft list ruleset | grep counter
    } >>"$OUT/$name.log"
    del_ns "$ns"
    collect_logs "$name"
}

lo_scenario() { # lo_scenario SCENARIO FAMILY
    local sc=$1 f=$2 addr
    [[ $f == 4 ]] && addr=127.0.0.1 || addr=::1
    case $sc in
        icmp-echo)
            run_lo "$sc-v$f" "$f" lo ping "-$f" -n -c 2 "$addr" ;;
        udp-reqresp-any)
            run_lo "$sc-v$f" "$f" any "$PY" "$TRAFFIC" udp-reqresp "$f" ;;
        *)
            run_lo "$sc-v$f" "$f" lo "$PY" "$TRAFFIC" "$sc" "$f" ;;
    esac
}

# ---------------------------------------------------------------- veth scenario
run_mixed() { # run_mixed FAMILY
    local f=$1 name="mixed-v$1"
    local ns1="ctcap-$$-ns1" ns2="ctcap-$$-ns2"
    local mac1=02:00:00:00:00:01 mac2=02:00:00:00:00:02
    local a1=10.200.0.1 a2=10.200.0.2 p=24
    [[ $f == 6 ]] && { a1=fd00:200::1; a2=fd00:200::2; p=64; }
    log "== $name"
    rm -f "$OUT/$name.log"
    new_ns "$ns1"
    new_ns "$ns2"
    local ns
    for ns in "$ns1" "$ns2"; do
        # no RS, no DAD, no link-local address (no NDP/MLD noise from it)
        ip netns exec "$ns" sysctl -qw \
            net.ipv6.conf.all.router_solicitations=0 \
            net.ipv6.conf.default.router_solicitations=0 \
            net.ipv6.conf.all.accept_dad=0 \
            net.ipv6.conf.default.accept_dad=0 \
            net.ipv6.conf.all.dad_transmits=0 \
            net.ipv6.conf.default.dad_transmits=0
    done
    ip -n "$ns1" link add vA address "$mac1" type veth peer name vB netns "$ns2" address "$mac2"
    ip -n "$ns1" link set vA addrgenmode none
    ip -n "$ns2" link set vB addrgenmode none
    ip -n "$ns1" addr add 10.200.0.1/24 dev vA
    ip -n "$ns2" addr add 10.200.0.2/24 dev vB
    ip -n "$ns1" addr add fd00:200::1/64 dev vA nodad
    ip -n "$ns2" addr add fd00:200::2/64 dev vB nodad
    ip -n "$ns1" neigh add 10.200.0.2 lladdr "$mac2" dev vA nud permanent
    ip -n "$ns2" neigh add 10.200.0.1 lladdr "$mac1" dev vB nud permanent
    ip -n "$ns1" neigh add fd00:200::2 lladdr "$mac2" dev vA nud permanent
    ip -n "$ns2" neigh add fd00:200::1 lladdr "$mac1" dev vB nud permanent
    ip -n "$ns1" link set vA up
    ip -n "$ns2" link set vB up
    # let the unsolicited MLD reports for the solicited-node groups go out before capturing
    sleep 3
    start_tcpdump "$ns1" vA "$OUT/$name.pcap"
    local tdpid=$TCPDUMP_PID
    start_conntrack "$ns2" "$OUT/$name.ns2.events"
    local ct2pid=$CONNTRACK_PID
    start_conntrack "$ns1" "$OUT/$name.events"
    local ct1pid=$CONNTRACK_PID
    sleep 1
    # server in ns2 (prints "ready" once bound)
    local fifo; fifo=$(mktemp -u); mkfifo "$fifo"
    ip netns exec "$ns2" "$PY" "$TRAFFIC" mixed-server "$f" "$a2" >"$fifo" 2>>"$OUT/$name.server.stderr" &
    local srvpid=$!
    PIDS+=("$srvpid")
    read -r -t 5 _ <"$fifo" || log "$name: server not ready"
    rm -f "$fifo"
    {
        echo "# traffic.py mixed-client $f $a2 ; ping -$f -n -c 2 $a2"
        ip netns exec "$ns1" "$PY" "$TRAFFIC" mixed-client "$f" "$a2" 2>&1
        sleep 0.3
        ip netns exec "$ns1" ping "-$f" -n -c 2 "$a2" 2>&1
    } >>"$OUT/$name.log" || log "$name: traffic failed (see $name.log)"
    wait "$srvpid" || log "$name: server failed"
    forget_pid "$srvpid"
    finish "$name" "$ns1" "$ns2"
    stop_pid "$tdpid" INT
    stop_pid "$ct1pid" TERM
    stop_pid "$ct2pid" TERM
    {
        echo "== nft counters ns1"; ip netns exec "$ns1" nft list ruleset | grep counter
        echo "== nft counters ns2"; ip netns exec "$ns2" nft list ruleset | grep counter
    } >>"$OUT/$name.log"
    del_ns "$ns1"
    del_ns "$ns2"
    collect_logs "$name"
}

# ---------------------------------------------------------------- main
LO_SCENARIOS=(tcp-close tcp-rst tcp-refused tcp-reopen tcp-simultaneous-open
              tcp-simultaneous-open-forced
              udp-oneway udp-reqresp udp-stream udp-unreachable icmp-echo)

ALL=()
for sc in "${LO_SCENARIOS[@]}"; do ALL+=("$sc-v4" "$sc-v6"); done
ALL+=(mixed-v4 mixed-v6 udp-reqresp-any-v4 tcp-close-v4.pcapng)

TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL[@]}")

mkdir -p "$OUT"
for t in "${TARGETS[@]}"; do
    case $t in
        mixed-v4 | mixed-v6) run_mixed "${t#mixed-v}" ;;
        tcp-close-v4.pcapng)
            [[ -e $OUT/tcp-close-v4.pcap ]] || lo_scenario tcp-close 4
            editcap -F pcapng "$OUT/tcp-close-v4.pcap" "$OUT/tcp-close-v4.pcapng" ;;
        *-v4 | *-v6) lo_scenario "${t%-v?}" "${t##*-v}" ;;
        *) echo "unknown target $t (known: ${ALL[*]})" >&2; exit 2 ;;
    esac
done
log "done"

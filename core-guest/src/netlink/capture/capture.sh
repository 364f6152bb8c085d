#!/bin/bash
# Captures ctnetlink messages from the live kernel inside a throwaway network namespace, for the
# fixtures in ../testdata.rs (regenerate that file with gen_testdata.py). Run as root:
#   ./capture.sh /tmp/capture.txt      # events -> /tmp/capture.txt, requests -> /tmp/capture.txt.req
# Needs python3 (stdlib only), iproute2, nftables, conntrack-tools, iputils-ping.
# All traffic stays on 127.0.0.1 / ::1 inside the namespace; the namespace is always deleted.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
NS=ctwasm-codec-$$
OUT=${1:-/tmp/ctwasm-capture.txt}
READY=$(mktemp -u /tmp/ctwasm-codec-ready.XXXXXX)
cleanup() { [ -n "${LPID:-}" ] && kill "$LPID" 2>/dev/null; ip netns del "$NS" 2>/dev/null; rm -f "$READY"; }
trap cleanup EXIT
rm -f "$OUT" "$OUT.req"
ip netns add "$NS"
ip -n "$NS" link set lo up
X="ip netns exec $NS"
$X sysctl -qw net.netfilter.nf_conntrack_events=1 net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1 \
  net.netfilter.nf_conntrack_udp_timeout=2 net.netfilter.nf_conntrack_icmp_timeout=2 net.netfilter.nf_conntrack_icmpv6_timeout=2 \
  net.netfilter.nf_conntrack_tcp_timeout_time_wait=2
# A rule using conntrack, so that conntrack hooks are active in the namespace.
printf 'table inet t {\n chain out {\n  type filter hook output priority 0;\n  ct state new counter\n }\n}\n' | $X nft -f -
$X python3 "$HERE/listen.py" "$OUT" "$READY" 20 &
LPID=$!
while [ ! -e "$READY" ]; do sleep 0.1; done
$X python3 "$HERE/traffic.py" 4          # TCP + UDP over 127.0.0.1
$X python3 "$HERE/traffic.py" 6          # TCP + UDP over ::1
$X python3 "$HERE/traffic_protocols.py"  # UDP-Lite both families, GRE v0 and v1 over 127.0.0.1/.2
$X python3 "$HERE/traffic_sctp.py"       # SCTP: an association over 127.0.0.1/.2, a setup over ::1
$X ping -c1 -W1 127.0.0.1 >/dev/null     # ICMP echo
$X ping -6 -c1 -W1 ::1 >/dev/null        # ICMPv6 echo
sleep 1
$X conntrack -L 2>&1
$X python3 "$HERE/request.py" "$OUT.req" # dump + DONE, ENOENT error, stats + ACK
$X conntrack -F 2>&1                     # DESTROY events caused by a request (nlmsg_pid set)
# a second entry that dies by timeout (GC) instead of a flush: DESTROY with nlmsg_pid 0
$X ping -c1 -W1 127.0.0.1 >/dev/null
sleep 6
$X conntrack -L 2>&1
wait "$LPID"
LPID=

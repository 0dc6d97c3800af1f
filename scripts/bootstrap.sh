#!/usr/bin/env bash
# bootstrap.sh: this node's network facts and the next free IPv4 address on its LAN.
#
#   sudo /opt/build-agent/bootstrap.sh            report interface, address, broadcast, next free
#   sudo /opt/build-agent/bootstrap.sh --claim    ... and claim it as a secondary address
#   sudo /opt/build-agent/bootstrap.sh --json     the same as one JSON object
#
# "Free" means: inside this node's subnet, not the network, broadcast or one of our own
# addresses, no answer to ARP (arping, candidates probed in parallel), and not announced by
# another hive member as the address it is about to claim (HELLO candidate_ip, signed with the
# hive's secret).  --claim announces its candidate the same way, waits for competing claims (the
# lower primary address wins), probes it again, adds it with `ip addr add` and announces it with
# gratuitous ARP.  It is idempotent: a node that already holds a secondary address in its subnet
# keeps that one.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BATCH=64            # candidates probed at once
PROBE_WAIT=1        # seconds an unanswered probe waits (arping deadline)
CLAIM_SETTLE=1.5    # seconds to listen for competing claims after announcing ours
MAX_CLAIM_TRIES=8

say() { printf '%s\n' "$*"; }
err() { printf 'bootstrap.sh: %s\n' "$*" >&2; exit 1; }
note() { [ "$JSON" -eq 1 ] || printf 'note: %s\n' "$*" >&2; }
need_cmd() { command -v "$1" >/dev/null 2>&1 || err "'$1' is required but missing (apt-get install $2)"; }

usage() {
    cat <<USAGE
usage: sudo bootstrap.sh [--iface IFACE] [--claim] [--json] [--config FILE]
  --iface IFACE   the LAN interface (default: the interface of the default route)
  --claim         add the next free address as a secondary address on IFACE
  --json          print the report as one JSON object
  --config FILE   hive.toml for the secret and port (default /etc/build/hive.toml)
USAGE
}

# --- IPv4 arithmetic ----------------------------------------------------------------------------

ip_to_int() {
    local a b c d
    IFS=. read -r a b c d <<< "$1"
    printf '%s' $(( (a << 24) | (b << 16) | (c << 8) | d ))
}

int_to_ip() {
    local n=$1
    printf '%s.%s.%s.%s' $(( (n >> 24) & 255 )) $(( (n >> 16) & 255 )) $(( (n >> 8) & 255 )) $(( n & 255 ))
}

# --- this node's interface ----------------------------------------------------------------------

default_iface() {
    ip -4 route show default 2>/dev/null \
        | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }'
}

# Sets IFACE, ADDRESS, PREFIX, BROADCAST, NET_INT, BCAST_INT, OWN (list of our addresses),
# CLAIMED (our secondary address in the subnet, if any) and GATEWAY (of the default route, if any).
read_interface() {
    local line cidr brd mask addr
    if [ -z "$IFACE" ]; then
        IFACE=$(default_iface)
        [ -n "$IFACE" ] || err "no IPv4 default route: name the LAN interface with --iface IFACE"
    fi
    [[ $IFACE =~ ^[A-Za-z0-9_.:@-]{1,15}$ ]] || err "'$IFACE' is not an interface name"
    ip link show dev "$IFACE" >/dev/null 2>&1 || err "no interface '$IFACE' (see 'ip -br link')"
    line=$(ip -o -4 addr show dev "$IFACE" primary scope global | head -n 1)
    [ -n "$line" ] || err "interface $IFACE has no IPv4 address (see 'ip -br addr')"
    cidr=$(awk '{ print $4 }' <<< "$line")
    brd=$(awk '{ for (i = 1; i < NF; i++) if ($i == "brd") { print $(i + 1); exit } }' <<< "$line")
    ADDRESS=${cidr%/*}
    PREFIX=${cidr#*/}
    [ "$PREFIX" -le 30 ] || err "$IFACE has a /$PREFIX address: no room for another address"
    mask=$(( (0xFFFFFFFF << (32 - PREFIX)) & 0xFFFFFFFF ))
    NET_INT=$(( $(ip_to_int "$ADDRESS") & mask ))
    BCAST_INT=$(( NET_INT | (~mask & 0xFFFFFFFF) ))
    BROADCAST=${brd:-$(int_to_ip "$BCAST_INT")}
    OWN=()
    CLAIMED=""
    while read -r addr; do
        [ -n "$addr" ] || continue
        OWN+=("${addr%/*}")
        if [ "${addr%/*}" != "$ADDRESS" ] && [ -z "$CLAIMED" ]; then
            local n; n=$(ip_to_int "${addr%/*}")
            if (( (n & mask) == NET_INT )); then CLAIMED=$addr; fi
        fi
    done < <(ip -o -4 addr show dev "$IFACE" scope global | awk '{ print $4 }')
    # The default gateway is never free, even when it does not answer ARP right now.
    GATEWAY=$(ip -4 route show default dev "$IFACE" 2>/dev/null \
        | awk '{ for (i = 1; i < NF; i++) if ($i == "via") { print $(i + 1); exit } }')
}

is_own() {
    local a
    for a in "${OWN[@]}"; do [ "$a" = "$1" ] && return 0; done
    return 1
}

# --- arping (Thomas Habets' arping, Debian/Ubuntu package 'arping', or iputils-arping) -----------

detect_arping() {
    if arping -V 2>&1 | grep -qi iputils; then ARPING=iputils; else ARPING=habets; fi
}

# probe IP [WAIT]: exit 0 if something answers ARP for IP on IFACE
probe() {
    local ip=$1 wait=${2:-$PROBE_WAIT}
    if [ "$ARPING" = iputils ]; then
        arping -q -f -c 3 -w "$wait" -I "$IFACE" "$ip"
    else
        arping -q -C 1 -c 4 -W 0.25 -w "$wait" -i "$IFACE" "$ip"
    fi
}

announce_arp() {  # gratuitous ARP for an address we now hold
    if [ "$ARPING" = iputils ]; then
        arping -q -U -c 2 -I "$IFACE" -s "$1" "$1" >/dev/null 2>&1 || true
    else
        arping -q -U -S "$1" -c 2 -W 0.2 -i "$IFACE" "$1" >/dev/null 2>&1 || true
    fi
}

# Probe candidates START..END (integers) in parallel, each once; sets USED[int]=1 for those that
# answer.
probe_range() {
    local start=$1 end=$2 n pids=() ips=() i status errfile
    for ((n = start; n <= end; n++)); do
        [ -z "${PROBED[$n]:-}" ] || continue
        PROBED[$n]=1
        probe "$(int_to_ip "$n")" 2>"$WORK/probe.$n.err" >/dev/null &
        pids+=("$!"); ips+=("$n")
    done
    for i in "${!pids[@]}"; do
        status=0
        wait "${pids[$i]}" || status=$?
        n=${ips[$i]}
        errfile="$WORK/probe.$n.err"
        if [ -s "$errfile" ] && grep -qiE 'libnet|permission|CAP_NET_RAW|not permitted|No such device|Unknown|usage' "$errfile"; then
            err "arping failed: $(head -n 1 "$errfile")"
        fi
        [ "$status" -ne 0 ] || USED[$n]=1
    done
}

# --- the hive: candidate addresses announced by other members ------------------------------------

# The Python side (standard library + this release's build_agent), fed by fixed arguments.
# It execs, so call it only in a subshell: $(...) or in the background (then $! is python).
hive_helper() {
    PYTHONPATH=$CODE_DIR PYTHONDONTWRITEBYTECODE=1 exec python3 - "$@" <<'PY'
import json, socket, sys, time
from build_agent import protocol, state
from build_agent.config import ConfigError, load_config, load_secrets, secret_path

mode, config_path = sys.argv[1], sys.argv[2] or None
try:
    config = load_config(config_path)
    secrets = load_secrets(secret_path(config))
except ConfigError as exc:
    print(exc, file=sys.stderr)
    sys.exit(3)
node_id = state.read_node_id(config.node_id_path)

def udp_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.bind(("", config.port))
    return sock

if mode == "check":
    sys.exit(0)
elif mode == "listen":  # listen SECONDS OUTFILE OWN_IP: "candidate primary_ip node_id" lines
    seconds, outfile, own_ip = float(sys.argv[3]), sys.argv[4], sys.argv[5]
    sock = udp_socket()
    deadline = time.monotonic() + seconds
    with open(outfile, "a", buffering=1) as out:
        print("ready", file=out)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, source = sock.recvfrom(protocol.MAX_DATAGRAM + 1)
            except (TimeoutError, socket.timeout):
                break
            try:
                message = protocol.decode(data, secrets, time.time())
            except protocol.ProtocolError:
                continue
            candidate = message.get("candidate_ip")
            if not candidate or message.node_id == node_id or message.primary_ip == own_ip:
                continue
            print(candidate, message.primary_ip, message.node_id, file=out)
elif mode == "announce":  # announce CANDIDATE OWN_IP BROADCAST COUNT: HELLO with candidate_ip
    candidate, own_ip, broadcast, count = sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
    if node_id is None:
        sys.exit(4)  # not a hive member (yet): announce nothing rather than appear as a joiner
    identity = state.read_identity(config.identity_path)
    role = identity["role"] if identity else None
    sock = udp_socket()
    for i in range(count):
        payload = protocol.make_payload("HELLO", node_id, socket.gethostname(), own_ip, time.time(),
                                        candidate_ip=candidate, role=role)
        sock.sendto(protocol.encode(payload, secrets[0]), (broadcast, config.port))
        if i + 1 < count:
            time.sleep(0.4)
PY
}

find_code() {
    local dir
    CODE_DIR=""
    for dir in "$HERE" "$HERE/.."; do
        if [ -f "$dir/build_agent/protocol.py" ]; then CODE_DIR=$(cd "$dir" && pwd); return 0; fi
    done
}

start_listener() {  # SECONDS
    HIVE=0
    [ "$USE_HIVE" -eq 1 ] || return 0
    find_code
    if [ -z "$CODE_DIR" ] || ! command -v python3 >/dev/null 2>&1; then
        note "not checking the hive's announced addresses: Build Hive code not found next to $0"
        return 0
    fi
    local why
    if ! why=$(hive_helper check "$CONFIG_FILE" 2>&1); then
        note "not checking the hive's announced addresses: ${why:-no hive configuration}"
        return 0
    fi
    ANNOUNCED_FILE="$WORK/announced"
    : > "$ANNOUNCED_FILE"
    hive_helper listen "$CONFIG_FILE" "$1" "$ANNOUNCED_FILE" "$ADDRESS" >/dev/null 2>&1 &
    LISTENER=$!
    local deadline=$((SECONDS + 5))
    until grep -q '^ready' "$ANNOUNCED_FILE"; do
        if ! kill -0 "$LISTENER" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            note "not checking the hive's announced addresses: cannot listen on the hive's port"
            LISTENER=""
            return 0
        fi
        sleep 0.05
    done
    HIVE=1
}

# Is IP announced by another member?  With "beats-me", only by one whose claim wins over ours
# (the lower primary address wins).
announced() {
    local ip=$1 rule=${2:-any} cand primary rest
    [ "$HIVE" -eq 1 ] || return 1
    while read -r cand primary rest; do
        [ "$cand" = "$ip" ] || continue
        [ "$rule" = any ] && return 0
        [ "$(ip_to_int "$primary")" -lt "$(ip_to_int "$ADDRESS")" ] && return 0
    done < <(grep -v '^ready' "$ANNOUNCED_FILE")
    return 1
}

# --- finding and claiming -----------------------------------------------------------------------

# Candidates in order: after our address up to the broadcast, then from the network up.
candidate_ranges() {
    local own; own=$(ip_to_int "$ADDRESS")
    printf '%s %s\n' $((own + 1)) $((BCAST_INT - 1))
    printf '%s %s\n' $((NET_INT + 1)) $((own - 1))
}

# Sets NEXT_FREE to the first candidate that is free (or "").
find_next_free() {
    local first last start end n
    NEXT_FREE=""
    while read -r first last; do
        for ((start = first; start <= last; start += BATCH)); do
            end=$((start + BATCH - 1)); [ "$end" -le "$last" ] || end=$last
            probe_range "$start" "$end"
            for ((n = start; n <= end; n++)); do
                [ -z "${USED[$n]:-}" ] || continue
                [ -z "${SKIP[$n]:-}" ] || continue
                is_own "$(int_to_ip "$n")" && continue
                announced "$(int_to_ip "$n")" && continue
                NEXT_FREE=$(int_to_ip "$n")
                return 0
            done
        done
    done < <(candidate_ranges)
}

stop_announcer() {
    if [ -n "${ANNOUNCER:-}" ]; then
        kill "$ANNOUNCER" 2>/dev/null || true
        wait "$ANNOUNCER" 2>/dev/null || true
        ANNOUNCER=""
    fi
}

claim() {
    local candidate tries=0 n
    if [ -n "$CLAIMED" ]; then
        CLAIM_RESULT=$CLAIMED
        [ "$JSON" -eq 1 ] || say "Already claimed $CLAIMED on $IFACE"
        return 0
    fi
    while [ "$tries" -lt "$MAX_CLAIM_TRIES" ]; do
        tries=$((tries + 1))
        [ -n "$NEXT_FREE" ] || err "no free address left in $(int_to_ip "$NET_INT")/$PREFIX"
        candidate=$NEXT_FREE
        n=$(ip_to_int "$candidate")
        if [ "$HIVE" -eq 1 ]; then
            # Tell the hive which address we are about to take, then give others time to object.
            hive_helper announce "$CONFIG_FILE" "$candidate" "$ADDRESS" "$BROADCAST" 8 >/dev/null 2>&1 &
            ANNOUNCER=$!
            sleep "$CLAIM_SETTLE"
            if announced "$candidate" beats-me; then
                stop_announcer
                note "$candidate is being claimed by another hive member; trying the next address"
                SKIP[$n]=1; find_next_free; continue
            fi
        fi
        if probe "$candidate" 2 >/dev/null 2>&1; then
            stop_announcer
            note "$candidate answered ARP just now; trying the next address"
            USED[$n]=1; find_next_free; continue
        fi
        if ! ip addr add "$candidate/$PREFIX" brd + dev "$IFACE" 2>"$WORK/addr.err"; then
            grep -q 'File exists' "$WORK/addr.err" || err "ip addr add $candidate/$PREFIX dev $IFACE failed: $(head -n 1 "$WORK/addr.err")"
        fi
        announce_arp "$candidate"
        stop_announcer
        CLAIM_RESULT="$candidate/$PREFIX"
        [ "$JSON" -eq 1 ] || say "Claimed $CLAIM_RESULT on $IFACE"
        return 0
    done
    err "gave up after $MAX_CLAIM_TRIES candidates (addresses keep being taken)"
}

# --- output -------------------------------------------------------------------------------------

json_string() {  # our values are interface names and addresses: no quoting needed beyond this
    if [ -n "$1" ]; then printf '"%s"' "$1"; else printf 'null'; fi
}

report() {
    if [ "$JSON" -eq 1 ]; then
        printf '{"interface":%s,"address":%s,"broadcast":%s,"next_free":%s' \
            "$(json_string "$IFACE")" "$(json_string "$ADDRESS/$PREFIX")" \
            "$(json_string "$BROADCAST")" "$(json_string "$NEXT_FREE")"
        [ "$CLAIM" -eq 0 ] || printf ',"claimed":%s' "$(json_string "${CLAIM_RESULT:-}")"
        printf '}\n'
        return 0
    fi
    say "Interface : $IFACE"
    say "Address   : $ADDRESS/$PREFIX"
    say "Broadcast : $BROADCAST"
    say "Next free : ${NEXT_FREE:-(none)}"
}

cleanup() {
    stop_announcer
    if [ -n "${LISTENER:-}" ]; then kill "$LISTENER" 2>/dev/null || true; wait "$LISTENER" 2>/dev/null || true; fi
    [ -z "${WORK:-}" ] || rm -rf "$WORK"
}

main() {
    IFACE="" JSON=0 CLAIM=0 USE_HIVE=1 CONFIG_FILE="" LISTENER="" ANNOUNCER="" HIVE=0
    while [ $# -gt 0 ]; do
        case $1 in
            --iface) [ $# -ge 2 ] || err "--iface needs an interface name"; IFACE=$2; shift ;;
            --iface=*) IFACE=${1#--iface=} ;;
            --claim) CLAIM=1 ;;
            --json) JSON=1 ;;
            --config) [ $# -ge 2 ] || err "--config needs a file"; CONFIG_FILE=$2; shift ;;
            --config=*) CONFIG_FILE=${1#--config=} ;;
            --no-hive) USE_HIVE=0 ;;
            -h|--help) usage; return 0 ;;
            *) usage >&2; err "unknown option '$1'" ;;
        esac
        shift
    done
    need_cmd ip iproute2
    need_cmd arping arping
    need_cmd awk gawk
    if [ "$(id -u)" -ne 0 ]; then
        if [ "$CLAIM" -eq 1 ]; then
            err "--claim must run as root (it adds an address to the interface): sudo $0 --claim"
        fi
        err "must run as root (arping sends raw ARP frames): sudo $0"
    fi
    detect_arping
    read_interface
    declare -gA USED=() SKIP=() PROBED=()
    if [[ ${GATEWAY:-} =~ ^[0-9]+(\.[0-9]+){3}$ ]]; then SKIP[$(ip_to_int "$GATEWAY")]=1; fi
    WORK=$(mktemp -d)
    trap cleanup EXIT
    start_listener $((CLAIM == 1 ? 30 : PROBE_WAIT + 1))
    find_next_free
    if [ "$HIVE" -eq 1 ] && [ "$CLAIM" -eq 0 ]; then
        wait "$LISTENER" 2>/dev/null || true  # the whole window, then drop what was announced
        LISTENER=""
        if [ -n "$NEXT_FREE" ] && announced "$NEXT_FREE"; then
            SKIP[$(ip_to_int "$NEXT_FREE")]=1
            find_next_free
        fi
    fi
    if [ "$CLAIM" -eq 1 ]; then
        [ "$JSON" -eq 1 ] || report
        claim
        [ "$JSON" -eq 0 ] || report
    else
        report
    fi
}

main "$@"

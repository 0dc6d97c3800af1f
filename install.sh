#!/usr/bin/env bash
# install.sh: install Build Hive (build-agent + build-advisor) on this node and join the hive.
#
#   sudo bash install.sh                    install or upgrade, start, wait for the identity
#   sudo bash install.sh --uninstall        remove services, code and CLI (keeps identity/secret)
#   sudo bash install.sh --uninstall --purge   ... and /var/lib/build and /etc/build too
#
# Run it from a checkout or an unpacked release tarball (it installs the files next to it).
# It never prompts (cloud-init has no terminal) and is idempotent: running it again upgrades the
# code and restarts the services, keeping the identity and the secret.
#
# Environment: HIVE_INSTALL_TIMEOUT (seconds to wait for the identity, default 60).
set -euo pipefail

PREFIX=/opt/build-agent
UNIT_DIR=/etc/systemd/system
CLI=/usr/local/bin/hive
CONF_DIR=/etc/build
CONFIG=$CONF_DIR/hive.toml
SECRET=$CONF_DIR/shared_secret
DISABLED_FLAG=$CONF_DIR/hive.disabled
STATE_DIR=/var/lib/build
UNITS=(build-agent.service build-advisor.service)
TARGET_PRETTY="Ubuntu 24.04"
MIN_PYTHON=(3 11)
MIN_SECRET_LEN=16
PYTHON=/usr/bin/python3  # what the units and the hive command run (Debian/Ubuntu's python3)
APT_LOCK_TIMEOUT=300
# command -> Debian package that provides it
PREREQ_CMDS=(python3 arping jq ip openssl)
PREREQ_PKGS=(python3 arping jq iproute2 openssl)

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TIMEOUT=${HIVE_INSTALL_TIMEOUT:-60}

say() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
err() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
need_cmd() { command -v "$1" >/dev/null 2>&1 || err "'$1' is required but missing${2:+ (apt-get install $2)}"; }

usage() {
    cat <<USAGE
usage: sudo bash install.sh [--timeout SECONDS]
       sudo bash install.sh --uninstall [--purge]

Installs build-agent and build-advisor to $PREFIX, their systemd units to $UNIT_DIR,
the 'hive' command to $CLI and a default $CONFIG (never overwritten), generates
$SECRET on the first node (copy it to the others BEFORE installing them), starts both
services and shows how this node joins the hive.

  --timeout S    wait at most S seconds for the identity (default $TIMEOUT)
  --uninstall    stop and remove the services, $PREFIX and $CLI; keep $STATE_DIR and $CONF_DIR
  --purge        with --uninstall: also remove $STATE_DIR and $CONF_DIR (identity, config, secret)
USAGE
}

# --- checks -------------------------------------------------------------------------------------

check_root() {
    [ "$(id -u)" -eq 0 ] || err "must run as root: sudo bash install.sh"
}

os_release_value() {  # KEY -> value from /etc/os-release (quotes removed); no sourcing
    local key=$1 line value
    while IFS= read -r line; do
        case $line in
            "$key"=*)
                value=${line#*=}
                value=${value#\"}; value=${value%\"}
                value=${value#\'}; value=${value%\'}
                printf '%s' "$value"
                return 0 ;;
        esac
    done < /etc/os-release
    return 0
}

check_os() {
    [ -r /etc/os-release ] || err "cannot read /etc/os-release: this installer supports $TARGET_PRETTY (and other Debian/Ubuntu releases with systemd)"
    local id version_id id_like pretty
    id=$(os_release_value ID)
    version_id=$(os_release_value VERSION_ID)
    id_like=$(os_release_value ID_LIKE)
    pretty=$(os_release_value PRETTY_NAME)
    if [ "$id" = ubuntu ] && [ "$version_id" = 24.04 ]; then
        return 0
    fi
    case " $id $id_like " in
        *" ubuntu "*|*" debian "*)
            say "Notice: ${pretty:-$id $version_id} is not the tested target ($TARGET_PRETTY); continuing, as it is Debian-based (needs systemd and Python >= ${MIN_PYTHON[0]}.${MIN_PYTHON[1]})." ;;
        *)
            err "unsupported system '${pretty:-$id}': Build Hive installs on $TARGET_PRETTY (or another Debian/Ubuntu release with systemd and Python >= ${MIN_PYTHON[0]}.${MIN_PYTHON[1]})" ;;
    esac
}

check_systemd() {
    if [ ! -d /run/systemd/system ] || ! command -v systemctl >/dev/null 2>&1; then
        err "systemd is not running as PID 1 here (no /run/systemd/system): boot this host (or container) with systemd, e.g. 'systemd-nspawn --boot' instead of a plain chroot/docker shell, then run install.sh again"
    fi
}

check_source() {
    local f
    for f in build_agent/__init__.py build_agent/__main__.py build_advisor/__init__.py \
             build_advisor/__main__.py systemd/build-agent.service systemd/build-advisor.service \
             scripts/bootstrap.sh; do
        [ -f "$SRC/$f" ] || err "missing $SRC/$f: run install.sh from a Build Hive checkout or an unpacked release tarball (build-hive-VERSION.tar.gz), not on its own"
    done
}

install_prereqs() {
    local missing=() i
    for i in "${!PREREQ_CMDS[@]}"; do
        if [ "${PREREQ_CMDS[$i]}" = python3 ]; then
            [ -x "$PYTHON" ] || missing+=(python3)
        else
            command -v "${PREREQ_CMDS[$i]}" >/dev/null 2>&1 || missing+=("${PREREQ_PKGS[$i]}")
        fi
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    need_cmd apt-get
    say "Installing missing prerequisites: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout="$APT_LOCK_TIMEOUT" update \
        || warn "apt-get update failed; trying the install with the package lists there are"
    DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout="$APT_LOCK_TIMEOUT" install -- "${missing[@]}" \
        || err "could not install ${missing[*]} with apt-get: install them by hand and run install.sh again"
}

check_python() {
    [ -x "$PYTHON" ] || err "$PYTHON is missing: apt-get install python3"
    "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (int(sys.argv[1]), int(sys.argv[2])) else 1)' \
        "${MIN_PYTHON[@]}" \
        || err "Python >= ${MIN_PYTHON[0]}.${MIN_PYTHON[1]} is required; $PYTHON is $("$PYTHON" -c 'import platform; print(platform.python_version())')"
}

# --- the secret ---------------------------------------------------------------------------------

ensure_conf_dir() {
    if [ ! -d "$CONF_DIR" ]; then
        install -d -m 0755 -o root -g root "$CONF_DIR"
    fi
}

check_existing_secret() {
    [ -f "$SECRET" ] || err "$SECRET exists but is not a regular file: replace it with a file holding the hive's secret"
    local owner mode shortest
    owner=$(stat -L -c '%u' "$SECRET")
    mode=$(stat -L -c '%a' "$SECRET")
    [ "$owner" -eq 0 ] || err "$SECRET is owned by uid $owner, not root: run 'chown root:root $SECRET' and install.sh again"
    if (( 8#$mode & 8#077 )); then
        err "$SECRET has mode 0$mode (group or others may read it): run 'chmod 0600 $SECRET' and install.sh again"
    fi
    # Every non-blank line is a secret (the first signs; '#' starts no comment); never print them.
    shortest=$(awk 'NF { gsub(/^[ \t\r]+|[ \t\r]+$/, ""); if (min == "" || length($0) < min) min = length($0) } END { print (min == "" ? 0 : min) }' "$SECRET")
    [ "$shortest" -ge "$MIN_SECRET_LEN" ] || err "$SECRET holds no secret or one shorter than $MIN_SECRET_LEN characters: put the hive's secret in it (a new hive: 'openssl rand -hex 32')"
}

generate_secret() {
    local secret tmp
    secret=$(openssl rand -hex 32)
    tmp=$(mktemp "$CONF_DIR/.shared_secret.XXXXXX")
    chmod 0600 "$tmp"
    printf '%s\n' "$secret" > "$tmp"
    chown root:root "$tmp"
    mv -f "$tmp" "$SECRET"
    say "Generated new shared secret: $secret"
    say "  Copy it to $SECRET (mode 0600) on every other node BEFORE running install.sh there"
    say "  ('sudo cat $SECRET' shows it again)."
}

ensure_secret() {
    ensure_conf_dir
    if [ -e "$SECRET" ] || [ -L "$SECRET" ]; then
        check_existing_secret
    else
        generate_secret
    fi
}

# --- installing files ---------------------------------------------------------------------------

release_version() {
    if [ -f "$SRC/VERSION" ]; then
        head -n 1 "$SRC/VERSION"
    elif [ -f "$SRC/pyproject.toml" ]; then
        sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$SRC/pyproject.toml" | head -n 1
    else
        printf 'unknown'
    fi
}

install_code() {
    local staging="$PREFIX.new" old="$PREFIX.old"
    rm -rf "$staging" "$old"
    install -d -m 0755 "$staging"
    tar -C "$SRC" --exclude='__pycache__' --exclude='*.pyc' --no-same-owner -cf - \
        build_agent build_advisor | tar -C "$staging" --no-same-owner -xf -
    install -m 0755 "$SRC/scripts/bootstrap.sh" "$staging/bootstrap.sh"
    if [ -f "$SRC/examples/role.d/50-ci-agent" ]; then  # an example, not active: see README
        install -d -m 0755 "$staging/examples/role.d"
        install -m 0644 "$SRC/examples/role.d/50-ci-agent" "$staging/examples/role.d/50-ci-agent"
    fi
    [ ! -f "$SRC/README.md" ] || install -m 0644 "$SRC/README.md" "$staging/README.md"
    release_version > "$staging/VERSION"
    chmod -R u=rwX,go=rX "$staging"
    "$PYTHON" -m compileall -q "$staging/build_agent" "$staging/build_advisor" >/dev/null \
        || err "the code in $SRC does not compile with $PYTHON"
    if [ -d "$PREFIX" ]; then
        mv "$PREFIX" "$old"
    fi
    mv "$staging" "$PREFIX"
    rm -rf "$old"
}

install_units() {
    local unit
    for unit in "${UNITS[@]}"; do
        install -m 0644 "$SRC/systemd/$unit" "$UNIT_DIR/$unit"
    done
}

install_cli() {
    local tmp
    tmp=$(mktemp "$CLI.XXXXXX")
    cat > "$tmp" <<WRAPPER
#!/bin/sh
# hive: the Build Hive command line (installed by install.sh; code in $PREFIX).
PYTHONPATH=$PREFIX\${PYTHONPATH:+:\$PYTHONPATH} PYTHONDONTWRITEBYTECODE=1 exec $PYTHON -m build_agent.cli "\$@"
WRAPPER
    chmod 0755 "$tmp"
    mv -f "$tmp" "$CLI"
}

write_default_config() {
    local tmp
    tmp=$(mktemp "$CONF_DIR/.hive.toml.XXXXXX")
    cat > "$tmp" <<'TOML'
# Build Hive configuration, read by build-agent and build-advisor (and the `hive` command).
# Every key is optional: the values shown commented out are the defaults.  Unknown keys are an
# error.  After a change: sudo systemctl restart build-agent build-advisor
# This file must stay readable by everyone (mode 0644): build-advisor runs as an unprivileged user.

# UDP port of the hive (every node must use the same; firewalls: allow it from the LAN).
#port = 50555

# Network interface of the hive's LAN; empty means the interface of the default route.
#interface = ""

# The hive's shared secret(s), one per line: the first signs, all verify.  Mode 0600, root.
#secret_file = "/etc/build/shared_secret"

# Where identity.json, peers.json and node_id live.
#state_dir = "/var/lib/build"

# Seconds between heartbeats; a member missing 3 of them is dropped from peers.json.
#heartbeat_interval = 10

# Install the packages of the role the hive assigns (apt-get); false only logs them.
#install_packages = true

# A Python file defining suggest_role(view, newcomer) for the advisor; empty is the default
# policy.  It runs with the hive's secret: root must own it and its directories, and only root
# may write them; everyone must read it (e.g. /etc/build/policy.py, root, mode 0644).
#policy = ""

# debug, info, warning or error.
#log_level = "info"

# Executables run (run-parts order) whenever this node's role changes, with HIVE_ROLE,
# HIVE_PREVIOUS_ROLE and HIVE_IDENTITY set: see "Role hooks" in /opt/build-agent/README.md and
# the example in /opt/build-agent/examples/role.d/.  Root's alone, like the policy.
#role_hooks_dir = "/etc/build/role.d"

# The agent's control socket (root only), through which `hive task` talks to it; empty means
# control.sock in state_dir.
#control_socket = ""

# Build work (`hive task run ...` on the controller): off unless enabled, on the controller and
# on every node that should run tasks.  Tasks run as an unprivileged throw-away user with time
# and memory limits and cannot read /etc/build or /var/lib/build.  Keep this table last: keys
# written below a [table] line belong to it.
#[tasks]
#enabled = false
#roles = []                 # the roles of this node that run tasks, e.g. ["builder", "runner"]; empty: any
#slots = 4                  # tasks at once here (default: the CPU count)
#timeout = 3600             # seconds, for tasks submitted here that set none
#retries = 1                # re-queues of a task whose worker vanished
#memory_max_mb = 4096       # per task (default: the RAM divided by the slots)
TOML
    chmod 0644 "$tmp"
    mv -f "$tmp" "$CONFIG"
}

# The default folder for role hooks, empty: hooks are the user's to add.
ensure_hooks_dir() {
    if [ ! -e "$CONF_DIR/role.d" ] && [ ! -L "$CONF_DIR/role.d" ]; then
        install -d -m 0755 -o root -g root "$CONF_DIR/role.d"
    fi
}

ensure_config() {
    if [ ! -e "$CONFIG" ]; then
        write_default_config
        return 0
    fi
    local mode
    mode=$(stat -L -c '%a' "$CONFIG")
    (( 8#$mode & 8#004 )) || err "$CONFIG has mode 0$mode, but build-advisor (an unprivileged user) must read it: run 'chmod 0644 $CONFIG'"
}

# With the code about to be installed: the errors the daemons would give.  The policy runs here
# as root, so load_policy refuses it (before a line of it runs) unless it is root's alone; a
# role hooks folder that is not root's alone is refused too (the agent would run none of it).
# -P: the current directory is not on sys.path (a build_agent/ there must not shadow ours).
check_config() {
    local problem
    if ! problem=$(PYTHONPATH=$SRC PYTHONDONTWRITEBYTECODE=1 "$PYTHON" -P - "$CONFIG" 2>&1 <<'PY'
import os, stat, sys
from build_agent.config import ConfigError, load_config
from build_advisor.policy import PolicyError, load_policy
from build_agent.hooks import find_hooks
try:
    config = load_config(sys.argv[1])
    if config.policy and os.path.isfile(config.policy) \
            and not os.stat(config.policy).st_mode & stat.S_IROTH:
        sys.exit(f"policy {config.policy} must be readable by everyone (build-advisor is an "
                 f"unprivileged user): run 'chmod 0644 {config.policy}'")
    load_policy(config.policy)
    _hooks, problem = find_hooks(config.role_hooks_dir)
    if problem:
        sys.exit(problem)
except (ConfigError, PolicyError) as exc:
    sys.exit(str(exc))
PY
    ); then
        err "${problem:-invalid $CONFIG}"
    fi
}

# --- network facts in bash (no python needed, e.g. while uninstalling) ---------------------------

ip_to_int() {
    local a b c d
    IFS=. read -r a b c d <<< "$1"
    printf '%s' $(( (a << 24) | (b << 16) | (c << 8) | d ))
}

int_to_ip() {
    local n=$1
    printf '%s.%s.%s.%s' $(( (n >> 24) & 255 )) $(( (n >> 16) & 255 )) $(( (n >> 8) & 255 )) $(( n & 255 ))
}

config_value() {  # KEY -> its value in hive.toml if set there (simple 'key = value' lines)
    [ -r "$CONFIG" ] || return 0
    sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\"\{0,1\}\([^\"#[:space:]]*\)\"\{0,1\}.*/\1/p" "$CONFIG" | tail -n 1
}

hive_subnet() {  # the CIDR of the hive's LAN, or nothing
    local iface cidr addr prefix mask
    iface=$(config_value interface)
    if [ -z "$iface" ]; then
        iface=$(ip -4 route show default 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
    fi
    [ -n "$iface" ] || return 0
    cidr=$(ip -o -4 addr show dev "$iface" primary 2>/dev/null | awk '{ print $4; exit }')
    [ -n "$cidr" ] || return 0
    addr=${cidr%/*}; prefix=${cidr#*/}
    mask=$(( prefix == 0 ? 0 : (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF ))
    printf '%s/%s' "$(int_to_ip $(( $(ip_to_int "$addr") & mask )))" "$prefix"
}

hive_port() {
    local port
    port=$(config_value port)
    [[ $port =~ ^[0-9]+$ ]] || port=50555
    printf '%s' "$port"
}

ufw_active() {
    command -v ufw >/dev/null 2>&1 && ufw status 2>/dev/null | head -n 1 | grep -q 'Status: active'
}

open_firewall() {
    ufw_active || return 0
    local subnet port
    subnet=$(hive_subnet)
    port=$(hive_port)
    if [ -z "$subnet" ]; then
        warn "UFW is active but the hive's subnet is unknown: run 'ufw allow from <LAN>/<prefix> to any port $port proto udp'"
        return 0
    fi
    ufw allow from "$subnet" to any port "$port" proto udp comment 'build-hive' >/dev/null
    say "UFW is active: allowed $port/udp from $subnet (the hive's LAN)."
}

close_firewall() {
    ufw_active || return 0
    local subnet port
    subnet=$(hive_subnet)
    port=$(hive_port)
    [ -n "$subnet" ] || return 0
    ufw delete allow from "$subnet" to any port "$port" proto udp >/dev/null 2>&1 || true
    say "UFW: removed the rule allowing $port/udp from $subnet."
}

# --- services and the agent's log ---------------------------------------------------------------

# The lines of the agent's log a user wants to see while the node joins (see the README).
is_join_line() {
    case $1 in
        "Discovered "*|"Asking peers"*|" <- "*|"Consensus: "*|"Packages: "*|"No peers found"*) return 0 ;;
        "Identity: "*|"Already identified as: "*|"No advice received"*|"Only "*" advised"*) return 0 ;;
        "Waiting for "*" joining node"*) return 0 ;;
    esac
    return 1
}

is_settled_line() {
    case $1 in
        "Consensus: "*|"Identity: "*|"Already identified as: "*) return 0 ;;
    esac
    return 1
}

# Print the new lines of this invocation of build-agent; set SETTLED once the identity is.
show_agent_log() {
    local invocation=$1 cursor_file=$2 line priority message
    while IFS= read -r line; do
        priority=${line%% *}
        message=${line#* }
        if [[ $priority =~ ^[0-3]$ ]]; then
            say "error: $message"
        elif is_join_line "$message"; then
            say "$message"
        fi
        if is_settled_line "$message"; then
            SETTLED=1
        fi
    done < <(journalctl --no-pager -q -o json --cursor-file="$cursor_file" \
                 "_SYSTEMD_INVOCATION_ID=$invocation" 2>/dev/null \
             | jq -r 'select(.MESSAGE | type == "string") | "\(.PRIORITY // "6") \(.MESSAGE)"')
}

follow_agent() {
    local invocation current cursor_file deadline state
    invocation=$(systemctl show -p InvocationID --value build-agent.service)
    cursor_file=$(mktemp)
    SETTLED=0
    deadline=$((SECONDS + TIMEOUT))
    while :; do
        current=$(systemctl show -p InvocationID --value build-agent.service)
        if [ -n "$current" ] && [ "$current" != "$invocation" ]; then
            invocation=$current  # systemd restarted it (Restart=on-failure): follow the new one
            : > "$cursor_file"
        fi
        show_agent_log "$invocation" "$cursor_file"
        if [ "$SETTLED" -eq 1 ] && [ -s "$STATE_DIR/identity.json" ]; then
            sleep 0.2  # the line after "Consensus" ("Packages: ...") is written with it
            show_agent_log "$invocation" "$cursor_file"
            break
        fi
        state=$(systemctl is-active build-agent.service || true)
        if [ "$state" != active ] && [ "$state" != activating ] && [ "$state" != reloading ]; then
            show_agent_log "$invocation" "$cursor_file"
            rm -f "$cursor_file"
            err "build-agent is $state: see 'systemctl status build-agent' and 'journalctl -u build-agent -p warning'"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            warn "no identity after ${TIMEOUT}s; the agent keeps asking the hive: follow it with 'journalctl -u build-agent -f'"
            break
        fi
        sleep 0.2
    done
    rm -f "$cursor_file"
}

start_services() {
    systemctl daemon-reload
    systemctl enable --quiet "${UNITS[@]}"
    if [ -e "$DISABLED_FLAG" ]; then
        systemctl stop "${UNITS[@]}" 2>/dev/null || true
        say "$DISABLED_FLAG exists: the services are enabled but do not start (remove it, then 'systemctl start build-agent build-advisor')."
        return 1
    fi
    if ! systemctl restart "${UNITS[@]}"; then
        journalctl --no-pager -q -o cat -u build-agent.service -u build-advisor.service -p err -n 5 >&2 || true
        err "the services failed to start: see 'systemctl status build-agent build-advisor'"
    fi
    return 0
}

print_next_steps() {
    say ""
    say "Install complete."
    say ""
    say "Build Hive $(cat "$PREFIX/VERSION") is in $PREFIX; build-agent and build-advisor are enabled and running."
    if [ -s "$STATE_DIR/identity.json" ] \
            && [ "$(jq -r '.packages | length' "$STATE_DIR/identity.json" 2>/dev/null)" != 0 ] \
            && [ "$(jq -r '.provisioned' "$STATE_DIR/identity.json" 2>/dev/null)" != true ]; then
        say "The agent installs the role's packages in the background (identity.json records when)."
    fi
    say "Next:"
    say "  hive status                               this node's role and the hive"
    say "  hive peers                                the other members"
    say "  journalctl -u build-agent -f              follow the agent"
    say "  cat $STATE_DIR/identity.json | jq .    the identity the hive gave this node"
}

do_install() {
    check_source
    check_os
    check_systemd
    install_prereqs
    check_python
    ensure_secret
    ensure_config
    ensure_hooks_dir
    check_config
    install_code
    install_units
    install_cli
    open_firewall
    if start_services; then
        follow_agent
    fi
    print_next_steps
}

do_uninstall() {
    local purge=$1 unit
    check_systemd
    close_firewall
    for unit in "${UNITS[@]}"; do
        if [ -e "$UNIT_DIR/$unit" ]; then
            systemctl disable --now --quiet "$unit" 2>/dev/null || true
            rm -f "$UNIT_DIR/$unit"
        fi
    done
    systemctl daemon-reload
    systemctl reset-failed "${UNITS[@]}" 2>/dev/null || true
    rm -rf "$PREFIX" "$PREFIX.new" "$PREFIX.old"
    rm -f "$CLI"
    say "Removed build-agent and build-advisor services, $PREFIX and $CLI."
    if [ "$purge" -eq 1 ]; then
        rm -rf "$STATE_DIR" "$CONF_DIR"
        say "Purged $STATE_DIR (identity) and $CONF_DIR (config and shared secret)."
    else
        say "Kept $STATE_DIR (identity) and $CONF_DIR (config and shared secret); 'install.sh --uninstall --purge' removes them."
    fi
}

main() {
    local uninstall=0 purge=0
    while [ $# -gt 0 ]; do
        case $1 in
            --uninstall) uninstall=1 ;;
            --purge) purge=1 ;;
            --timeout)
                [ $# -ge 2 ] || err "--timeout needs a number of seconds"
                TIMEOUT=$2; shift ;;
            --timeout=*) TIMEOUT=${1#--timeout=} ;;
            -h|--help) usage; return 0 ;;
            *) usage >&2; err "unknown option '$1'" ;;
        esac
        shift
    done
    [[ $TIMEOUT =~ ^[0-9]+$ ]] || err "--timeout must be a whole number of seconds"
    [ "$purge" -eq 0 ] || [ "$uninstall" -eq 1 ] || err "--purge only goes with --uninstall"
    check_root
    if [ "$uninstall" -eq 1 ]; then
        do_uninstall "$purge"
    else
        do_install
    fi
}

main "$@"

#!/usr/bin/env bash
# install.sh: install Build Hive (build-agent + build-advisor) on this node and join the hive.
#
#   sudo bash install.sh                    install or upgrade, start, wait for the identity
#   sudo bash install.sh --uninstall        remove services, code and CLI (keeps identity/secret)
#   sudo bash install.sh --uninstall --purge   ... and /var/lib/build and /etc/build too
#
# Run it from a checkout or an unpacked release tarball (it installs the files next to it), or
# use the one-file install.sh that scripts/make-release builds (this script and the code in one
# file, for `curl -fsSL URL/install.sh -o install.sh && sudo bash install.sh`).  What goes where
# is in packaging/layout.sh, which the Debian package is built from too.
# It never prompts (cloud-init has no terminal) and is idempotent: running it again upgrades the
# code and restarts the services, keeping the identity and the secret.
#
# Environment: HIVE_INSTALL_TIMEOUT (seconds to wait for the identity, default 60).
set -euo pipefail

PREFIX=/opt/build-agent
UNIT_DIR=/etc/systemd/system
CLI=/usr/local/bin/hive
INVENTORY=/usr/local/bin/hive-inventory  # hive inventory for ansible -i
MAN_PAGE=/usr/local/share/man/man1/hive.1
MAN_ALIAS=/usr/local/share/man/man1/hive-inventory.1  # -> hive.1, which documents both
COMPLETION=/usr/local/share/bash-completion/completions/hive
PACKAGE=build-hive  # the Debian package of the same code (scripts/make-release builds it)
CONF_DIR=/etc/build
CONFIG=$CONF_DIR/hive.toml
SECRET=$CONF_DIR/shared_secret
DISABLED_FLAG=$CONF_DIR/hive.disabled
STATE_DIR=/var/lib/build
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
the 'hive' command to $CLI (with its man page, bash completion and $INVENTORY,
the hive as an Ansible inventory) and a default
$CONFIG (never overwritten), generates
$SECRET on the first node (copy it to the others BEFORE installing them), starts both
services and shows how this node joins the hive.

  --timeout S    wait at most S seconds for the identity (default $TIMEOUT)
  --uninstall    stop and remove the services, $PREFIX and 'hive'; keep $STATE_DIR and $CONF_DIR
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

missing_source() {
    err "missing $SRC/$1: run install.sh from a Build Hive checkout or an unpacked release tarball (build-hive-VERSION.tar.gz), or use the one-file install.sh that scripts/make-release builds, not this one on its own"
}

# The files next to this script, and what goes where (packaging/layout.sh: UNITS, the code...).
load_layout() {
    local f
    for f in build_agent/__init__.py packaging/layout.sh; do
        [ -f "$SRC/$f" ] || missing_source "$f"
    done
    # shellcheck source-path=SCRIPTDIR source=packaging/layout.sh
    . "$SRC/packaging/layout.sh"
    for f in "${HIVE_SOURCE_FILES[@]}"; do
        [ -f "$SRC/$f" ] || missing_source "$f"
    done
    UNITS=("${HIVE_UNITS[@]}")
}

# The same code may be installed by the Debian package: two copies would fight over the units, and
# purging the package deletes /etc/build and /var/lib/build, also after install.sh put them back.
check_not_packaged() {
    local status
    command -v dpkg-query >/dev/null 2>&1 || return 0
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$PACKAGE" 2>/dev/null || true)
    case $status in
        ""|?n*) return 0 ;;
        ?c*) err "the Debian package $PACKAGE was removed but not purged, and purging it deletes /etc/build and /var/lib/build: 'apt purge $PACKAGE' first (keep a copy of the secret), or install the package again" ;;
    esac
    err "Build Hive is installed here as the Debian package $PACKAGE: upgrade it with 'apt install ./${PACKAGE}_VERSION_all.deb'; to use install.sh instead, 'apt purge $PACKAGE' first (it deletes /etc/build and /var/lib/build: keep a copy of the secret)"
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
    hive_stage_code "$SRC" "$staging" "$(release_version)"
    "$PYTHON" -m compileall -q "${HIVE_PACKAGES[@]/#/$staging/}" >/dev/null \
        || err "the code in $SRC does not compile with $PYTHON"
    if [ -d "$PREFIX" ]; then
        mv "$PREFIX" "$old"
    fi
    mv "$staging" "$PREFIX"
    rm -rf "$old"
}

install_units() {
    local unit tmp
    for unit in "${UNITS[@]}"; do
        tmp=$(mktemp "$UNIT_DIR/.$unit.XXXXXX")
        hive_render_unit "$SRC" "$unit" "$PREFIX" > "$tmp"
        chmod 0644 "$tmp"
        mv -f "$tmp" "$UNIT_DIR/$unit"
    done
}

# install_file MODE TARGET < content: written atomically (a temporary file next to it, renamed).
install_file() {
    local mode=$1 target=$2 tmp
    install -d -m 0755 "$(dirname "$target")"
    tmp=$(mktemp "$target.XXXXXX")
    cat > "$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$target"
}

# The completion is generated from the parser of the code about to be installed (before anything
# is changed, so a failure stops the install there).
render_completion() {
    COMPLETION_TEXT=$(hive_render_completion "$SRC" "$PYTHON") \
        || err "cannot generate the bash completion of 'hive' with $PYTHON from $SRC"
}

install_cli() {
    hive_render_cli "$PREFIX" "$PYTHON" install.sh | install_file 0755 "$CLI"
    hive_render_inventory "$CLI" install.sh | install_file 0755 "$INVENTORY"
    install_file 0644 "$MAN_PAGE" < "$SRC/$HIVE_MAN_SOURCE"
    ln -sfn "$(basename "$MAN_PAGE")" "$MAN_ALIAS"
    printf '%s\n' "$COMPLETION_TEXT" | install_file 0644 "$COMPLETION"
}

write_default_config() {
    install_file 0644 "$CONFIG" < "$SRC/$HIVE_CONFIG_SOURCE"
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

# The lines of the agent's log a user wants to see while the node joins (see docs/install.md).
is_join_line() {
    case $1 in
        "Discovered "*|"Asking peers"*|" <- "*|"Consensus: "*|"Packages: "*|"No peers found"*) return 0 ;;
        "Identity: "*|"Already identified as: "*|"No advice received"*|"Only "*" advised"*) return 0 ;;
        "Waiting for "*" joining node"*) return 0 ;;
    esac
    return 1
}

# Has the agent settled this node's identity?  Its state for machines (`hive status --json`,
# build_agent/readiness.py) says so, whatever its log lines say.
agent_identified() {
    "$CLI" status --json 2>/dev/null | jq -e '.agent.identified == true' >/dev/null 2>&1
}

# Print the new lines of this invocation of build-agent; LINES_READ: how many there were.
show_agent_log() {
    local invocation=$1 cursor_file=$2 line priority message
    LINES_READ=0
    while IFS= read -r line; do
        LINES_READ=$((LINES_READ + 1))
        priority=${line%% *}
        message=${line#* }
        if [[ $priority =~ ^[0-3]$ ]]; then
            say "error: $message"
        elif is_join_line "$message"; then
            say "$message"
        fi
    done < <(journalctl --no-pager -q -o json --cursor-file="$cursor_file" \
                 "_SYSTEMD_INVOCATION_ID=$invocation" 2>/dev/null \
             | jq -r 'select(.MESSAGE | type == "string") | "\(.PRIORITY // "6") \(.MESSAGE)"')
}

follow_agent() {
    local invocation current cursor_file deadline state
    invocation=$(systemctl show -p InvocationID --value build-agent.service)
    cursor_file=$(mktemp)
    deadline=$((SECONDS + TIMEOUT))
    while :; do
        current=$(systemctl show -p InvocationID --value build-agent.service)
        if [ -n "$current" ] && [ "$current" != "$invocation" ]; then
            invocation=$current  # systemd restarted it (Restart=on-failure): follow the new one
            : > "$cursor_file"
        fi
        show_agent_log "$invocation" "$cursor_file"
        if agent_identified; then
            # The journal may lag the state: read on until it has been quiet for 0.2 s (at most 2 s).
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                sleep 0.2
                show_agent_log "$invocation" "$cursor_file"
                [ "$LINES_READ" -gt 0 ] || break
            done
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
    check_not_packaged
    check_os
    check_systemd
    install_prereqs
    check_python
    ensure_secret
    ensure_config
    ensure_hooks_dir
    check_config
    render_completion
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
    check_not_packaged
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
    rm -f "$CLI" "$INVENTORY" "$MAN_PAGE" "$MAN_ALIAS" "$COMPLETION"
    rmdir "$(dirname "$COMPLETION")" "$(dirname "$(dirname "$COMPLETION")")" 2>/dev/null || true
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
    load_layout
    if [ "$uninstall" -eq 1 ]; then
        do_uninstall "$purge"
    else
        do_install
    fi
}

main "$@"

#!/usr/bin/env bash
# install.sh: Build Hive @VERSION@ in one file, the installer and the code it installs.
#
#   curl -fsSL URL/install.sh -o install.sh && sudo bash install.sh
#   sudo bash install.sh --uninstall [--purge]        sudo bash install.sh --help
#
# Built by scripts/make-release (from packaging/install-onefile.sh): the release tarball
# build-hive-@VERSION@.tar.gz is embedded below (base64).  Before anything else this script checks
# it against its SHA-256, @SHA256@
# (the same as build-hive-@VERSION@.tar.gz.sha256), unpacks it into a temporary directory and
# runs the install.sh inside with the same arguments and environment, so it behaves exactly as
# that one does (install, upgrade, --uninstall, --purge); the directory is removed afterwards.
# It needs bash, coreutils, tar and gzip; bash reads the whole file before running any of it.
set -euo pipefail

VERSION='@VERSION@'
PAYLOAD_SHA256='@SHA256@'

err() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

payload() {
    cat <<'BUILD_HIVE_PAYLOAD'
@PAYLOAD@
BUILD_HIVE_PAYLOAD
}

main() {
    local work status=0
    work=$(mktemp -d "${TMPDIR:-/tmp}/build-hive.XXXXXX") \
        || err "cannot create a temporary directory (set TMPDIR to a writable one)"
    # shellcheck disable=SC2064 # $work is fixed now
    trap "rm -rf '$work'" EXIT
    if ! payload | base64 -d > "$work/release.tar.gz" 2>/dev/null \
            || ! printf '%s  %s\n' "$PAYLOAD_SHA256" "$work/release.tar.gz" | sha256sum -c --status 2>/dev/null; then
        err "the code embedded in this file is damaged (its SHA-256 does not match): download install.sh again; nothing was installed"
    fi
    tar -xzf "$work/release.tar.gz" -C "$work" --no-same-owner \
        || err "cannot unpack the embedded code into $work (disk full?); nothing was installed"
    [ -f "$work/build-hive-$VERSION/install.sh" ] \
        || err "the embedded code has no build-hive-$VERSION/install.sh; nothing was installed"
    bash "$work/build-hive-$VERSION/install.sh" "$@" || status=$?
    exit "$status"
}

main "$@"

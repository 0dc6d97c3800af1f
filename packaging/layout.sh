# shellcheck shell=bash
# packaging/layout.sh: what Build Hive installs, for both ways of installing it.
#
# install.sh (from a checkout, the release tarball or the one-file install.sh) and the Debian
# package (scripts/make-release builds build-hive_VERSION_all.deb) both source this file, so the
# units, the code and the `hive` command they install come from one place:
#
#                  install.sh                                   build-hive package
#   code           /opt/build-agent/                            /usr/lib/build-hive/
#   units          /etc/systemd/system/                         /lib/systemd/system/
#   hive command   /usr/local/bin/hive                          /usr/bin/hive
#   inventory      /usr/local/bin/hive-inventory                /usr/bin/hive-inventory
#   man page       /usr/local/share/man/man1/hive.1             /usr/share/man/man1/hive.1.gz
#                  (and hive-inventory.1, a symlink to it)      (and hive-inventory.1.gz, likewise)
#   completion     /usr/local/share/bash-completion/completions/hive   /usr/share/bash-completion/completions/hive
#   config         /etc/build/hive.toml (written if missing)    /etc/build/hive.toml (conffile)
#   docs           /opt/build-agent/README.md, docs/*.md        /usr/lib/build-hive/README.md, docs/*.md
#
# It only defines names and functions (no side effects when sourced).

# The systemd units (in systemd/ of the source tree).
HIVE_UNITS=(build-agent.service build-advisor.service)
# The Python packages that are the code, copied whole (without bytecode).
HIVE_PACKAGES=(build_agent build_advisor)
# The code directory the units in systemd/ name; hive_render_unit puts another in its place.
HIVE_UNITS_CODE_DIR=/opt/build-agent
# Sources of the other installed files, relative to the source tree.
HIVE_CONFIG_SOURCE=packaging/hive.toml        # the commented default /etc/build/hive.toml
HIVE_MAN_SOURCE=packaging/hive.1              # man hive
HIVE_COMPLETION_GENERATOR=packaging/completion.py
HIVE_EXAMPLE_HOOK=examples/role.d/50-ci-agent  # installed beside the code, not active
# What install.sh needs next to it (checked before it does anything).
HIVE_SOURCE_FILES=(build_agent/__init__.py build_agent/__main__.py build_agent/cli.py
                   build_advisor/__init__.py build_advisor/__main__.py
                   systemd/build-agent.service systemd/build-advisor.service
                   scripts/bootstrap.sh packaging/layout.sh "$HIVE_CONFIG_SOURCE"
                   "$HIVE_MAN_SOURCE" "$HIVE_COMPLETION_GENERATOR")

# hive_stage_code SRC DEST VERSION: DEST (new, empty or missing) gets the code: the Python
# packages, bootstrap.sh, VERSION, README.md (the units' Documentation=) with the pages it links
# to (docs/*.md, as docs/ beside it, so its links work where it is installed) and the example
# role hook, readable by everyone, writable by root only.
hive_stage_code() {
    local src=$1 dest=$2 version=$3 page
    install -d -m 0755 "$dest"
    tar -C "$src" --exclude='__pycache__' --exclude='*.pyc' --no-same-owner -cf - \
        "${HIVE_PACKAGES[@]}" | tar -C "$dest" --no-same-owner -xf -
    install -m 0755 "$src/scripts/bootstrap.sh" "$dest/bootstrap.sh"
    [ ! -f "$src/README.md" ] || install -m 0644 "$src/README.md" "$dest/README.md"
    for page in "$src"/docs/*.md; do
        [ -f "$page" ] || continue
        install -d -m 0755 "$dest/docs"
        install -m 0644 "$page" "$dest/docs/${page##*/}"
    done
    if [ -f "$src/$HIVE_EXAMPLE_HOOK" ]; then  # an example, not active (mode 0644): see README
        install -d -m 0755 "$dest/$(dirname "$HIVE_EXAMPLE_HOOK")"
        install -m 0644 "$src/$HIVE_EXAMPLE_HOOK" "$dest/$HIVE_EXAMPLE_HOOK"
    fi
    printf '%s\n' "$version" > "$dest/VERSION"
    chmod -R u=rwX,go=rX "$dest"
    chmod 0755 "$dest/bootstrap.sh"
}

# hive_render_unit SRC UNIT CODE_DIR: the unit as it is installed with the code in CODE_DIR.
hive_render_unit() {
    local src=$1 unit=$2 code_dir=$3 text
    text=$(< "$src/systemd/$unit")
    printf '%s\n' "${text//"$HIVE_UNITS_CODE_DIR"/"$code_dir"}"
}

# hive_render_cli CODE_DIR PYTHON INSTALLED_BY: the `hive` command, a wrapper that runs the CLI
# of the code in CODE_DIR (-P: the current directory cannot shadow the installed code).
hive_render_cli() {
    local code_dir=$1 python=$2 by=$3
    cat <<WRAPPER
#!/bin/sh
# hive: the Build Hive command line (installed by $by; code in $code_dir).
PYTHONPATH=$code_dir\${PYTHONPATH:+:\$PYTHONPATH} PYTHONDONTWRITEBYTECODE=1 exec $python -P -m build_agent.cli "\$@"
WRAPPER
}

# hive_render_inventory CLI INSTALLED_BY: hive-inventory, `hive inventory` as an executable file,
# which Ansible's script inventory plugin runs with --list or --host NAME
# (`ansible -i /usr/local/bin/hive-inventory builder -m ping`); HIVE_CONFIG names another hive.toml.
hive_render_inventory() {
    local cli=$1 by=$2
    cat <<WRAPPER
#!/bin/sh
# hive-inventory: the Build Hive as an Ansible dynamic inventory (installed by $by).
exec $cli \${HIVE_CONFIG:+--config "\$HIVE_CONFIG"} inventory "\$@"
WRAPPER
}

# hive_render_completion SRC PYTHON: the bash completion of `hive`, generated from the parser of
# the CLI in SRC (so every subcommand and option it has is completed).
hive_render_completion() {
    local src=$1 python=$2
    PYTHONPATH=$src PYTHONDONTWRITEBYTECODE=1 "$python" -P "$src/$HIVE_COMPLETION_GENERATOR"
}

#!/bin/bash
# Install absurd's systemd services on this host, then reload systemd.
#
#   scripts/install_systemd.sh [--venv DIR]
#
# Places, from this repository:
#   /opt/absurd/venv                     Python environment with the absurd package:
#                                        made here with `python3 -m venv` and pip, or,
#                                        with --venv DIR, a link to an existing one
#   /opt/absurd/scripts/*.py             the programs the units run
#   /usr/local/lib/systemd/system/       every unit in systemd/ (*.service, *.timer,
#                                        *.target), so a new timer is one more pair
#   /usr/local/lib/sysusers.d/absurd.conf, /usr/local/lib/tmpfiles.d/absurd.conf
#   /etc/absurd/*.conf                   the examples in etc/, never over existing files
# and records every placed path in /opt/absurd/installed-files for
# scripts/uninstall_systemd.sh. Enables and starts nothing.
set -euo pipefail

readonly EXIT_OK=0
readonly EXIT_FAILED=1
readonly EXIT_USAGE=2

readonly PREFIX=/opt/absurd
readonly UNIT_DIR=/usr/local/lib/systemd/system
readonly SYSUSERS_DIR=/usr/local/lib/sysusers.d
readonly TMPFILES_DIR=/usr/local/lib/tmpfiles.d
readonly CONFIG_DIR=/etc/absurd
readonly MANIFEST=$PREFIX/installed-files
# A drop-in for every absurd-*.service (systemd reads "absurd-.service.d" for them).
readonly PYTHON_DROPIN=$UNIT_DIR/absurd-.service.d/10-python-location.conf
REPO=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
readonly REPO

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

fail() {
    echo "install_systemd: $*" >&2
    exit "$EXIT_FAILED"
}

record() {
    printf '%s\n' "$@" >>"$MANIFEST.new"
}

check_host() {
    [ "$(id -u)" -eq 0 ] ||
        fail "must run as root (it writes under /opt, /usr/local and /etc)"
    command -v systemd-sysusers >/dev/null ||
        fail "systemd-sysusers not found: this host does not run systemd"
    [ -f "$REPO/systemd/absurd-worker@.service" ] ||
        fail "no units under $REPO/systemd: run the script of an absurd checkout"
}

# Link /opt/absurd/venv to an environment that already has absurd installed.
link_venv() {
    local venv
    venv=$(readlink -f "$1")
    [ -x "$venv/bin/python" ] ||
        fail "--venv $1: no $1/bin/python; give the folder of a virtual environment"
    "$venv/bin/python" -c 'import absurd, psycopg, sdnotify, configargparse, psutil' ||
        fail "--venv $1: absurd or its dependencies do not import; pip install this" \
            "checkout into it"
    if [ -e "$PREFIX/venv" ] && [ ! -L "$PREFIX/venv" ]; then
        fail "$PREFIX/venv was made by an earlier install; remove it to use --venv"
    fi
    ln -sfn "$venv" "$PREFIX/venv"
    echo "linked $PREFIX/venv -> $venv"
}

# Make (or update) /opt/absurd/venv and install this checkout into it.
make_venv() {
    if [ -L "$PREFIX/venv" ]; then
        rm "$PREFIX/venv"
    fi
    if [ ! -x "$PREFIX/venv/bin/python" ]; then
        python3 -m venv "$PREFIX/venv" ||
            fail "python3 -m venv failed: install python3-venv"
    fi
    "$PREFIX/venv/bin/pip" install --quiet --upgrade "$REPO" ||
        fail "pip install of $REPO failed: see pip's message above"
    echo "installed absurd into $PREFIX/venv"
}

install_scripts() {
    install -d -m 0755 "$PREFIX/scripts"
    local script
    for script in "$REPO"/scripts/*.py; do
        install -m 0755 "$script" "$PREFIX/scripts/"
        record "$PREFIX/scripts/$(basename "$script")"
    done
}

install_units() {
    install -d -m 0755 "$UNIT_DIR"
    local unit
    for unit in "$REPO"/systemd/*.service "$REPO"/systemd/*.timer \
        "$REPO"/systemd/*.target; do
        [ -e "$unit" ] || continue
        install -m 0644 "$unit" "$UNIT_DIR/"
        record "$UNIT_DIR/$(basename "$unit")"
    done
    install -D -m 0644 "$REPO/systemd/sysusers.d/absurd.conf" \
        "$SYSUSERS_DIR/absurd.conf"
    install -D -m 0644 "$REPO/systemd/tmpfiles.d/absurd.conf" \
        "$TMPFILES_DIR/absurd.conf"
    record "$SYSUSERS_DIR/absurd.conf" "$TMPFILES_DIR/absurd.conf"
}

# ProtectHome= hides /home and /root from the services, and PrivateTmp= gives them a
# /tmp and /var/tmp of their own. When the interpreter, the environment or the
# package source lives in one of those (pyenv, a checkout in a home or under /tmp),
# show just those folders to the services, read-only.
expose_hidden_python() {
    local paths homes=""
    paths=$("$PREFIX/venv/bin/python" - <<'EOF'
import os, sys, absurd
hidden = ("/home/", "/root/", "/run/user/", "/tmp/", "/var/tmp/")
found = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix)}
found.add(os.path.dirname(os.path.dirname(os.path.realpath(absurd.__file__))))
print(" ".join(sorted(p for p in found if p.startswith(hidden))))
EOF
    )
    rm -f "$PYTHON_DROPIN"
    [ -n "$paths" ] || return 0
    case " $paths" in *" /home/"* | *" /root/"* | *" /run/user/"*) homes=yes ;; esac
    install -d -m 0755 "$(dirname "$PYTHON_DROPIN")"
    {
        echo "# Written by install_systemd.sh: the Python environment lives where the"
        echo "# units' sandboxing would hide it (a home or a temporary folder); only"
        echo "# these folders are shown, read-only."
        echo "[Service]"
        # Over the homes, an empty tmpfs rather than nothing, so that the bind mounts
        # below have somewhere to land; private /tmp and /var/tmp already are one.
        [ -z "$homes" ] || echo "ProtectHome=tmpfs"
        echo "BindReadOnlyPaths=$paths"
    } >"$PYTHON_DROPIN"
    record "$PYTHON_DROPIN" "$(dirname "$PYTHON_DROPIN")"
    echo "Python lives in a folder the units hide: services see $paths" \
        "(drop-in $PYTHON_DROPIN)"
}

install_config() {
    install -d -m 0750 -o root -g absurd "$CONFIG_DIR"
    local example target
    for example in "$REPO"/etc/*.conf; do
        target="$CONFIG_DIR/$(basename "$example")"
        if [ -e "$target" ]; then
            echo "kept existing $target"
        else
            install -m 0640 -o root -g absurd "$example" "$target"
            echo "placed example $target"
        fi
    done
}

# Files an earlier install placed that this one did not (a unit since removed).
drop_stale_files() {
    [ -f "$MANIFEST" ] || return 0
    local path
    while IFS= read -r path; do
        if [ -f "$path" ] && ! grep -qxF -- "$path" "$MANIFEST.new"; then
            rm -f -- "$path"
            echo "removed $path (no longer shipped)"
        fi
    done <"$MANIFEST"
}

reload_systemd() {
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    else
        echo "systemd is not running here: units take effect at the next boot"
    fi
}

main() {
    local venv=""
    while [ $# -gt 0 ]; do
        case $1 in
        --venv) venv=${2:?--venv needs a folder}; shift 2 ;;
        --venv=*) venv=${1#--venv=}; shift ;;
        -h | --help) usage; exit "$EXIT_OK" ;;
        *)
            echo "install_systemd: unknown argument $1" >&2
            usage >&2
            exit "$EXIT_USAGE"
            ;;
        esac
    done
    check_host

    install -d -m 0755 "$PREFIX"
    : >"$MANIFEST.new"
    if [ -n "$venv" ]; then link_venv "$venv"; else make_venv; fi
    record "$PREFIX/venv"
    install_scripts
    install_units

    systemd-sysusers "$SYSUSERS_DIR/absurd.conf"
    systemd-tmpfiles --create "$TMPFILES_DIR/absurd.conf"
    expose_hidden_python
    install_config

    record "$PREFIX/scripts" "$MANIFEST" "$PREFIX"
    drop_stale_files
    mv "$MANIFEST.new" "$MANIFEST"
    reload_systemd
    echo "installed; set dsn in $CONFIG_DIR/absurd.conf, then:" \
        "systemctl start absurd-worker@1"
}

main "$@"

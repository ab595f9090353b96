#!/bin/bash
# Remove what scripts/install_systemd.sh placed, after stopping and disabling the
# services, then reload systemd.
#
#   scripts/uninstall_systemd.sh [--purge]
#
# Keeps /etc/absurd (configuration) and /var/lib/absurd (state, backups, the
# embedded database) unless --purge is given. The absurd system user stays either
# way: files it owns may remain elsewhere, and a new user could inherit its id.
set -euo pipefail

readonly EXIT_OK=0
readonly EXIT_FAILED=1
readonly EXIT_USAGE=2

readonly PREFIX=/opt/absurd
readonly MANIFEST=$PREFIX/installed-files
readonly CONFIG_DIR=/etc/absurd
readonly STATE_DIR=/var/lib/absurd

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

fail() {
    echo "uninstall_systemd: $*" >&2
    exit "$EXIT_FAILED"
}

# Stop every loaded absurd unit and remove the symlinks that enabled any of them.
stop_units() {
    [ -d /run/systemd/system ] || return 0
    local units=()
    mapfile -t units < <(grep -E '\.(service|timer|target)$' "$MANIFEST" |
        xargs -rn1 basename)
    [ ${#units[@]} -gt 0 ] || return 0
    systemctl stop 'absurd-*' ||
        echo "some absurd units did not stop cleanly; continuing"
    systemctl disable "${units[@]}" 2>/dev/null || true
}

remove_placed() {
    local path
    # Files first, then folders (listed after their contents), emptied ones only.
    while IFS= read -r path; do
        if [ "$path" = "$PREFIX/venv" ] && [ ! -L "$path" ]; then
            rm -rf -- "$path"
        elif [ -L "$path" ] || [ -f "$path" ]; then
            rm -f -- "$path"
        elif [ -d "$path" ]; then
            rmdir -- "$path" 2>/dev/null || echo "kept $path: not empty"
        fi
    done <"$MANIFEST"
}

main() {
    local purge=no
    while [ $# -gt 0 ]; do
        case $1 in
        --purge) purge=yes; shift ;;
        -h | --help) usage; exit "$EXIT_OK" ;;
        *)
            echo "uninstall_systemd: unknown argument $1" >&2
            usage >&2
            exit "$EXIT_USAGE"
            ;;
        esac
    done
    [ "$(id -u)" -eq 0 ] || fail "must run as root"
    [ -f "$MANIFEST" ] ||
        fail "no $MANIFEST: absurd is not installed here (nothing removed)"

    stop_units
    remove_placed
    if [ "$purge" = yes ]; then
        rm -rf -- "$CONFIG_DIR" "$STATE_DIR"
        echo "removed $CONFIG_DIR and $STATE_DIR"
    else
        echo "kept $CONFIG_DIR and $STATE_DIR (--purge removes them)"
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl reset-failed 'absurd-*' 2>/dev/null || true
    fi
    echo "uninstalled"
}

main "$@"

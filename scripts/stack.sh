#!/bin/sh
# Orthanc stacks: a Debian root per Orthanc version that users run, made with
# debootstrap from the Debian archive, so that tests and benchmarks run the
# same Orthanc whatever the host's own release is (as root).
#
#   stack.sh build NAME     make NAME's root, or check the one already made
#                           (rebuilt when missing or broken); install this
#                           checkout in it as the Dockerfile does
#   stack.sh root NAME      print NAME's root directory
#   stack.sh versions NAME  print the versions the root holds
#   stack.sh run NAME [--bind DIR]... [--] COMMAND [ARG]...
#                           run COMMAND inside NAME's root (chroot), where
#                           /tmp, /dev, /proc and each DIR (no spaces) are the
#                           host's, at the same paths (bind mounts, left in place)
#   stack.sh remove NAME    unmount what 'run' left in NAME's root, and remove it
#   stack.sh mirror         print the Debian archive that builds use
#
# NAME is one of:
#   bookworm  Debian 12: Orthanc 1.10.1, Python plugin 4.0, Python 3.11
#   trixie    Debian 13: Orthanc 1.12.7, Python plugin 5.0, Python 3.13
#   sid       the versions of the current orthancteam/orthanc image:
#             Orthanc 1.13.0, Python plugin 7.1, Python 3.14
#
# Roots live in $ORTHANC_STACKS (default /var/cache/orthanc-cache-plugin/stacks),
# outside the checkout: every clone on the machine shares them.  They are made
# from $ORTHANC_STACKS_MIRROR (default: the first Debian archive that the
# host's apt sources name).
set -eu

STACKS=${ORTHANC_STACKS:-/var/cache/orthanc-cache-plugin/stacks}
CHECKOUT=$(cd "$(dirname "$0")/.." && pwd)
# What every root holds: Orthanc with the plugins the tests load, and what the
# cache plugin needs from Debian (its own package comes from pip, as in the image).
PACKAGES="orthanc orthanc-python orthanc-postgresql orthanc-dicomweb python3-diskcache python3-pip"
# Bumped when PACKAGES or the steps below change: older roots are rebuilt.
LAYOUT=2

usage() {
    sed -n '2,27p' "$0" >&2
    exit 2
}

check_name() {
    case "$1" in
        bookworm|trixie|sid) ;;
        *) echo "stack.sh: unknown stack '$1' (bookworm, trixie or sid)" >&2; exit 2 ;;
    esac
}

# The Debian mirror that the host's apt uses (debootstrap needs one).
mirror() {
    if [ -n "${ORTHANC_STACKS_MIRROR:-}" ]; then
        echo "$ORTHANC_STACKS_MIRROR"
        return
    fi
    found=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
            | sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)[[:space:]]*$/\1/p' | head -n 1)
    if [ -z "$found" ]; then
        found=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
                | sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\/debian\)[[:space:]].*/\2/p' \
                | head -n 1)
    fi
    if [ -z "$found" ]; then
        echo "stack.sh: no Debian mirror in /etc/apt/sources.list*: cannot run debootstrap" >&2
        exit 1
    fi
    echo "$found"
}

# True when ROOT runs its Orthanc and the embedded interpreter finds diskcache.
healthy() {
    [ -f "$1/.stack-layout" ] && [ "$(cat "$1/.stack-layout")" = "$LAYOUT" ] \
        && chroot "$1" /usr/sbin/Orthanc --version >/dev/null 2>&1 \
        && chroot "$1" /usr/bin/python3 -c 'import diskcache' >/dev/null 2>&1
}

versions_of() {
    chroot "$1" dpkg-query -W -f '${Package} ${Version}\n' \
        orthanc orthanc-python orthanc-postgresql orthanc-dicomweb python3 python3-diskcache
}

# Free space where roots are built, in KB; a build needs about 1 GB at its peak.
NEEDED_KB=1000000
free_kb() {
    df -Pk "$STACKS" | awk 'NR == 2 { print $4 }'
}

# One line a new user understands: why the build in LOG failed, and what to do.
diagnose() {
    log=$1
    if grep -q 'No space left on device' "$log" || [ "$(free_kb)" -lt $NEEDED_KB ]; then
        echo "the disk is full: $(free_kb) KB free in $STACKS, a root needs about 1 GB while it is built; free some space, or set ORTHANC_STACKS to a folder on a larger disk"
    elif grep -Eq 'Temporary failure resolving|Could not resolve|Failed to fetch|Failed getting release file|Connection (refused|timed out)|Network is unreachable|Couldn.t download|Could not connect' "$log"; then
        echo "the Debian archive $(mirror) could not be reached: check the network, or name a reachable Debian mirror in ORTHANC_STACKS_MIRROR or the host's apt sources"
    elif grep -Eq 'Unable to locate package|has no installation candidate|Couldn.t find these debs|E: Package .* has no' "$log"; then
        echo "a package is missing from the $2 suite of $(mirror) ($(grep -Eo "(Unable to locate package|Package) [^ ]+" "$log" | head -n 1)): that mirror may be incomplete or out of date; name a current Debian mirror in ORTHANC_STACKS_MIRROR"
    elif grep -Eq 'Invalid Release signature|NO_PUBKEY|is not signed|Release signed by unknown key|not valid yet' "$log"; then
        echo "the archive's $2 Release file could not be verified (signature or date: check the clock, and debian-archive-keyring on the host)"
    else
        echo "see the log's last lines above"
    fi
}

build() {
    root="$STACKS/$1"
    if ! healthy "$root"; then
        if ! command -v debootstrap >/dev/null 2>&1; then
            apt-get update -q
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
        fi
        echo "stack.sh: building the $1 root in $root (a few minutes, once)" >&2
        mkdir -p "$STACKS"
        release_mounts "$root.new"
        rm -rf --one-file-system "$root.new"
        if [ "$(free_kb)" -lt $NEEDED_KB ]; then
            echo "stack.sh: building the $1 root failed: $(diagnose /dev/null "$1")" >&2
            exit 1
        fi
        # apt-get, not debootstrap's --include, installs the packages: only apt
        # resolves virtual dependencies (bookworm's libboost-regex1.74.0-icu72).
        # policy-rc.d keeps the packages' scripts from starting Orthanc.  The
        # root's apt (only the root's: never the host's) accepts Release files
        # past their Valid-Until: mirrors, snapshots and apt caches that are not
        # refreshed daily serve them (sid's, on these machines), and a root is a
        # test fixture, not a system that needs security updates to be fresh.
        { debootstrap --variant=minbase "$1" "$root.new" "$(mirror)" \
            && printf '#!/bin/sh\nexit 101\n' >"$root.new/usr/sbin/policy-rc.d" \
            && chmod +x "$root.new/usr/sbin/policy-rc.d" \
            && printf 'Acquire::Check-Valid-Until "false";\n' \
                >"$root.new/etc/apt/apt.conf.d/99stack-valid-until" \
            && chroot "$root.new" apt-get update -q \
            && DEBIAN_FRONTEND=noninteractive chroot "$root.new" \
                apt-get install -y -q --no-install-recommends $PACKAGES \
            && chroot "$root.new" apt-get clean; } >"$STACKS/$1.log" 2>&1 || {
            tail -n 20 "$STACKS/$1.log" >&2
            echo "stack.sh: building the $1 root failed: $(diagnose "$STACKS/$1.log" "$1") (log: $STACKS/$1.log)" >&2
            exit 1
        }
        echo "$LAYOUT" >"$root.new/.stack-layout"
        versions_of "$root.new" >"$root.new/.stack-versions"
        healthy "$root.new" || { echo "stack.sh: the new $1 root does not run Orthanc" >&2; exit 1; }
        release_mounts "$root"
        rm -rf --one-file-system "$root"
        mv "$root.new" "$root"
    fi
    # The same install as the Dockerfile's: pip, into the interpreter Orthanc embeds.
    # Its own name: the root's /tmp may be the host's (mounted by 'run'),
    # shared with other builds.
    copy="/tmp/orthanc-cache-plugin-$1-$$"
    rm -rf "$root$copy"
    mkdir -p "$root$copy"
    (cd "$CHECKOUT" && tar --exclude=./.git --exclude=./.venv --exclude='*.egg-info' \
        --exclude=./build --exclude=__pycache__ -cf - .) | tar -xf - -C "$root$copy"
    # pip inside the root reaches the package index as the host does: same
    # name servers, same certificate authorities (a proxy's may be among them).
    cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    fi
    env -u PIP_CERT -u PIP_FIND_LINKS PIP_QUIET=1 PIP_ROOT_USER_ACTION=ignore \
        chroot "$root" pip install --break-system-packages "$copy[redis]"
    rm -rf "$root$copy"
    cp "$CHECKOUT/example.py" "$root/etc/orthanc/cache-plugin.py"
}

# Mount what COMMANDs in ROOT need, once: /proc, /dev, and the host's /tmp and
# each DIR at their own paths.  In the host's mount namespace, and left in
# place, so that what tests mount later below ROOT (a full or read-only cache
# directory) is what Orthanc sees.  Serialized: two Orthancs may start at once.
ensure_mounts() {
    root=$1
    shift
    mkdir -p "$STACKS"
    (
        flock 9
        drop_deleted_mounts "$root"
        mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
        mountpoint -q "$root/dev" || mount --rbind /dev "$root/dev"
        for dir in /tmp "$@"; do
            case "$dir" in
                /tmp/*) continue ;;  # seen through the /tmp mount already
            esac
            mkdir -p "$root$dir"
            # A mount left by an earlier run may show another directory that had
            # the same path (a checkout removed and cloned again, as CI does):
            # only a mount of this very directory will do.
            while ! same_directory "$root$dir" "$dir" && mountpoint -q "$root$dir"; do
                umount -l "$root$dir"
            done
            same_directory "$root$dir" "$dir" || mount --bind "$dir" "$root$dir"
        done
    ) 9>"$STACKS/.mounts.lock"
}

# True when both paths are the same directory (device and inode).
same_directory() {
    [ "$(stat -L -c %d:%i "$1" 2>/dev/null)" = "$(stat -L -c %d:%i "$2")" ]
}

# Unmount the bind mounts below ROOT whose directory was removed from the host
# (checkouts and work trees gone since): they would keep it alive and hide a
# new directory at the same path.  The kernel marks them "//deleted".
drop_deleted_mounts() {
    awk -v root="$1/" 'index($5, root) == 1 && $4 ~ /\/\/deleted$/ { print $5 }' \
        /proc/self/mountinfo | sort -r | while read -r target; do
        # rmdir: the empty mount point made for it in the root goes too.
        umount -l "$target" 2>/dev/null && rmdir "$target" 2>/dev/null || true
    done
}

# Unmount everything below ROOT (before it is removed: /tmp and /dev are there).
release_mounts() {
    grep -o " $1/[^ ]*" /proc/self/mounts 2>/dev/null | sort -r | while read -r target; do
        umount -l "$target" 2>/dev/null || true
    done
}

run() {
    root="$STACKS/$1"
    shift
    binds=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --bind) binds="$binds $(cd "$2" && pwd)"; shift 2 ;;
            --) shift; break ;;
            *) break ;;
        esac
    done
    [ $# -gt 0 ] || usage
    [ -x "$root/usr/sbin/Orthanc" ] || { echo "stack.sh: no $root: run 'stack.sh build'" >&2; exit 1; }
    # shellcheck disable=SC2086 # paths without spaces
    ensure_mounts "$root" $binds
    # chroot execs COMMAND: it keeps this process's id, so signals reach it.
    exec chroot "$root" "$@"
}

remove() {
    release_mounts "$STACKS/$1"
    release_mounts "$STACKS/$1.new"
    rm -rf --one-file-system "$STACKS/$1" "$STACKS/$1.new"
}

if [ "${1:-}" = mirror ]; then
    mirror
    exit 0
fi
[ $# -ge 2 ] || usage
command=$1
name=$2
shift 2
check_name "$name"
case "$command" in
    build) build "$name" ;;
    root) echo "$STACKS/$name" ;;
    versions) cat "$STACKS/$name/.stack-versions" ;;
    run) run "$name" "$@" ;;
    remove) remove "$name" ;;
    *) usage ;;
esac

#!/usr/bin/env bash
# Run eoe_filter's unit tests on a big-endian CPU, emulated.
#
# The boards are big-endian MIPS64, this machine is little-endian x86_64.
# Debian 12 (bookworm) has no big-endian MIPS port any more (only mips64el),
# and s390x is its only big-endian 64-bit release architecture, so this
# script runs the tests in a Debian bookworm s390x root under qemu-user:
#
#   1. installs debootstrap, qemu-user-static and binfmt-support if missing,
#      mounts binfmt_misc and enables the qemu-s390x handler with the F
#      (fix-binary) flag, so s390x binaries run inside a chroot that holds
#      no qemu binary of its own;
#   2. builds (once, then reuses) a bookworm s390x root with python3,
#      pytest and hypothesis from Debian, from the mirror that apt on this
#      machine uses; optional test dependencies (scapy, pyroute2,
#      pytest-timeout, tshark, systemd-analyze) are installed from Debian
#      when the s390x archive has them, tests needing one it lacks are
#      --ignore'd and named;
#   3. shows the repository read-only in the root (src/, tests/unit/ and
#      the files tests read, such as pyproject.toml and contrib/; writes go
#      to a throw-away overlay layer), checks that Python there says
#      sys.byteorder == "big", and runs
#      `python3 -m pytest -q -p no:cacheprovider tests/unit` with
#      PYTHONPATH=src;
#   4. unmounts what it mounted (also on failure or Ctrl-C), prints timings
#      and exits with pytest's exit code.
#
# Must run as root (debootstrap, chroot, mount).  Exit status: pytest's
# (0 passed, 1 failed, 5 no tests collected, ...), or 100 when the harness
# itself failed (setup, root build, Python in the root not big-endian).
#
# Environment (all optional):
#   EOE_BE_ROOT        cache directory of the s390x root
#                      (default /var/cache/eoe_filter/s390x-root)
#   EOE_BE_REBUILD=1   throw the cached root away and build it again
#   EOE_BE_MIRROR      Debian mirror URL (default: the one apt here uses)
#   EOE_BE_TESTS       test directory to run, relative to the repository or
#                      absolute (default tests/unit); it is mounted in the
#                      root as tests/unit
#   EOE_BE_PYTEST_ARGS extra pytest arguments, split on whitespace
#   EOE_BE_OPTIONAL    optional Debian packages as "package:name ..." (default
#                      below); a test that imports module "name", or calls
#                      which("name"), when the s390x archive lacks the
#                      package, is --ignore'd
#   EOE_BE_PIP         pip requirement specs to install from PyPI on top of
#                      Debian's packages, e.g. "scapy>=2.6" when Debian's
#                      version is older than the one the tests are written
#                      for (binary wheels only; default: none, Debian only)
#   EOE_BE_HYPOTHESIS_DEADLINE  hypothesis deadline in ms under emulation,
#                      or "none" (default none, see write_harness_plugin)
set -euo pipefail

# --------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------
readonly ARCH=s390x
readonly SUITE=bookworm
readonly FALLBACK_MIRROR=http://deb.debian.org/debian
readonly HOST_PACKAGES=(debootstrap qemu-user-static binfmt-support debian-archive-keyring)
# Always in the root: the test runner and what the unit tests use.
readonly REQUIRED_PACKAGES=(python3 python3-pytest python3-hypothesis)
# Installed when the s390x archive has them, as "debian-package:name", where
# name is the Python module or the program the tests need from it.
# Besides Python modules, the unit tests run tshark (the Lua dissector test)
# and systemd-analyze (the unit file test); Debian packages those too.
read -r -a OPTIONAL_PACKAGES <<<"${EOE_BE_OPTIONAL:-python3-scapy:scapy python3-pyroute2:pyroute2 python3-pytest-timeout:pytest_timeout tshark:tshark systemd:systemd-analyze}"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
readonly ROOT=${EOE_BE_ROOT:-/var/cache/eoe_filter/s390x-root}
readonly PARTIAL=$ROOT.partial          # a build in progress, renamed when done
readonly STATE=.eoe-be                  # bookkeeping directory inside the root
readonly WORK=/eoe_filter               # where the tests run, inside the root
readonly BUILD_LOG=$ROOT.build.log      # debootstrap's and apt's chatter
TESTS=${EOE_BE_TESTS:-tests/unit}
[[ $TESTS = /* ]] || TESTS=$REPO/$TESTS
readonly TESTS

T_START=$(date +%s.%N)
HAVE_LOCK=0         # set once this run holds the root's lock
TIMINGS=()          # "phase seconds" lines for the summary

log() { printf '[bigendian] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 100; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
record() { TIMINGS+=("$(printf '%-28s %7ss' "$1" "$(elapsed "$2")")"); }

# --------------------------------------------------------------------------
# Cleanup: unmount, in reverse order, every mount point below the root or the
# partial root.  These are all ours: our bind mounts, our proc/tmpfs mounts,
# and /proc or /sys that debootstrap's second stage mounts (and leaves behind
# if it fails).  binfmt_misc is left mounted: it is host setup, like the
# installed packages, and other users of qemu may rely on it.
# --------------------------------------------------------------------------
mounts_below() {
    local m dir
    findmnt -rn -o TARGET | while read -r m; do
        m=$(printf '%b' "$m")   # findmnt -r escapes spaces as \x20
        for dir in "$@"; do
            if [[ $m == "$dir" || $m == "$dir"/* ]]; then printf '%s\n' "$m"; fi
        done
    done | sort -r -u           # reversed: submounts before their parents
}

unmount_all() {
    local m
    while read -r m; do
        [[ -n $m ]] || continue
        umount "$m" 2>/dev/null || umount -l "$m" || log "WARNING: could not unmount $m"
    done < <(mounts_below "$ROOT" "$PARTIAL")
}

# shellcheck disable=SC2317  # reached through the trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # Only the run holding the lock may have mounted anything; a run still
    # waiting for it must not unmount the other run's tree.
    if ((HAVE_LOCK)); then unmount_all; fi
    record "total" "$T_START"
    log "timings:"
    printf '[bigendian]   %s\n' "${TIMINGS[@]}" >&2
    log "exit status $rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# quiet WHAT CMD...: run CMD with its output appended to the build log; on
# failure show the log's tail and stop.
quiet() {
    local what=$1; shift
    printf '\n=== %s: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$BUILD_LOG"
    if ! "$@" >>"$BUILD_LOG" 2>&1; then
        tail -n 40 "$BUILD_LOG" >&2
        die "$what failed (full log: $BUILD_LOG)"
    fi
}

# mount_in SRC DST [mount options...]: mount below the root (the EXIT trap
# unmounts everything there).
mount_in() {
    mkdir -p "$2"
    mount "${@:3}" "$1" "$2"
}

# --------------------------------------------------------------------------
# 1. Host tools and binfmt_misc
# --------------------------------------------------------------------------
install_host_tools() {
    local missing=() p
    for p in "${HOST_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing host packages: ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

# The handler must be enabled and carry the F flag: with F the kernel opens
# the qemu interpreter once, at registration, so it is found even after
# chroot into a root that has no /usr/bin/qemu-s390x-static of its own.
binfmt_ok() {
    local entry=/proc/sys/fs/binfmt_misc/qemu-$ARCH
    [[ -r $entry ]] && grep -qx enabled "$entry" &&
        grep -E '^flags:' "$entry" | grep -q F
}

setup_binfmt() {
    local bm=/proc/sys/fs/binfmt_misc
    if [[ ! -e $bm/register ]]; then
        log "mounting binfmt_misc on $bm"
        mount -t binfmt_misc binfmt_misc "$bm"
    fi
    binfmt_ok && return 0

    # The packaged way: qemu-user-static ships the definition (fix_binary yes).
    update-binfmts --enable "qemu-$ARCH" >&2 || true
    binfmt_ok && return 0

    # By hand: drop whatever entry exists under that name (e.g. one without
    # F, registered by qemu-user) and register the static qemu with F.
    log "registering qemu-$ARCH in binfmt_misc by hand (flag F)"
    [[ -e $bm/qemu-$ARCH ]] && echo -1 >"$bm/qemu-$ARCH"
    local magic='\x7f\x45\x4c\x46\x02\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x16'
    local mask='\xff\xff\xff\xff\xff\xff\xff\xfc\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff'
    # Debian's wrapper, when present, also keeps argv[0] (flag P).
    local interp=/usr/libexec/qemu-binfmt/$ARCH-binfmt-P flags=PF
    [[ -x $interp ]] || { interp=/usr/bin/qemu-$ARCH-static; flags=F; }
    printf ':qemu-%s:M:0:%s:%s:%s:%s\n' "$ARCH" "$magic" "$mask" "$interp" "$flags" >"$bm/register"
    binfmt_ok || die "could not enable the qemu-$ARCH binfmt_misc handler with the F flag"
}

# --------------------------------------------------------------------------
# 2. The s390x root
# --------------------------------------------------------------------------

# Print "URI SUITE" for every 'deb' entry apt is configured with, in apt's
# order: one-line sources.list files and deb822 *.sources files.
apt_deb_entries() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        # deb [ options ] URI SUITE COMPONENTS...
        awk '$1 == "deb" { i = 2
                 if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
                 print $i, $(i + 1) }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        # Paragraphs of "Field: value" lines; emit URI x Suite for Types: deb.
        awk 'BEGIN { RS = ""; FS = "\n" }
             { types = uris = suites = ""; enabled = "yes"
               for (i = 1; i <= NF; i++) {
                   if ($i ~ /^#/ || $i !~ /:/) continue
                   key = tolower(substr($i, 1, index($i, ":") - 1))
                   val = substr($i, index($i, ":") + 1)
                   if (key == "types") types = val
                   else if (key == "uris") uris = val
                   else if (key == "suites") suites = val
                   else if (key == "enabled") enabled = tolower(val)
               }
               if (enabled ~ /no/ || (" " types " ") !~ /[ \t]deb[ \t]/) next
               nu = split(uris, u, /[ \t]+/); ns = split(suites, s, /[ \t]+/)
               for (a = 1; a <= nu; a++) for (b = 1; b <= ns; b++)
                   if (u[a] != "" && s[b] != "") print u[a], s[b] }' "$f"
    done
}

# The Debian mirror for debootstrap: $EOE_BE_MIRROR, else apt's entry for
# bookworm itself, else apt's first ".../debian" entry that is not a
# security or updates suite, else the fallback.
find_mirror() {
    if [[ -n ${EOE_BE_MIRROR:-} ]]; then echo "${EOE_BE_MIRROR%/}"; return; fi
    local entries uri
    entries=$(apt_deb_entries | grep -E '^(https?|ftp|file)://' || true)
    uri=$(awk -v s="$SUITE" '$2 == s { print $1; exit }' <<<"$entries")
    [[ -n $uri ]] || uri=$(awk '$1 ~ /\/debian\/?$/ && $2 !~ /-(security|updates|backports)$/ { print $1; exit }' <<<"$entries")
    if [[ -n $uri ]]; then echo "${uri%/}"; else
        log "no Debian mirror found in apt's sources, falling back to $FALLBACK_MIRROR"
        echo "$FALLBACK_MIRROR"
    fi
}

# What a root must have been built with to be reused.
build_id() { printf 'arch=%s suite=%s variant=minbase include=%s\n' "$ARCH" "$SUITE" "$(IFS=,; echo "${REQUIRED_PACKAGES[*]}")"; }

root_complete() {
    [[ -f $ROOT/$STATE/complete && -x $ROOT/usr/bin/python3 ]] &&
        [[ $(head -n1 "$ROOT/$STATE/complete") == "$(build_id)" ]]
}

# Run a command in a root with a clean environment.
in_root() {
    local dir=$1; shift
    chroot "$dir" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

# Proxy from apt's configuration, for debootstrap's wget and the root's apt.
apt_proxy() {
    local APT_PROXY=''
    eval "$(apt-config shell APT_PROXY Acquire::http::Proxy)"
    echo "$APT_PROXY"
}

build_root() {
    local mirror proxy
    mirror=$(find_mirror)
    proxy=$(apt_proxy)
    [[ -n $proxy && -z ${http_proxy:-} ]] && export http_proxy=$proxy
    log "building a Debian $SUITE $ARCH root in $ROOT from $mirror (takes minutes, log: $BUILD_LOG)"

    unmount_all
    rm -rf --one-file-system "$PARTIAL" "$ROOT"
    : >"$BUILD_LOG"

    # First stage: download and unpack, no s390x code runs yet.
    local t
    t=$(date +%s.%N)
    quiet "debootstrap (first stage)" \
        debootstrap --arch="$ARCH" --foreign --variant=minbase --components=main \
        --include="$(IFS=,; echo "${REQUIRED_PACKAGES[*]}")" \
        "$SUITE" "$PARTIAL" "$mirror"
    record "debootstrap first stage" "$t"

    # Does an s390x binary run in there?  Only if binfmt_misc is right.
    in_root "$PARTIAL" /bin/true ||
        die "s390x binaries do not run in the chroot: check /proc/sys/fs/binfmt_misc/qemu-$ARCH (enabled, flags F)"

    # Second stage: configure every package, running s390x code under qemu.
    t=$(date +%s.%N)
    quiet "debootstrap --second-stage" in_root "$PARTIAL" /debootstrap/debootstrap --second-stage
    record "debootstrap second stage" "$t"

    # apt in the root: same mirror; no service starts; host's DNS and proxy.
    printf 'deb %s %s main\n' "$mirror" "$SUITE" >"$PARTIAL/etc/apt/sources.list"
    printf '#!/bin/sh\nexit 101\n' >"$PARTIAL/usr/sbin/policy-rc.d"
    chmod 755 "$PARTIAL/usr/sbin/policy-rc.d"
    [[ -n $proxy ]] && printf 'Acquire::http::Proxy "%s";\n' "$proxy" >"$PARTIAL/etc/apt/apt.conf.d/01proxy"
    cp -L /etc/resolv.conf "$PARTIAL/etc/resolv.conf" 2>/dev/null || true

    mkdir -p "$PARTIAL/$STATE"
    : >"$PARTIAL/$STATE/optional"
    { build_id; echo "mirror=$mirror built=$(date -u +%FT%TZ)"; } >"$PARTIAL/$STATE/complete"
    mv "$PARTIAL" "$ROOT"
}

# apt-get update in the root, retried: a name-resolution hiccup makes apt
# "ignore" the index and go on with stale lists (it exits 0 then), and every
# later download waits out its own time-outs, so check and retry instead.
# The root's apt also retries each download.
root_apt_update() {
    echo 'Acquire::Retries "5";' >"$ROOT/etc/apt/apt.conf.d/80eoe-be-retries"
    local try
    for try in 1 2 3 4; do
        if in_root "$ROOT" apt-get update --error-on=any >>"$BUILD_LOG" 2>&1; then
            return 0
        fi
        log "apt-get update in the root failed (try $try), retrying in $((try * 10))s"
        sleep $((try * 10))
    done
    tail -n 20 "$BUILD_LOG" >&2
    die "apt-get update in the root keeps failing (full log: $BUILD_LOG)"
}

# Install the optional packages the archive has for s390x; remember the
# answer per package in $ROOT/$STATE/optional ("package module status") so
# cached runs do not ask apt again.
ensure_optional() {
    local status=$ROOT/$STATE/optional todo=() entry
    for entry in "${OPTIONAL_PACKAGES[@]}"; do
        grep -qs "^${entry%%:*} " "$status" || todo+=("$entry")
    done
    ((${#todo[@]})) || return 0

    local t pkg mod candidate have=()
    t=$(date +%s.%N)
    mount_in proc "$ROOT/proc" -t proc
    mount_in devpts "$ROOT/dev/pts" -t devpts -o newinstance,ptmxmode=0666   # dpkg's log pty
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
    log "checking the $ARCH archive for: ${todo[*]%%:*}"
    root_apt_update
    for entry in "${todo[@]}"; do
        pkg=${entry%%:*} mod=${entry#*:}
        candidate=$(in_root "$ROOT" apt-cache policy "$pkg" | awk '/Candidate:/ { print $2 }')
        if [[ -n $candidate && $candidate != "(none)" ]]; then
            log "  $pkg $candidate: available for $ARCH"
            have+=("$pkg")
        else
            log "  $pkg: NOT available for $ARCH"
            echo "$pkg $mod unavailable" >>"$status"
        fi
    done
    if ((${#have[@]})); then
        log "installing in the root: ${have[*]}"
        quiet "apt-get install in the root" in_root "$ROOT" DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends "${have[@]}"
        in_root "$ROOT" apt-get clean
        for entry in "${todo[@]}"; do
            pkg=${entry%%:*}
            if [[ " ${have[*]} " == *" $pkg "* ]]; then
                echo "$pkg ${entry#*:} installed" >>"$status"
            fi
        done
    fi
    umount "$ROOT/dev/pts" "$ROOT/proc"
    record "optional packages" "$t"
}

# Opt-in PyPI extras (EOE_BE_PIP), for when Debian's version of a package is
# too old for the tests.  pip runs in the root, so it resolves against the
# Debian packages there and picks wheels for s390x (pure-Python ones for
# most); it installs into /usr/local, which shadows /usr/lib/python3.  The
# specs installed are remembered; when they change, /usr/local's
# site-packages is emptied and filled again.
ensure_pip_extras() {
    local spec=${EOE_BE_PIP:-} stamp=$ROOT/$STATE/pip t
    [[ $(cat "$stamp" 2>/dev/null) == "$spec" ]] && return 0
    t=$(date +%s.%N)
    rm -rf --one-file-system "$ROOT"/usr/local/lib/python3*/dist-packages/*
    if [[ -n $spec ]]; then
        local specs=()
        read -r -a specs <<<"$spec"
        mount_in proc "$ROOT/proc" -t proc
        cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
        if [[ ! -x $ROOT/usr/bin/pip3 ]]; then
            root_apt_update
            quiet "apt-get install python3-pip in the root" in_root "$ROOT" \
                DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-pip
            in_root "$ROOT" apt-get clean
        fi
        # pip in the root trusts the CAs this host trusts (a TLS-inspecting
        # proxy's CA is in the host's bundle, not in the root's).
        cp -L "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$ROOT/$STATE/host-ca.crt"
        log "installing from PyPI in the root (EOE_BE_PIP): ${specs[*]}"
        quiet "pip install in the root" in_root "$ROOT" PIP_CERT="/$STATE/host-ca.crt" \
            ${https_proxy:+https_proxy=$https_proxy} ${PIP_INDEX_URL:+PIP_INDEX_URL=$PIP_INDEX_URL} \
            python3 -m pip install --break-system-packages --only-binary=:all: \
            --no-cache-dir --disable-pip-version-check "${specs[@]}"
        local site=("$ROOT"/usr/local/lib/python3*/dist-packages)
        in_root "$ROOT" python3 -m pip list --path "${site[0]#"$ROOT"}" \
            --disable-pip-version-check 2>/dev/null | sed 's/^/[bigendian]   /' >&2 || true
        umount "$ROOT/proc"
    fi
    printf '%s' "$spec" >"$stamp"
    record "PyPI extras" "$t"
}

# --------------------------------------------------------------------------
# 3. Run the tests
# --------------------------------------------------------------------------

# Under qemu, Python runs several times slower than natively, and
# hypothesis' default deadline (200 ms per example, wall clock) turns slow
# into failing (DeadlineExceeded / Flaky), as it can trip the too_slow
# health check on data generation.  This pytest plugin, kept in the
# root (not the repository) and loaded with -p, registers and loads a
# profile without that deadline and health check.  It is loaded before any conftest.py, so a
# profile that the project's conftest loads, and a test's own
# @settings(deadline=...), still win.
write_harness_plugin() {
    local deadline=${EOE_BE_HYPOTHESIS_DEADLINE:-none}
    [[ $deadline == none ]] && deadline=None
    cat >"$ROOT/usr/lib/python3/dist-packages/eoe_be_harness.py" <<EOF
# Written by scripts/bigendian-unit-tests.sh: emulated CPU, relaxed deadline.
try:
    from hypothesis import HealthCheck, settings
except ImportError:
    pass
else:
    settings.register_profile("qemu-bigendian", deadline=$deadline,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("qemu-bigendian")
EOF
}

# For each optional package that the archive lacks, print "--ignore=FILE<TAB>
# NAMES" for every test file under tests/unit that needs it: imports its
# module (directly, or through modules of src/), or looks its program up
# with shutil.which("NAME").  Runs with the root's python3 on the work tree.
exclusions() {
    local missing=() entry
    for entry in "${OPTIONAL_PACKAGES[@]}"; do   # only the packages asked for now
        if grep -qx "${entry%%:*} ${entry#*:} unavailable" "$ROOT/$STATE/optional"; then
            missing+=("${entry#*:}")
        fi
    done
    ((${#missing[@]})) || return 0
    in_root "$ROOT" python3 - "$WORK" "${missing[@]}" <<'EOF'
import ast, pathlib, sys
work, missing = pathlib.Path(sys.argv[1]), set(sys.argv[2:])

def names(path, package=""):
    """Dotted names a file imports, and programs it passes to which()."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except SyntaxError:
        return set()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import inside src/
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in parts + [base] if p)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        elif (isinstance(node, ast.Call) and node.args
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "which"
              and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return found

src = {}  # dotted module name -> (file, package it lives in)
for p in (work / "src").rglob("*.py"):
    parts = list(p.relative_to(work / "src").with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
        src[".".join(parts)] = (p, ".".join(parts))
    else:
        src[".".join(parts)] = (p, ".".join(parts[:-1]))

def needs(path, package, seen):
    why = set()
    for name in names(path, package):
        if name in missing or name.split(".")[0] in missing:
            why.add(name if name in missing else name.split(".")[0])
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # the module and its packages
            mod = ".".join(parts[:i])
            if mod in src and mod not in seen:
                seen.add(mod)
                why |= needs(*src[mod], seen)
    return why

for test in sorted((work / "tests" / "unit").rglob("*.py")):
    why = needs(test, "", set())
    if why:
        print(f"--ignore={test.relative_to(work)}\t{', '.join(sorted(why))}")
EOF
}

run_tests() {
    [[ -d $TESTS ]] || die "test directory $TESTS does not exist"
    [[ $REPO != *[,:]* ]] || die "the repository path must not contain ',' or ':' (overlayfs options): $REPO"
    local w=$ROOT$WORK scratch=$ROOT/$STATE/scratch

    # The work tree: the whole repository (tests read more than src/ and
    # tests/unit: pyproject.toml, contrib/, ...) as the read-only lower layer
    # of an overlay whose writable upper layer is a tmpfs.  pytest, hypothesis
    # and the tests can write there; the repository never changes, and the
    # writes are gone at unmount.  The tests to run come on top of it,
    # bind-mounted read-only, at tests/unit.
    mount_in proc "$ROOT/proc" -t proc
    mount_in tmpfs "$ROOT/dev/shm" -t tmpfs -o mode=1777
    mount_in tmpfs "$scratch" -t tmpfs -o mode=700
    mkdir -p "$scratch/upper" "$scratch/work"
    mount_in overlay "$w" -t overlay \
        -o "lowerdir=$REPO,upperdir=$scratch/upper,workdir=$scratch/work"
    mount_in "$TESTS" "$w/tests/unit" --bind -o ro
    # /dev/net/tun is deliberately absent (tests that need it skip): qemu-user
    # answers an ioctl number it does not know with ENOSYS itself, where the
    # kernel says ENOTTY, so tests probing the kernel with a wrong number
    # would fail for qemu's sake, not the code's.
    write_harness_plugin

    # Proof first: Python in the root must run big-endian.
    local order
    order=$(in_root "$ROOT" python3 -c 'import sys; print(sys.byteorder)')
    log "python3 -c 'import sys; print(sys.byteorder)' in the $ARCH root: $order"
    [[ $order == big ]] || die "expected sys.byteorder 'big' in the $ARCH root, got '$order'"
    in_root "$ROOT" python3 -c 'import platform, sys; print("[bigendian] python", sys.version.split()[0], "on", platform.machine())' >&2

    # Tests needing a package that Debian lacks for s390x are left out, loudly.
    local args=() line why
    while IFS=$'\t' read -r line why; do
        [[ -n $line ]] || continue
        log "EXCLUDED ${line#--ignore=}: needs $why, which Debian does not ship for $ARCH"
        args+=("$line")
    done < <(exclusions)
    local extra=()
    read -r -a extra <<<"${EOE_BE_PYTEST_ARGS:-}"

    log "running: python3 -m pytest -q -p no:cacheprovider ${args[*]} ${extra[*]} tests/unit  (tests from $TESTS)"
    local t
    t=$(date +%s.%N)
    PYTEST_RC=0
    # shellcheck disable=SC2016  # $0 and $@ are expanded by the root's sh
    in_root "$ROOT" PYTHONPATH=src PYTHONDONTWRITEBYTECODE=1 \
        sh -c 'cd "$0" && exec python3 -m pytest -q -p no:cacheprovider -p eoe_be_harness "$@"' \
        "$WORK" "${args[@]}" "${extra[@]}" tests/unit || PYTEST_RC=$?
    record "pytest (emulated $ARCH)" "$t"
}

# --------------------------------------------------------------------------
main() {
    [[ $EUID -eq 0 ]] || die "run as root (debootstrap, chroot and mount need it)"

    local t
    t=$(date +%s.%N)
    install_host_tools
    setup_binfmt
    record "host tools + binfmt" "$t"

    # One run at a time per root: builds and mounts must not interleave.
    mkdir -p "$(dirname "$ROOT")"
    exec 9>"$ROOT.lock"
    if ! flock -n 9; then
        log "another run holds $ROOT.lock, waiting"
        flock 9
    fi
    HAVE_LOCK=1

    t=$(date +%s.%N)
    unmount_all   # leftovers of a run that was killed hard
    if [[ ${EOE_BE_REBUILD:-0} == 1 ]] || ! root_complete; then
        build_root
        record "root build" "$t"
    else
        log "reusing the $ARCH root in $ROOT ($(sed -n 2p "$ROOT/$STATE/complete"))"
        record "root reuse check" "$t"
    fi
    ensure_optional
    ensure_pip_extras

    # Called plainly, not as "run_tests || ...", which would switch set -e
    # off inside it; it leaves pytest's exit code in PYTEST_RC.
    run_tests
    exit "$PYTEST_RC"
}

main "$@"

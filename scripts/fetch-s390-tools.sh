#!/usr/bin/env bash
# Fetches IBM's s390-tools for s390x from the Debian archive and unpacks
# them into target/s390-tools (never installed into the host), so that the
# tests can run the real lszcrypt under qemu-user against simulated nodes.
#
# Needs root and apt-get: it adds the s390x architecture to dpkg, installs
# qemu-user-static and libc6-s390x-cross when they are missing, downloads
# s390-tools:s390x with `apt-get download` and unpacks it with `dpkg-deb -x`.
# Shared libraries that lszcrypt needs beyond the C library are fetched as
# their :s390x packages and unpacked into the same directory.
#
# Idempotent: a second run finds the unpacked tool and does nothing. When
# the package registry cannot be reached it prints a warning and exits 0;
# the tests that need lszcrypt then print SKIPPED.
#
# Environment:
#   CEX_S390_TOOLS_DIR  where to unpack (default: <repo>/target/s390-tools)
#   CEX_S390X_SYSROOT   the s390x C library root (default: /usr/s390x-linux-gnu)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${CEX_S390_TOOLS_DIR:-$repo/target/s390-tools}
sysroot=${CEX_S390X_SYSROOT:-/usr/s390x-linux-gnu}
stamp=$dest/.fetched

say() { echo "fetch-s390-tools: $*"; }
warn() { echo "fetch-s390-tools: warning: $*" >&2; }
give_up() {
    warn "$*"
    warn "lszcrypt tests will print SKIPPED"
    exit 0
}

if [ -f "$stamp" ] && [ -x "$dest/sbin/lszcrypt" ]; then
    say "already unpacked: $(cat "$stamp") in $dest"
    exit 0
fi

command -v apt-get >/dev/null || give_up "apt-get not found; cannot fetch s390-tools"
command -v dpkg-deb >/dev/null || give_up "dpkg-deb not found; cannot unpack s390-tools"
[ "$(id -u)" = 0 ] || give_up "not root; cannot add the s390x architecture or install qemu-user-static"

export DEBIAN_FRONTEND=noninteractive
updated=false
apt_update() {
    if ! $updated; then
        say "apt-get update"
        apt-get update -q >/dev/null || return 1
        updated=true
    fi
}

# The host programs: qemu-user and the s390x C library.
host_packages=()
command -v qemu-s390x-static >/dev/null || host_packages+=(qemu-user-static)
[ -e "$sysroot/lib/ld64.so.1" ] || host_packages+=(libc6-s390x-cross)
if [ ${#host_packages[@]} -gt 0 ]; then
    apt_update || give_up "apt-get update failed; registry unreachable?"
    say "installing ${host_packages[*]}"
    apt-get install -y -q --no-install-recommends "${host_packages[@]}" >/dev/null \
        || give_up "could not install ${host_packages[*]}"
fi

if ! dpkg --print-foreign-architectures | grep -qx s390x; then
    say "adding the s390x architecture to dpkg"
    dpkg --add-architecture s390x
    updated=false
fi
if ! apt-cache show s390-tools:s390x >/dev/null 2>&1; then
    apt_update || give_up "apt-get update failed; registry unreachable?"
fi

download_dir=$(mktemp -d)
trap 'rm -rf "$download_dir"' EXIT
# fetch PACKAGE...: downloads the :s390x packages and unpacks them into $dest.
fetch() {
    local package
    for package in "$@"; do
        say "downloading $package:s390x"
        (cd "$download_dir" && apt-get download -q -o APT::Sandbox::User=root "$package:s390x" >/dev/null) \
            || give_up "apt-get download $package:s390x failed; registry unreachable?"
    done
    local deb
    for deb in "$download_dir"/*.deb; do
        say "unpacking $(basename "$deb") into $dest"
        [ "$(dpkg-deb -f "$deb" Package)" = s390-tools ] && version=$(dpkg-deb -f "$deb" Version)
        dpkg-deb -x "$deb" "$dest"
        rm -f "$deb"
    done
}

version=unknown
mkdir -p "$dest"
fetch s390-tools
lszcrypt=$dest/sbin/lszcrypt
[ -x "$lszcrypt" ] || give_up "the s390-tools package has no sbin/lszcrypt"

# Shared libraries lszcrypt needs that neither the C library root nor the
# unpacked tree provides: fetch the s390x package that ships each one.
missing_libraries() {
    local library dir found
    command -v readelf >/dev/null || return 0
    for library in $(readelf -d "$lszcrypt" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
        found=false
        for dir in "$sysroot/lib" "$dest/lib/s390x-linux-gnu" "$dest/usr/lib/s390x-linux-gnu"; do
            [ -e "$dir/$library" ] && found=true
        done
        $found || echo "$library"
    done
}
# A library libNAME.so.N ships in the package libNAMEN, zlib excepted.
package_of() {
    case $1 in
    libz.so.1) echo zlib1g ;;
    *.so.*) echo "${1%%.so.*}${1##*.so.}" ;;
    esac
}
for library in $(missing_libraries); do
    package=$(package_of "$library")
    if [ -z "$package" ] || ! apt-cache show "$package:s390x" >/dev/null 2>&1; then
        warn "no s390x package found for $library; lszcrypt may not start"
        continue
    fi
    fetch "$package"
done
for library in $(missing_libraries); do
    warn "$library is still missing; lszcrypt may not start"
done

echo "s390-tools:s390x $version" >"$stamp"
say "unpacked s390-tools:s390x $version; lszcrypt is $lszcrypt"

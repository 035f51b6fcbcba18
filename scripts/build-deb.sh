#!/bin/bash
# `make deb`: target/deb/libapache2-mod-amqp-heartbeat_<version>_<arch>.deb
# (and its -dbgsym .ddeb, .buildinfo, .changes).
#
# dpkg-buildpackage writes its results into the parent of the tree it builds
# and its debhelper state into debian/: so the package is built from a copy
# of the tracked and untracked-but-not-ignored files in
# target/deb/build/<package>-<version>/, never in the checkout (nothing
# lands in the git tree or beside it). cargo builds into a target dir of
# its own, target/deb/cargo (CARGO_TARGET_DIR): sharing the checkout's
# target/ is not safe, because cargo names a path crate's artifacts
# without its path, so the copy's build script and the checkout's overwrite
# each other (seen: a stale build script). The first time, target/deb/cargo
# starts as a copy of the checkout's release build, so the package reuses
# every dependency `make build` compiled and only what cc compiles with
# Debian's CFLAGS (dpkg-buildflags: ring and the crate's C shim) is
# rebuilt: under a minute, where an empty target dir cost a whole cold
# build (3 to 5 minutes) in every fresh clone, CI's included.
#
# The only network access is `cargo fetch --locked` (crates.io, nothing when
# the crates are cached); the package build itself runs cargo --offline.
set -e -o pipefail
cd "$(dirname "$0")/.."

version=$(/usr/bin/python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["package"]["version"])')
deb_version=$(dpkg-parsechangelog -S Version)
if [ "$version" != "$deb_version" ]; then
    echo "build-deb: Cargo.toml says $version, debian/changelog says $deb_version:" \
        "add a changelog entry (dch -v $version)" >&2
    exit 1
fi
package=$(dpkg-parsechangelog -S Source)

cargo fetch --locked
scripts/deb-copyright.py --check

out=target/deb
tree=$out/build/$package-$version
mkdir -p "$tree"
# Refresh the copy (tar keeps mtimes, so cargo sees unchanged files as
# unchanged).
find "$tree" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
# (A tracked file deleted in the checkout is left out.)
git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
    tar --null --files-from=- -cf - | tar -xf - -C "$tree"

rm -f "$out/build/${package}"_* "$out/build/${package}-dbgsym"_*
cargo_out="$PWD/$out/cargo"
if [ ! -d "$cargo_out/release" ] && [ -d target/release ]; then
    mkdir -p "$cargo_out"
    cp -a --reflink=auto target/release "$cargo_out/"
fi
(cd "$tree" && CARGO_TARGET_DIR="$cargo_out" dpkg-buildpackage -us -uc -b)

rm -f "$out/${package}"_* "$out/${package}-dbgsym"_*
mv "$out/build/${package}"_* "$out/build/${package}-dbgsym"_* "$out/"
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
echo "build-deb: $out/${package}_${version}_${arch}.deb"

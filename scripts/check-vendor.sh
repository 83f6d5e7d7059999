#!/usr/bin/env bash
# Checks that vendor/redb is redb 4.6.0 as published on crates.io plus vendor/redb.patch and
# nothing else. With --write, regenerates vendor/redb.patch from vendor/redb instead.
set -euo pipefail
cd "$(dirname "$0")/.."
version=4.6.0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Fetch the published crate through cargo (a throwaway package that depends on it, unpatched).
mkdir -p "$work/fetch/src"
cat > "$work/fetch/Cargo.toml" <<TOML
[package]
name = "fetch-redb"
version = "0.0.0"
edition = "2021"
[dependencies]
redb = "=$version"
[workspace]
TOML
touch "$work/fetch/src/lib.rs"
cargo fetch -q --manifest-path "$work/fetch/Cargo.toml"
crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/redb-$version.crate | head -n1)
mkdir -p "$work/a"
tar xzf "$crate" -C "$work/a"
mv "$work/a/redb-$version" "$work/a/redb"

# Git leaves out what redb's own .gitignore names (its Cargo.lock), so compare without it.
diff_out="$work/redb.patch"
(cd "$work/a" && diff -ru --exclude=Cargo.lock --exclude=.cargo-ok redb "$OLDPWD/vendor/redb" \
  | sed -e '/^diff /d' -e "s#^--- redb/\([^[:space:]]*\).*#--- a/\1#" \
        -e "s#^+++ $OLDPWD/vendor/redb/\([^[:space:]]*\).*#+++ b/\1#" -e "s#$OLDPWD/vendor/redb#b#g" \
  > "$diff_out") || true
if [ "${1:-}" = "--write" ]; then
  cp "$diff_out" vendor/redb.patch
  echo "vendor/redb.patch written ($(grep -c '^@@' vendor/redb.patch) hunks)"
elif diff -u vendor/redb.patch "$diff_out"; then
  echo "vendor/redb is redb $version plus vendor/redb.patch ($(grep -c '^@@' vendor/redb.patch) hunks)"
else
  echo "vendor/redb differs from redb $version plus vendor/redb.patch (diff above)" >&2
  exit 1
fi

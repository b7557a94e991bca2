#!/usr/bin/env bash
# `make assets`: fetch the console's front-end packages from the npm registry, check each tarball
# against the integrity pinned here, and copy the built file and its licence into the app's static
# folder. The output is committed, so the app (and `make demo`) never needs Node or the network.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=sfx_backend/console/static/vendor
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# name version integrity(sha512, as the registry publishes it) built-file licence-file
PACKAGES=(
  "chart.js 4.5.1 sha512-GIjfiT9dbmHRiYi6Nl2yFCq7kkwdkp1W/lp2J99rX0yo9tgJGn3lKQATztIjb5tVtevcBtIdICNWqlq5+E8/Pw== dist/chart.umd.min.js LICENSE.md"
)

mkdir -p "$DEST"
for entry in "${PACKAGES[@]}"; do
  read -r name version integrity built licence <<<"$entry"
  (cd "$WORK" && npm pack --silent "$name@$version" >/dev/null)
  tarball=$(ls "$WORK"/*.tgz)
  actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
  if [[ "$actual" != "$integrity" ]]; then
    echo "$name@$version: integrity $actual does not match the pinned $integrity" >&2
    exit 1
  fi
  tar -xzf "$tarball" -C "$WORK"
  out="$DEST/$name"
  mkdir -p "$out"
  # The source map is not shipped: drop the comment that would make a browser ask for it.
  sed '/^\/\/# sourceMappingURL=/d' "$WORK/package/$built" >"$out/$(basename "$built")"
  cp "$WORK/package/$licence" "$out/LICENSE.md"
  echo "$name $version $integrity" >"$out/VERSION"
  rm -rf "$WORK/package" "$tarball"
  echo "vendored $name@$version into $out"
done

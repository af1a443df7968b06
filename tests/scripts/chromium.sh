#!/bin/sh
# Prints the path of a headless-capable Chromium, installing Debian's package when it is
# missing and apt-get can (as root). Exits 1, saying why, when neither works.
set -e
for name in chromium chromium-browser google-chrome; do
  if path=$(command -v "$name"); then echo "$path"; exit 0; fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >&2 ||
    { echo "apt-get could not install chromium" >&2; exit 1; }
  command -v chromium && exit 0
fi
echo "no Chromium found, and it cannot be installed here" >&2
exit 1

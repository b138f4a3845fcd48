#!/usr/bin/env bash
# Fetch the Apache Kafka broker jars into the cache (idempotent).
# Order of preference: $KAFKA_HOME (an unpacked Kafka release), Maven Central via mvn,
# then the Apache release tarball.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${LOANREC_CACHE_DIR:-$HOME/.cache/loan-recovery}"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
lib="$cache/kafka-$version/lib"

if [ -n "${KAFKA_HOME:-}" ] && [ -d "$KAFKA_HOME/libs" ]; then
  echo "using KAFKA_HOME=$KAFKA_HOME" >&2
  exit 0
fi
if [ -f "$lib/.complete" ]; then
  exit 0
fi
mkdir -p "$lib"
if command -v mvn >/dev/null 2>&1; then
  echo "fetching Kafka $version jars from Maven Central into $lib ..." >&2
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$lib" -DincludeScope=runtime >&2
else
  echo "mvn not found; downloading the Apache Kafka $version release tarball ..." >&2
  tmp="$(mktemp -d)"
  curl -fsSL "https://archive.apache.org/dist/kafka/$version/kafka_2.13-$version.tgz" -o "$tmp/k.tgz"
  tar -xzf "$tmp/k.tgz" -C "$tmp"
  cp "$tmp"/kafka_2.13-"$version"/libs/*.jar "$lib/"
  rm -rf "$tmp"
fi
touch "$lib/.complete"

#!/usr/bin/env bash
# Install the Debian packages the test suite drives as a person would: headless Chromium and
# its WebDriver (the Swagger UI and drift report tests), curl (the README's commands), promtool
# (checks the Prometheus alert rules; Debian package prometheus). Never a browser fetched by
# a tool at run time: these are Debian's own packages. Java (openjdk-17-jre-headless) runs Spark's
# local mode for the batch scoring test.
# Exit 0 when they are present; exit 3 (with the reason) when they cannot be installed here.
set -euo pipefail
declare -A package_of=([chromium]=chromium [chromedriver]=chromium-driver [curl]=curl [promtool]=prometheus [java]=openjdk-17-jre-headless)
missing=()
for tool in "${!package_of[@]}"; do
    command -v "$tool" >/dev/null || missing+=("${package_of[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "test tools missing (${missing[*]}) and not installable: needs root and apt-get" >&2
    exit 3
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null; }; then
    echo "test tools missing (${missing[*]}): apt-get install failed" >&2
    exit 3
fi

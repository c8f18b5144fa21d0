#!/usr/bin/env bash
# The soak (issue 11): builds scribe and scribe-soak in release, then runs the soak with its
# defaults (32 clients, 20 minutes, a replica SIGKILLed every minute, runaways every 3 minutes).
# Arguments are passed to scribe-soak: scripts/soak.sh --minutes 3 --report soak.md
# (scripts/soak.sh --help lists them all).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p scribe -p scribe-soak
exec target/release/scribe-soak --scribe target/release/scribe "$@"

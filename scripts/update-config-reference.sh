#!/bin/sh
# Rewrites README.md's config reference table from `switchyard config reference` (the schema in
# core/src/config_schema.cc is the one source). Usage: scripts/update-config-reference.sh [BUILD]
set -eu
build=${1:-build}
python3 - "$build/switchyard" <<'PY'
import subprocess, sys
lines = open('README.md').read().split('\n')
start = lines.index('| key | type | default | help |')
end = start
while end < len(lines) and lines[end].startswith('|'):
    end += 1
table = subprocess.run([sys.argv[1], 'config', 'reference'], capture_output=True, text=True, check=True).stdout
lines[start:end] = table.rstrip('\n').split('\n')
open('README.md', 'w').write('\n'.join(lines))
PY

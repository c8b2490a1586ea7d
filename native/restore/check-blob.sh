#!/bin/sh
# The blob is copied elsewhere and runs with nothing else mapped: its code must not refer to
# anything outside its own section (no relocations at all) nor call anything (no undefined symbols).
set -e
obj="$1"
undef=$(nm -u "$obj")
if [ -n "$undef" ]; then echo "check-blob: $obj calls outside itself: $undef" >&2; exit 1; fi
if objdump -r -j tgblob "$obj" 2>/dev/null | grep -q 'R_X86_64'; then
  echo "check-blob: $obj has relocations in section tgblob:" >&2
  objdump -r -j tgblob "$obj" >&2
  exit 1
fi
others=$(objdump -h "$obj" | awk '$2 ~ /^\.(text|data|rodata|bss)/ && $3 != "00000000" {print $2}')
if [ -n "$others" ]; then echo "check-blob: $obj has code or data outside section tgblob: $others" >&2; exit 1; fi

#!/bin/sh
# Runs each test binary (and end-to-end script) under a timeout and prints one summary line.
# A binary that exits 77 was skipped (it says why).
pass=0 fail=0 skip=0
for t in "$@"; do
	echo "== $t"
	case $t in
	*.sh) timeout "${TEST_TIMEOUT:-300}" sh "$t" ;;
	*) timeout "${TEST_TIMEOUT:-300}" "$t" ;;
	esac
	rc=$?
	case $rc in
	0) pass=$((pass + 1)) ;;
	77) skip=$((skip + 1)) ;;
	*) echo "FAILED: $t (exit $rc)"; fail=$((fail + 1)) ;;
	esac
done
echo "test binaries: $pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]

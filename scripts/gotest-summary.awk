# Summarises go test -v output (scripts/gotest.sh).
/^=== RUN / {
	if (!($3 in started)) { started[$3] = 1; order[++n] = $3 }
	next
}
/^ *--- (PASS|FAIL|SKIP): / {
	name = $3
	ended[name] = $2
	d = $4; gsub(/[()s]/, "", d)
	if (name !~ /\//) secs[name] = d + 0
	if ($2 == "FAIL:") failed[++nf] = name " " $4
	next
}
/^(ok|FAIL)[ \t]+[^ \t]/ { results[++nr] = $0; next }
/^panic: / { panics[++np] = $0; inpanic = 1; next }
inpanic && /^running tests:/ { next }
inpanic && /^\t/ { panics[++np] = "  running:" $0; next }
inpanic { inpanic = 0 }
END {
	for (i = 1; i <= nr; i++) print results[i]
	for (i = 1; i <= np; i++) print panics[i]
	if (nf) { print "failed:"; for (i = 1; i <= nf; i++) print "  " failed[i] }
	u = 0
	for (i = 1; i <= n; i++) if (!(order[i] in ended)) { if (!u++) print "never finished:"; print "  " order[i] }
	# The slowest top-level tests, for keeping CI's time in view.
	m = 0
	for (t in secs) { top[++m] = t }
	for (i = 2; i <= m; i++) { v = top[i]; j = i - 1; while (j > 0 && secs[top[j]] < secs[v]) { top[j+1] = top[j]; j-- } top[j+1] = v }
	if (m) print "slowest:"
	for (i = 1; i <= m && i <= 12; i++) printf "  %7.1fs %s\n", secs[top[i]], top[i]
}

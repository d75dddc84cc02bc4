package report

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"strings"
	"testing"
	"unicode/utf8"
)

// A crafted recording: names that close the report's code fence and write
// YAML, break code spans and tables, carry HTML or start headings. The
// Markdown and the HTML carry none of it as structure; the names show
// quoted and marked.
func TestHostileNames(t *testing.T) {
	fence := "web\n```\nhostNetwork: true\n```\n"
	evil := podID("shop", "api-0`; rm -rf /`", "Deployment", fence, "services", []string{"shop/cart\n# Owned"})
	lines := []string{
		`{"kdrop_record":1,"started":"2026-11-27T11:50:00Z","version":"v1\n## Injected","cluster":"prod<script>alert(1)</script>","nodes":[{"name":"n1","kernel":"6.1` + "`" + `x"}]}`,
		ev(1, "overflow", 300, map[string]any{"dst": "10.244.0.9", "dport": 8080, "queue": "accept", "queue_len": 129, "queue_max": 128, "somaxconn": 128,
			"dst_k8s": evil, "where_k8s": evil}),
		ev(2, "drop", 40, map[string]any{"dst": "10.244.0.9", "dport": 80, "reason": "NO_SOCKET`|<b>x</b>|", "location": "tcp_v4_rcv\n```",
			"src_k8s": podID("web\n# h", "client", "", ""), "dst_k8s": evil}),
		ev(3, "unreach", 5, map[string]any{"dst": "10.96.0.20", "dport": 80, "proto": "udp", "icmp_type": 3, "icmp_code": 3,
			"dst_k8s": map[string]any{"kind": "service", "namespace": "shop", "name": "cart</td><script>", "ready_endpoints": 0}}),
		// kube-proxy's rule naming a Service that is no name: the fix's
		// commands must not split it into unbalanced quotes
		ev(3.5, "drop", 7, map[string]any{"dst": "10.96.0.21", "dport": 80, "proto": "udp", "reason": "NETFILTER_DROP",
			"rule": map[string]any{"backend": "nftables", "family": "ip", "table": "filter", "chain": "KUBE-SERVICES", "handle": 3, "verdict": "REJECT icmp-port-unreachable", "how": "counter",
				"k8s": map[string]any{"meaning": "no-endpoints", "engine": "kube-proxy", "service": `shop" -l app=x/cart:http`}}}),
		ev(3.6, "drop", 2, map[string]any{"dst": "10.244.0.7", "dport": 81, "reason": "NO_SOCKET",
			"dst_k8s": podID("shop;x", "web-0$(id)", "", "")}),
		`{"time":"2026-11-27T11:50:04Z","type":"notice","node":"n1","message":"agent gone\n# Heading\n` + "```" + `","gap_from":"2026-11-27T11:50:03Z","gap_to":"2026-11-27T11:50:04Z"}`,
		trailer(0),
	}
	rec, err := Read(bytes.NewReader(gz(lines...)))
	if err != nil {
		t.Fatal(err)
	}
	var md bytes.Buffer
	if err := WriteMarkdown(&md, rec); err != nil {
		t.Fatal(err)
	}
	out := md.String()
	checkCommands(t, rec.Findings())
	if !strings.Contains(out, "kubectl get endpointslices -n NAMESPACE -l kubernetes.io/service-name=NAME") {
		t.Errorf("the invalid Service's fix does not use placeholders:\n%s", out)
	}
	fences := 0
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "```"):
			fences++
			if l != "```" && l != "```yaml" {
				t.Errorf("a fence line kdrop did not write: %q", l)
			}
		case strings.TrimSpace(l) == "hostNetwork: true":
			t.Errorf("a name wrote YAML into the report: %q", l)
		case strings.HasPrefix(l, "#") && !strings.HasPrefix(l, "# kdrop incident report") && !strings.HasPrefix(l, "## ") && !strings.HasPrefix(l, "### ") && !strings.HasPrefix(l, "# Deployment") && !strings.HasPrefix(l, "# in the pod template"):
			t.Errorf("a heading kdrop did not write: %q", l)
		case strings.HasPrefix(l, "## Injected") || strings.HasPrefix(l, "# Owned") || strings.HasPrefix(l, "# Heading") || strings.HasPrefix(l, "# h"):
			t.Errorf("an injected heading: %q", l)
		}
	}
	if fences%2 != 0 {
		t.Errorf("%d fence lines: one was left open", fences)
	}
	for _, bad := range []string{"<script", "<b>", "</td>", "rm -rf /`"} {
		if strings.Contains(out, bad) {
			t.Errorf("the Markdown carries %q", bad)
		}
	}
	if !strings.Contains(out, invalidMark) {
		t.Errorf("no name is marked invalid:\n%s", out)
	}
	html := renderHTML(t, rec)
	for _, bad := range []string{"<script>alert", "<b>x</b>", "</td><script>"} {
		if strings.Contains(html, bad) {
			t.Errorf("the HTML carries %q", bad)
		}
	}
}

// A port scan in a recording: more distinct flows than MaxFlows. The flows
// past the bound fold by kind, the report says so, and its Markdown stays
// a page: at most MaxFindings findings. (Memory and time, for 2M flows and
// a gzip bomb, are measured on the binary: cmd/kdrop's TestReport*.)
func TestManyFlowsBounded(t *testing.T) {
	lines := []string{header}
	const n = 3 * MaxFlows
	for i := range n {
		lines = append(lines, fmt.Sprintf(`{"time":"2026-11-27T11:50:%02dZ","type":"drop","count":1,"netns":1,"proto":"tcp","dst":"10.%d.%d.%d","dport":%d,"reason":"NO_SOCKET","node":"n1"}`,
			i%60, i>>16&255, i>>8&255, i&255, 1+i%60000))
	}
	rec := read(t, lines...)
	if len(rec.Flows) > MaxFlows+1 || rec.Folded != n-MaxFlows {
		t.Errorf("%d flows kept, %d lines folded; want at most %d kept, %d folded", len(rec.Flows), rec.Folded, MaxFlows+1, n-MaxFlows)
	}
	if rec.Total() != n {
		t.Errorf("total %d, want %d: folding must not lose counts", rec.Total(), n)
	}
	wantAll(t, "notes", strings.Join(rec.Notes, "\n"), "more than 20000 distinct flows", "counted by kind only")
	var md bytes.Buffer
	if err := WriteMarkdown(&md, rec); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(md.String(), "\n### "); got > MaxFindings || md.Len() > 200<<10 {
		t.Errorf("Markdown of %d bytes with %d findings; want at most %d findings, a page", md.Len(), got, MaxFindings)
	}
	if !strings.Contains(md.String(), "smaller findings are not shown") {
		t.Error("the Markdown does not say findings were left out")
	}
}

// Recordings crafted or damaged (issue #12): bytes that are not UTF-8,
// control bytes, tags, YAML and fences in names, a line of 17 MiB, a gzip
// stream cut off. Each reads without error, keeps every good line, says
// what it left out, and writes a report with no structure from the file.
func TestCraftedRecordings(t *testing.T) {
	good := func(at float64) string {
		return ev(at, "drop", 1, map[string]any{"dst": "10.0.0.1", "dport": 80, "reason": "NO_SOCKET"})
	}
	overflow := func(at float64, wl string) string {
		return ev(at, "overflow", 300, map[string]any{"dst": "10.0.0.9", "dport": 8080, "queue": "accept", "queue_len": 129, "queue_max": 128, "somaxconn": 128,
			"dst_k8s": podID("shop", "web-0", "Deployment", wl)})
	}
	huge := `{"time":"2026-11-27T11:50:02Z","type":"drop","count":1,"node":"` + strings.Repeat("a", 17<<20) + `"}`
	for _, c := range []struct {
		name    string
		lines   []string
		notes   []string // in the notes
		events  int      // event lines read
		invalid bool     // a name shows marked invalid
	}{
		{"not UTF-8 and control bytes", []string{header,
			// raw bytes that are not UTF-8 (JSON readers make them U+FFFD), escaped control bytes
			"{\"time\":\"2026-11-27T11:50:01Z\",\"type\":\"drop\",\"count\":1,\"reason\":\"NO_SOCKET\",\"node\":\"n\xff\xfe1\",\"dst\":\"10.0.0.1\",\"dst_k8s\":{\"kind\":\"pod\",\"namespace\":\"shop\",\"name\":\"w\xc3\x28b\"}}",
			ev(2, "drop", 1, map[string]any{"reason": "NO\x1b[31mSOCKET", "location": "tcp\x00rcv", "src_k8s": podID("sh\x7fop", "a\u2028b", "Deployment", "w\x1b]8;;http://x\x07")}),
			`{"time":"2026-11-27T11:50:04Z","type":"notice","node":"n1","message":"gone \u001b[2J\u0000 \ud800","gap_from":"2026-11-27T11:50:03Z","gap_to":"2026-11-27T11:50:04Z"}`,
			// a notice as kdrop once wrote them, with Go's %q: not JSON
			`{"time":"2026-11-27T11:50:05Z","type":"notice","node":"n1","message":"\x1b[0m"}`,
			// a rule whose chain and comment carry ESC, C1 and bidi overrides, and a why with one
			ev(5.5, "drop", 1, map[string]any{"reason": "NETFILTER_DROP", "dst": "10.0.0.1", "dport": 9,
				"rule": map[string]any{"backend": "nftables", "family": "ip", "table": "filter", "chain": "IN\x1b[2JPUT", "handle": 3,
					"comment": "a\u009b31m \u202eevil\u2066", "verdict": "DROP", "how": "counter"}}),
			ev(5.6, "drop", 1, map[string]any{"reason": "NETFILTER_DROP", "dst": "10.0.0.1", "dport": 10,
				"rule": map[string]any{"backend": "nftables", "unknown": "gone \u202e!won"}}),
			good(6), trailer(0)},
			[]string{"1 lines could not be read", "line 5"}, 5, true},
		{"tags, fences and YAML in names", []string{header,
			overflow(1, "web\nhostNetwork: true"),
			overflow(2, "x: {privileged: true}"),
			overflow(3, "<img src=x onerror=alert(1)>"),
			ev(4, "unreach", 5, map[string]any{"dst": "10.96.0.20", "dport": 80, "proto": "udp", "icmp_type": 3, "icmp_code": 3,
				"dst_k8s": map[string]any{"kind": "service", "namespace": "shop", "name": "<!--", "ready_endpoints": 0}}),
			ev(5, "drop", 1, map[string]any{"reason": "~~~", "location": "- [ ] x", "node": "===", "src_k8s": podID("shop", "a", "Job", "```yaml\n- b")}),
			trailer(0)},
			nil, 5, true},
		{"a line of 17 MiB", []string{header, good(1), huge, good(3), trailer(0)},
			[]string{"1 lines could not be read", "line 3: longer than 16 MiB"}, 2, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec, err := Read(bytes.NewReader(gz(c.lines...)))
			if err != nil {
				t.Fatal(err)
			}
			if rec.EventLines != c.events {
				t.Errorf("%d event lines read, want %d", rec.EventLines, c.events)
			}
			wantAll(t, "notes", strings.Join(rec.Notes, "\n"), c.notes...)
			var md, page bytes.Buffer
			if err := WriteMarkdown(&md, rec); err != nil {
				t.Fatal(err)
			}
			if err := WriteHTML(&page, rec); err != nil {
				t.Fatal(err)
			}
			checkMarkdown(t, md.String(), c.lines[1:])
			checkHTML(t, page.String(), c.lines[1:])
			for what, out := range map[string]string{"Markdown": md.String(), "HTML": page.String()} {
				if !utf8.ValidString(out) {
					t.Errorf("the %s is not UTF-8", what)
				}
				if i := strings.IndexFunc(out, func(r rune) bool {
					return r < 0x20 && r != '\n' || r == 0x7f || r >= 0x80 && r < 0xa0 || r == 0x2028 || r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069
				}); i >= 0 {
					t.Errorf("the %s holds a control character: %.40q", what, out[i:])
				}
			}
			if c.invalid && !strings.Contains(md.String(), invalidMark) {
				t.Errorf("no name is marked invalid:\n%s", md.String())
			}
			for _, l := range strings.Split(md.String(), "\n") {
				if l := strings.TrimSpace(l); strings.HasPrefix(l, "hostNetwork:") || strings.HasPrefix(l, "x:") || strings.HasPrefix(l, "- b") {
					t.Errorf("a name wrote YAML into the report: %q", l)
				}
			}
		})
	}
}

// A recording cut off mid-way keeps every line whose end made it to the
// disk, exactly, and says it was cut off.
func TestCutOffKeepsWhatCameBefore(t *testing.T) {
	lines := []string{header}
	for i := range 5000 {
		lines = append(lines, ev(float64(i)/10, "drop", 1, map[string]any{"reason": "NO_SOCKET", "dst": "10.0.0.1", "dport": 80, "sport": i}))
	}
	full := gz(lines...)
	for _, cut := range []int{len(full) / 3, len(full) / 2, len(full) - 20} {
		part := full[:cut]
		// what a gzip reader gets out of the part: the lines it holds whole
		zr, err := gzip.NewReader(bytes.NewReader(part))
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(zr)
		whole := bytes.Count(data, []byte("\n"))
		rec, err := Read(bytes.NewReader(part))
		if err != nil {
			t.Fatalf("cut at %d of %d bytes: %v", cut, len(full), err)
		}
		if rec.EventLines != whole-1 || rec.Total() != uint64(whole-1) {
			t.Errorf("cut at %d of %d bytes: %d event lines read (%d occurrences), the part holds %d whole ones", cut, len(full), rec.EventLines, rec.Total(), whole-1)
		}
		if !rec.Truncated() || !strings.Contains(strings.Join(rec.Notes, "\n"), "cut off") {
			t.Errorf("cut at %d: not said: truncated %v, notes %q", cut, rec.Truncated(), rec.Notes)
		}
	}
}

// checkCommands fails when a finding's fix has a command (a code span)
// with unbalanced quotes or a name that failed its check: a marked name
// is for reading, never for pasting into a shell.
func checkCommands(t *testing.T, fs []Finding) {
	t.Helper()
	for _, f := range fs {
		spans := strings.Split(f.Fix, "`")
		if len(spans)%2 == 0 {
			t.Errorf("%s: a code span left open in the fix:\n%s", f.Kind, f.Fix)
			continue
		}
		for i := 1; i < len(spans); i += 2 {
			c := spans[i]
			if strings.Count(c, `"`)%2 != 0 || strings.Count(c, "'")%2 != 0 || strings.Contains(c, invalidMark) || strings.ContainsAny(c, "$\\") {
				t.Errorf("%s: a command with unbalanced quotes or an unchecked name: %q", f.Kind, c)
			}
		}
	}
}

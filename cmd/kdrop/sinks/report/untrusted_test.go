package report

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
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
// a page: at most MaxFindings findings.
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

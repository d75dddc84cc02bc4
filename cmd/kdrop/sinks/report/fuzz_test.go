package report

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzReport: any event line after a header reads without panicking, and
// the Markdown and HTML written from it carry no structure from the file:
// no fence or heading kdrop did not write, no tag.
func FuzzReport(f *testing.F) {
	f.Add(ev(1, "drop", 3, map[string]any{"dst": "10.0.0.1", "dport": 80, "reason": "NO_SOCKET", "dst_k8s": podID("shop", "web-0", "Deployment", "web")}))
	f.Add(ev(1, "overflow", 300, map[string]any{"dst": "10.0.0.1", "dport": 8080, "queue": "accept", "queue_len": 129, "queue_max": 128, "somaxconn": 128,
		"dst_k8s": podID("shop", "img", "Deployment", "x\n```\nhostNetwork: true")}))
	f.Add(`{"time":"2026-11-27T11:50:04Z","type":"notice","node":"n1","message":"<script>\n# h","gap_from":"2026-11-27T11:50:03Z","gap_to":"2026-11-27T11:50:04Z"}`)
	f.Fuzz(func(t *testing.T, l string) {
		rec, err := Read(bytes.NewReader(gz(header, l, trailer(0))))
		if err != nil {
			t.Fatalf("a line after a good header made the file unreadable: %v", err)
		}
		var md bytes.Buffer
		if err := WriteMarkdown(&md, rec); err != nil {
			t.Fatal(err)
		}
		for _, ln := range strings.Split(md.String(), "\n") {
			if strings.HasPrefix(ln, "```") && ln != "```" && ln != "```yaml" {
				t.Fatalf("a fence kdrop did not write: %q", ln)
			}
		}
		if strings.Count(md.String(), "\n```")%2 != 0 {
			t.Fatalf("a fence left open:\n%s", md.String())
		}
		if strings.Contains(md.String(), "<script") {
			t.Fatalf("a tag in the Markdown:\n%s", md.String())
		}
		var html bytes.Buffer
		if err := WriteHTML(&html, rec); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(html.String(), "<script>") && strings.Count(html.String(), "<script") > 0 && strings.Contains(l, "<script") {
			// the page has no script of its own: any is the file's
			t.Fatalf("a tag from the file in the HTML")
		}
	})
}

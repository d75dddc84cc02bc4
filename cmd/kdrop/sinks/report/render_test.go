package report

import (
	"bytes"
	"context"
	"html"
	"image"
	"image/png"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// incident is a five-minute recording of a rolling update gone wrong: new
// pods not listening yet, clients still sending to deleted pods, an accept
// queue capped by somaxconn under a spike, a Service left without
// endpoints, a NetworkPolicy dropping database traffic, and lost events.
func incident(truncated bool) []string {
	r := rand.New(rand.NewSource(7))
	lines := []string{header}
	node := map[string]any{"kind": "node", "name": "n1"}
	apiNew := podID("web", "api-7f4b2", "Deployment", "api", "services", []string{"web/api"})
	apiNew2 := podID("web", "api-7f4c9", "Deployment", "api", "services", []string{"web/api"})
	cart := map[string]any{"kind": "service", "namespace": "shop", "name": "cart", "ready_endpoints": 0}
	checkout := podID("shop", "checkout-88d1", "Deployment", "checkout")
	postgres := podID("db", "postgres-0", "StatefulSet", "postgres")
	dns := podID("kube-system", "node-local-dns-x2k", "DaemonSet", "node-local-dns")
	for s := 0; s < 300; s++ {
		at := func() float64 { return float64(s) + r.Float64() }
		// steady background: a NetworkPolicy keeps dropping one client
		if s%3 == 0 {
			lines = append(lines, ev(at(), "drop", 1+r.Intn(4), map[string]any{"src": "10.244.1.3", "sport": 40000 + s, "dst": "10.244.4.4", "dport": 5432, "tcp_flags": "SYN",
				"reason": "NETFILTER_DROP", "reason_code": 7, "location": "nf_hook_slow+0xa1", "src_k8s": frontendPod, "dst_k8s": postgres, "where_k8s": node}))
		}
		if s%7 == 0 {
			lines = append(lines, ev(at(), "drop", 1+r.Intn(3), map[string]any{"proto": "udp", "src": "10.244.2.9", "dst": "169.254.20.10", "dport": 53,
				"reason": "SOCKET_RCVBUFF", "reason_code": 13, "location": "__udp_enqueue_schedule_skb+0x2b1", "dst_k8s": dns}))
		}
		// 60–80 s: the new pods get traffic before they listen
		if s >= 60 && s < 80 {
			lines = append(lines, ev(at(), "drop", 2+r.Intn(10), map[string]any{"src": "10.244.1.3", "sport": 41000 + s, "dst": "10.244.0.21", "dport": 8080, "tcp_flags": "SYN",
				"reason": "NO_SOCKET", "reason_code": 3, "location": "tcp_v4_rcv+0x8c1", "src_k8s": frontendPod, "dst_k8s": apiNew}))
		}
		// 70–150 s: clients keep using the deleted pods' addresses
		if s >= 70 && s < 150 {
			ago := int64(s-68) * 1000
			lines = append(lines, ev(at(), "unreach", 1+r.Intn(6), map[string]any{"src": "10.244.1.3", "sport": 42000 + s, "dst": "10.244.2.7", "dport": 8080,
				"icmp": "host-unreachable", "icmp_type": 3, "icmp_code": 1, "src_k8s": frontendPod, "where_k8s": node,
				"dst_k8s": podID("web", "api-5c8d9", "Deployment", "api", "deleted_ago_ms", ago, "ready", false)}))
			if s%4 == 0 {
				lines = append(lines, ev(at(), "drop", 1+r.Intn(3), map[string]any{"src": "10.244.1.3", "dst": "10.244.2.8", "dport": 8080,
					"reason": "NEIGH_FAILED", "reason_code": 73, "location": "neigh_invalidate+0x8d", "src_k8s": frontendPod,
					"dst_k8s": podID("web", "api-5c8e1", "Deployment", "api", "deleted_ago_ms", ago+800)}))
			}
		}
		// 160–220 s: a traffic spike overflows the accept queues
		if s >= 160 && s < 220 {
			peak := 1 + int(60*(1-abs(float64(s-190))/30))
			for i, p := range []map[string]any{apiNew, apiNew2} {
				lines = append(lines, ev(at(), "overflow", peak+r.Intn(10)+i*5, map[string]any{"src": "10.244.1.3", "sport": 43000 + s, "dst": "10.244.0.2" + itoa(1+i), "dport": 8080,
					"tcp_flags": "ACK", "queue": "accept", "queue_len": 129, "queue_max": 128, "syn_queue_len": 0, "somaxconn": 128, "src_k8s": frontendPod, "dst_k8s": p}))
			}
		}
		// 180–240 s: the cart Service has no ready endpoints
		if s >= 180 && s < 240 {
			lines = append(lines, ev(at(), "unreach", 3+r.Intn(8), map[string]any{"src": "10.244.3.3", "sport": 44000 + s, "dst": "10.96.0.20", "dport": 80,
				"icmp": "port-unreachable", "icmp_type": 3, "icmp_code": 3, "src_k8s": checkout, "dst_k8s": cart, "where_k8s": node}))
		}
		if s == 195 {
			lines = append(lines, `{"time":"2026-11-27T11:53:15Z","type":"lost","node":"n1","lost":37}`)
		}
	}
	if !truncated {
		lines = append(lines, trailer(37))
	}
	return lines
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}

func renderHTML(t *testing.T, rec *Incident) string {
	t.Helper()
	var b bytes.Buffer
	if err := WriteHTML(&b, rec); err != nil {
		t.Fatalf("WriteHTML: %v", err)
	}
	return b.String()
}

// external matches anything a browser would fetch from elsewhere.
var external = regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|\b(src|href|xlink:href|action|srcset)\s*=|url\(|@import|<script|<link|<img|<iframe|<object|<embed`)

func TestHTMLSelfContained(t *testing.T) {
	for _, truncated := range []bool{false, true} {
		page := renderHTML(t, read(t, incident(truncated)...))
		if m := external.FindString(page); m != "" {
			t.Errorf("the page refers to something outside it: %q", m)
		}
		if strings.Contains(page, "http://") || strings.Contains(page, "https://") {
			t.Error("the page holds an http(s) URL")
		}
		wantAll(t, "page", html.UnescapeString(page),
			"<svg", "<rect", "accept queue overflow", "ICMP host-unreachable", "NETFILTER_DROP", // the chart, server-side
			"prod-eu", "6.12.118+deb13-amd64", "v0.1.0", "100 events per second per flow", "none (everything)",
			"37 event lines lost.", "Lost lines", "Missed",
			"Listen queue overflows", "api-7f4b2", "Unreachable", "deleted", "Drops", "nf_hook_slow+0xa1",
			"Destinations by workload", "Deployment web/api", "Sources",
			"Give Deployment web/api a preStop hook", "net.core.somaxconn of the pod's network namespace, not your server's backlog",
			"Service shop/cart has no ready endpoints")
		if truncated != strings.Contains(page, "Recording truncated.") {
			t.Errorf("truncated %v, but the page says otherwise", truncated)
		}
	}
}

func TestHTMLEscapes(t *testing.T) {
	evil := podID("x", `<script>alert(1)</script>`, "Deployment", `"><img src=x>`)
	rec := read(t, header, ev(1, "drop", 1, map[string]any{"reason": "NO_SOCKET<b>", "dst": "10.0.0.1", "dport": 1, "dst_k8s": evil}), trailer(0))
	page := renderHTML(t, rec)
	if strings.Contains(page, "<script>") || strings.Contains(page, "<img") || strings.Contains(page, "NO_SOCKET<b>") {
		t.Error("names from the recording reach the page unescaped")
	}
	var md bytes.Buffer
	WriteMarkdown(&md, rec)
	if strings.Contains(md.String(), "<script>") {
		t.Error("Markdown carries raw HTML from the recording")
	}
}

func TestHTMLEmpty(t *testing.T) {
	page := renderHTML(t, read(t, header, trailer(0)))
	wantAll(t, "page", page, "<svg", "No events in this recording", "Nothing to report", "No listen queue overflowed")
}

func TestMarkdown(t *testing.T) {
	rec := read(t, incident(false)...)
	var b bytes.Buffer
	if err := WriteMarkdown(&b, rec); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	wantAll(t, "markdown", md,
		"# kdrop incident report: prod-eu, 2026-11-27 11:50:00 – 11:55:00 UTC",
		"| Nodes | n1 (kernel 6.12.118+deb13-amd64), n2 (kernel 6.1.0-40-amd64) |",
		"| Lost lines | **37 events (lines missing; counts exact)** |",
		"| Missed | none |",
		"> **37 event lines lost.**",
		"### 1. [CRITICAL]", "Accept queue full on port 8080 of Deployment web/api",
		"Clients kept sending to pods of Deployment web/api", "Service shop/cart has no ready endpoints",
		"**What to do**", "```yaml", "net.core.somaxconn", "`--allowed-unsafe-sysctls=net.core.somaxconn`",
		"## Listen queue overflows", "| `10.244.0.21:8080` | pod web/api-7f4b2 | accept | 128 | 129 | 128 | somaxconn |",
		"## Unreachable", "## Drops by reason", "## Top destinations", "## Top sources")
	if strings.Contains(md, "<") && !strings.Contains(md, "&lt;") {
		t.Error("raw HTML in Markdown")
	}
	// findings come most severe first
	crit, warn := strings.Index(md, "[CRITICAL]"), strings.Index(md, "[WARNING]")
	if crit < 0 || warn < 0 || warn < crit || strings.Contains(md[warn:], "[CRITICAL]") {
		t.Error("findings are not ordered by severity")
	}
	if os.Getenv("KDROP_REPORT_DUMP") != "" {
		os.WriteFile("/tmp/kdrop-report.md", b.Bytes(), 0o644)
	}
}

// chromium returns the path of a Chromium, installing Debian's package when
// it is missing. It fails the test when it cannot: never skips.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Log("chromium missing: installing Debian's chromium package")
	install := func() ([]byte, error) {
		cmd := exec.Command("apt-get", "install", "-y", "--no-install-recommends", "chromium")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	out, err := install()
	if err != nil {
		if upd, uerr := exec.Command("apt-get", "update").CombinedOutput(); uerr != nil {
			t.Fatalf("chromium is not installed and apt-get update failed: %v\n%s", uerr, upd)
		}
		out, err = install()
	}
	if err != nil {
		t.Fatalf("chromium is not installed and apt-get install -y chromium failed: %v\n%s", err, out)
	}
	p, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("apt-get installed chromium but it is not on PATH: %v", err)
	}
	return p
}

func TestHTMLRendersInChromium(t *testing.T) {
	browser := chromium(t)
	dir := t.TempDir()
	page := filepath.Join(dir, "report.html")
	if err := os.WriteFile(page, []byte(renderHTML(t, read(t, incident(false)...))), 0o644); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(dir, "out.png")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
		"--user-data-dir="+t.TempDir(), "--screenshot="+shot, "--window-size=1280,2000", "file://"+page)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, out)
	}
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("chromium wrote no screenshot: %v\n%s", err, out)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("decoding the screenshot: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1280 || b.Dy() < 1900 {
		t.Fatalf("screenshot is %v, want 1280x2000", b)
	}
	if data, err := os.ReadFile(shot); err == nil {
		os.WriteFile("/tmp/kdrop-report.png", data, 0o644)
	}

	// The chart's bars are drawn in the palette colours and nothing else on
	// the page uses them: find them, and check they spread over the plot.
	perColor := map[string]int{}
	box := image.Rectangle{Min: image.Pt(1<<30, 1<<30)}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if c := paletteAt(img, x, y); c != "" {
				perColor[c]++
				box = box.Union(image.Rect(x, y, x+1, y+1))
			}
		}
	}
	colors := 0
	for _, n := range perColor {
		if n >= 150 {
			colors++
		}
	}
	t.Logf("chart: %d palette colours %v in %v", colors, perColor, box)
	if colors < 4 {
		t.Errorf("the chart shows %d series colours (want at least 4): %v", colors, perColor)
	}
	if box.Dx() < 600 || box.Dy() < 100 {
		t.Errorf("the chart's bars cover only %v: want them spread over the plot", box)
	}
	if box.Max.Y > 1900 {
		t.Errorf("the chart ends at y=%d: it should be near the top of the page", box.Max.Y)
	}
	// the chart region is not blank: many colours, a good share of ink
	distinct := map[[3]uint32]bool{}
	ink := 0
	for y := box.Min.Y; y < box.Max.Y; y++ {
		for x := box.Min.X; x < box.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			distinct[[3]uint32{r >> 8, g >> 8, bl >> 8}] = true
			if r>>8 < 235 || g>>8 < 235 || bl>>8 < 235 {
				ink++
			}
		}
	}
	if share := float64(ink) / float64(box.Dx()*box.Dy()); len(distinct) < 20 || share < 0.08 {
		t.Errorf("the chart region looks blank: %d colours, %.0f%% ink", len(distinct), share*100)
	}
}

// paletteAt names the palette colour at a pixel, if it is one.
func paletteAt(img image.Image, x, y int) string {
	r, g, b, _ := img.At(x, y).RGBA()
	for _, hex := range palette {
		var pr, pg, pb uint32
		for i, p := range []*uint32{&pr, &pg, &pb} {
			*p = hexByte(hex[1+2*i:3+2*i]) << 8
			_ = i
		}
		if near(r, pr) && near(g, pg) && near(b, pb) {
			return hex
		}
	}
	return ""
}

func hexByte(s string) uint32 {
	var v uint32
	for _, c := range s {
		v <<= 4
		switch {
		case c >= '0' && c <= '9':
			v |= uint32(c - '0')
		case c >= 'a' && c <= 'f':
			v |= uint32(c-'a') + 10
		}
	}
	return v
}

func near(a, b uint32) bool {
	d := int(a>>8) - int(b>>8)
	return d >= -3 && d <= 3
}

package report

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// FuzzReport: a recording whose names, reasons, kernel names, messages and
// one raw line are anything reads without panicking, and the Markdown and
// HTML written from it carry no structure from the file (checkMarkdown,
// checkHTML).
//
// The input is a few short strings put into a recording kdrop could have
// written, rather than one whole file: the renderers are what is fuzzed
// (the reader has FuzzScan and FuzzDecode), and the fuzz engine minimizes
// each new input by trying to remove every byte and every run of bytes, a
// number of runs quadratic in the input's length. One 400-byte line cost
// ~80,000 runs of a report, a minute per new input under the engine's
// instrumentation: the target stalled at ~2 execs in 30 s.
func FuzzReport(f *testing.F) {
	// Short seeds: every byte of a new input is a cost (see above).
	f.Add(uint8(0), "shop", "web-0", "Deployment", "web", "NO_SOCKET", "tcp_v4_rcv", "n1", "")
	f.Add(uint8(1), "a", "b", "Job", "x\n```\nk: v", "syn", "6.1`x", "n|1", "")
	f.Add(uint8(2), "w\n# h", "<td>", "", "<b>", "A`|<", "m\n```", "n", `{"type":"<i>"}`)
	f.Add(uint8(3), "", "", "", "", "", "", "", "{\"time\":1}")
	f.Add(uint8(4), "a", "b", "Job", "c", "R", "<x", "n", `{"src":"`+"`x`"+`"}`)
	f.Add(uint8(5), "filter", "IN\x1bPUT", "nftables", "counter", "DROP", "a\u009b\u202e'`|", "ip", "")
	f.Add(uint8(6), "fw", "in", "iptables-legacy", "x", "REJECT tcp-reset", "it's \"q\"; $(id)", "ip6", "")
	f.Fuzz(func(t *testing.T, kind uint8, ns, name, wlKind, wl, reason, where, node, raw string) {
		fuzzReportOnce(t, kind, ns, name, wlKind, wl, reason, where, node, raw)
	})
}

func fuzzReportOnce(t testing.TB, kind uint8, ns, name, wlKind, wl, reason, where, node, raw string) {
	{
		id := podID(ns, name, wlKind, wl, "services", []string{ns + "/" + name}, "node", node)
		types := []string{"drop", "overflow", "unreach"}
		typ := types[int(kind)%3]
		fields := map[string]any{"dst": "10.0.0.1", "dport": 8080, "node": node, "source": reason, "dst_k8s": id, "where_k8s": id}
		switch typ {
		case "drop":
			fields["reason"], fields["location"] = reason, where
		case "overflow":
			fields["queue"], fields["queue_len"], fields["queue_max"], fields["somaxconn"] = reason, 129, 128, 128
		case "unreach":
			fields["proto"], fields["icmp_type"], fields["icmp_code"] = "udp", 3, int(kind)%16
		}
		other := map[string]any{"dst": "10.0.0.2", "dport": 53, "proto": "udp", "icmp_type": 3, "icmp_code": 3, "node": node, "src_k8s": id,
			"dst_k8s": map[string]any{"kind": "service", "namespace": ns, "name": wl, "ready_endpoints": 0}}
		lines := []string{
			jsonLine(map[string]any{"kdrop_record": 1, "started": "2026-11-27T11:50:00Z", "version": reason, "cluster": where, "from": wlKind,
				"nodes": []map[string]any{{"name": node, "kernel": where}}, "filters": map[string]any{"namespace": ns, "pod": name, "selector": wl, "reasons": []string{reason}}}),
			ev(1, typ, 300, fields),
			ev(2, "unreach", 5, other),
			ev(3, "drop", 2, map[string]any{"reason": where, "location": reason, "node": node, "src_k8s": id}),
			// a rule with a Kubernetes meaning of the fuzzer's names
			ev(4, "drop", 3, map[string]any{"reason": "NETFILTER_DROP", "node": node, "src_k8s": id, "dst": "10.0.0.3", "dport": 80,
				"rule": map[string]any{"backend": "nftables", "table": "filter", "chain": "KUBE-SERVICES", "handle": 1, "verdict": "DROP", "how": "counter",
					"k8s": map[string]any{"meaning": meanings[int(kind)%len(meanings)], "engine": wlKind, "service": ns + "/" + name + ":" + wl,
						"network_policy": []map[string]any{{"namespace": ns, "name": wl}}, "direction": reason, "text": where}}}),
			// rules named by the fuzzer's strings: one, and candidates
			ev(4.5, "drop", 4, map[string]any{"reason": "NETFILTER_DROP", "node": node, "dst": "10.0.0.4", "dport": 81,
				"rule": map[string]any{"backend": wlKind, "family": node, "table": ns, "chain": name, "handle": 2, "comment": where, "verdict": reason, "how": wl}}),
			ev(4.6, "drop", 1, map[string]any{"reason": "NETFILTER_DROP", "node": node, "dst": "10.0.0.4", "dport": 82,
				"rule": map[string]any{"backend": "iptables-legacy", "how": "counter", "candidates": []map[string]any{
					{"family": "ip", "table": wl, "chain": ns, "position": 1, "comment": name, "verdict": "DROP"},
					{"family": "ip6", "table": "filter", "chain": where, "position": 2, "comment": reason, "verdict": "DROP"}}}}),
			notice(map[string]any{"type": "notice", "node": node, "message": where, "gap_from": "2026-11-27T11:50:03Z", "gap_to": "2026-11-27T11:50:04Z"}),
			notice(map[string]any{"type": "missed", "node": node, "missed": 3, "cause": reason}),
			raw,
			jsonLine(map[string]any{"kdrop_record_end": 1, "ended": "2026-11-27T11:55:00Z", "events": 7, "lost": int(kind), "error": where}),
		}
		if int(kind)/3%2 == 1 {
			lines = lines[:len(lines)-1] // no trailer: a truncated recording
		}
		rec, err := Read(bytes.NewReader(gz(lines...)))
		if err != nil {
			t.Fatalf("a recording with a good header is unreadable: %v", err)
		}
		var md, page bytes.Buffer
		if err := WriteMarkdown(&md, rec); err != nil {
			t.Fatal(err)
		}
		if err := WriteHTML(&page, rec); err != nil {
			t.Fatal(err)
		}
		inputs := []string{ns, name, wlKind, wl, reason, where, node, raw}
		checkMarkdown(t, md.String(), inputs)
		checkHTML(t, page.String(), inputs)
	}
}

// meanings are the kinds of rule.k8s, and one kdrop does not know.
var meanings = []string{"no-endpoints", "no-local-endpoints", "invalid-conntrack", "martian-localhost", "source-range", "network-policy", "later-kind"}

func jsonLine(m map[string]any) string {
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func notice(m map[string]any) string {
	m["time"] = "2026-11-27T11:50:04Z"
	return jsonLine(m)
}

var (
	mdHeading  = regexp.MustCompile(`^ {0,3}#{1,6}(\s|$)`)
	mdOurs     = regexp.MustCompile(`^(# kdrop incident report: .*|## (Findings|Timeline|Listen queue overflows|Unreachable|Drops by reason|Top destinations|Top sources)|### \d+\. \[[A-Z]+\] .*)$`)
	mdSetext   = regexp.MustCompile(`^ {0,3}(=+|-+)\s*$`)
	mdBreak    = regexp.MustCompile(`^ {0,3}(([-*_])\s*){3,}$`)
	mdFence    = regexp.MustCompile("^ {0,3}(```|~~~)")
	mdHTMLOpen = regexp.MustCompile(`<[A-Za-z/!?]`)
)

// checkMarkdown fails if the Markdown has structure kdrop does not write:
// a fence other than its YAML examples, one left open, a heading (ATX or
// setext) or thematic break it did not write, a raw tag, a table row with
// more or fewer cells than its header, a stray backtick (a code span that
// does not close on its line), a code span of the input's, or an input
// string with a backtick, angle bracket or newline as it was.
func checkMarkdown(t testing.TB, md string, inputs []string) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf(format+"\n--- Markdown:\n%s", append(args, md)...)
	}
	inFence := false
	cells := -1 // pipes in the current table's header row
	for i, l := range strings.Split(md, "\n") {
		if inFence {
			if mdFence.MatchString(l) {
				if l != "```" {
					fail("line %d: a fence kdrop did not write: %q", i+1, l)
				}
				inFence = false
			}
			continue
		}
		switch {
		case mdFence.MatchString(l):
			if l != "```yaml" {
				fail("line %d: a fence kdrop did not write: %q", i+1, l)
			}
			inFence = true
			continue
		case mdHeading.MatchString(l) && !mdOurs.MatchString(l):
			fail("line %d: a heading kdrop did not write: %q", i+1, l)
		case mdSetext.MatchString(l), mdBreak.MatchString(l):
			fail("line %d: a setext heading or thematic break: %q", i+1, l)
		}
		if strings.HasPrefix(l, "|") {
			n := pipes(l)
			if cells < 0 {
				cells = n
			} else if n != cells {
				fail("line %d: a table row of %d cell breaks under a header of %d: %q", i+1, n, cells, l)
			}
		} else {
			cells = -1
		}
		text, ok := outsideCode(l)
		if !ok {
			fail("line %d: a backtick that opens no closed code span: %q", i+1, l)
		}
		if mdHTMLOpen.MatchString(text) {
			fail("line %d: a raw tag: %q", i+1, l)
		}
	}
	if inFence {
		fail("a fence left open")
	}
	for _, in := range inputs {
		// (a pipe is harmless out of a table: the rows are checked above)
		if len(in) >= 3 && strings.ContainsAny(in, "`<\n") && strings.Contains(md, in) {
			fail("an input string is in the Markdown as it was: %q", in)
		}
		// a code span of the input's, unless kdrop writes it too
		parts := strings.Split(in, "`")
		for i := 1; i+1 < len(parts); i += 2 {
			if span := "`" + parts[i] + "`"; parts[i] != "" && strings.Contains(md, span) && !strings.Contains(skeletonMD(), span) {
				fail("a code span from the input: %q", span)
			}
		}
	}
}

// pipes counts the cell breaks of a table row: the pipes not escaped.
func pipes(l string) int {
	n := 0
	for i := 0; i < len(l); i++ {
		switch l[i] {
		case '\\':
			i++
		case '|':
			n++
		}
	}
	return n
}

// outsideCode returns the line without its code spans (CommonMark: a run
// of n backticks up to the next run of exactly n); ok is false when a run
// closes nothing. A backslash escapes a backtick outside a span.
func outsideCode(l string) (string, bool) {
	var out strings.Builder
	for i := 0; i < len(l); {
		switch {
		case l[i] == '\\' && i+1 < len(l):
			out.WriteString(l[i : i+2])
			i += 2
		case l[i] == '`':
			n := run(l, i)
			j := i + n
			for j < len(l) && (l[j] != '`' || run(l, j) != n) {
				if l[j] == '`' {
					j += run(l, j)
				} else {
					j++
				}
			}
			if j >= len(l) {
				return "", false
			}
			i = j + n
		default:
			out.WriteByte(l[i])
			i++
		}
	}
	return out.String(), true
}

func run(l string, i int) int {
	n := 0
	for i+n < len(l) && l[i+n] == '`' {
		n++
	}
	return n
}

// The elements and attributes the page's template and chart write.
var (
	htmlTags = set("html", "head", "meta", "title", "style", "body", "header", "main", "footer", "section", "article", "figure", "figcaption",
		"h1", "h2", "h3", "h4", "p", "div", "span", "strong", "code", "pre", "ul", "li", "dl", "dt", "dd", "table", "tr", "th", "td",
		"svg", "rect", "line", "text", "tspan", "path")
	htmlAttrs = set("charset", "name", "content", "lang", "class", "id", "title", "colspan", "scope", "role", "aria-label",
		"viewbox", "width", "height", "x", "y", "x1", "x2", "y1", "y2", "rx", "d", "fill", "stroke", "stroke-width",
		"font-size", "text-anchor", "transform", "style")
)

func set(s ...string) map[string]bool {
	m := map[string]bool{}
	for _, x := range s {
		m[x] = true
	}
	return m
}

// checkHTML fails unless every tag of the page is one its template or
// chart writes, with attributes they write, every attribute value quoted
// and closed, no comment or processing instruction, and no input string
// with a character HTML escapes as it was in the page's text or an
// attribute value.
func checkHTML(t testing.TB, page string, inputs []string) {
	t.Helper()
	text, err := htmlText(page)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range inputs {
		if len(in) >= 3 && strings.ContainsAny(in, `<>&"'`) && strings.Contains(text, in) && !strings.Contains(skeletonText(), in) {
			t.Fatalf("an input string is in the HTML as it was: %q", in)
		}
	}
}

// htmlText checks the page's tags and returns its text and attribute
// values, each piece on a line of its own.
func htmlText(page string) (string, error) {
	if !strings.HasPrefix(page, "<!DOCTYPE html>") {
		return "", errors.New("the page does not start with its doctype")
	}
	var text strings.Builder
	rest := page[len("<!DOCTYPE html>"):]
	for {
		i := strings.IndexByte(rest, '<')
		if i < 0 {
			text.WriteString(rest)
			break
		}
		text.WriteString(rest[:i])
		text.WriteByte('\n')
		rest = rest[i+1:]
		closing := strings.HasPrefix(rest, "/")
		if closing {
			rest = rest[1:]
		}
		n := 0
		for n < len(rest) && (rest[n] >= 'a' && rest[n] <= 'z' || rest[n] >= 'A' && rest[n] <= 'Z' || n > 0 && (rest[n] >= '0' && rest[n] <= '9' || rest[n] == '-')) {
			n++
		}
		name := strings.ToLower(rest[:n])
		if !htmlTags[name] {
			return "", fmt.Errorf("a tag the page does not write: <%.80q", rest)
		}
		rest = rest[n:]
		if name == "style" && !closing { // CSS up to </style>
			end := strings.Index(rest, "</style>")
			if end < 0 || strings.Contains(rest[:end], "<") {
				return "", errors.New("the style element holds a tag or does not end")
			}
			rest = rest[end:]
			continue
		}
		// attributes up to '>'
		for {
			rest = strings.TrimLeft(rest, " \t\n")
			if strings.HasPrefix(rest, ">") || strings.HasPrefix(rest, "/>") {
				rest = rest[strings.IndexByte(rest, '>')+1:]
				break
			}
			eq := strings.IndexAny(rest, "= >")
			if eq <= 0 {
				return "", fmt.Errorf("a tag that does not end: %.80q", rest)
			}
			attr := strings.ToLower(rest[:eq])
			if !htmlAttrs[attr] {
				return "", fmt.Errorf("an attribute the page does not write: %q in %.80q", attr, rest)
			}
			rest = rest[eq:]
			if rest[0] != '=' {
				continue
			}
			if len(rest) < 2 || rest[1] != '"' {
				return "", fmt.Errorf("an unquoted attribute value: %.80q", rest)
			}
			end := strings.IndexByte(rest[2:], '"')
			if end < 0 {
				return "", fmt.Errorf("an attribute value that does not close: %.80q", rest)
			}
			v := rest[2 : 2+end]
			if strings.ContainsAny(v, "<>") {
				return "", fmt.Errorf("an attribute value with a raw angle bracket: %q", v)
			}
			text.WriteString(v)
			text.WriteByte('\n')
			rest = rest[2+end+1:]
		}
	}
	return text.String(), nil
}

// skeletonText and skeletonMD are kdrop's own words: the HTML's text and
// the Markdown of a benign recording.
var (
	skeletonText = sync.OnceValue(func() string {
		s, err := htmlText(benign(WriteHTML))
		if err != nil {
			panic(err)
		}
		return s
	})
	skeletonMD = sync.OnceValue(func() string { return benign(WriteMarkdown) })
)

func benign(write func(io.Writer, *Incident) error) string {
	rec, err := Read(bytes.NewReader(gz(header, ev(1, "drop", 3, map[string]any{"dst": "10.0.0.1", "dport": 80, "reason": "NO_SOCKET", "dst_k8s": podID("shop", "web-0", "Deployment", "web")}),
		ev(2, "overflow", 3, map[string]any{"dst": "10.0.0.1", "dport": 80, "queue": "accept", "queue_len": 129, "queue_max": 128}), ev(3, "unreach", 3, map[string]any{"dst": "10.0.0.2", "icmp_type": 3, "icmp_code": 1}))))
	if err != nil {
		panic(err)
	}
	var b bytes.Buffer
	if err := write(&b, rec); err != nil {
		panic(err)
	}
	return b.String()
}

package main

// Lost lines and missed occurrences, told apart everywhere a user sees
// them: watch's warnings, the agent's metrics, the /events notices as tail
// shows them, and recordings as the report reads them. No userspace action
// reliably makes the kernel skip a program (a recursion miss), so the misses
// here are simulated: a tracer.Stats with Missed set, fed to the code that
// words it. Nothing else is faked: a real HTTP stream, registry, promtool,
// recording file and report reader.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/kdrop/kdrop/cmd/kdrop/report"
	"github.com/kdrop/kdrop/tracer"
)

// loss is a tracer.Stats with lines lost (as drops) and occurrences missed.
func loss(lines, missed, coarsened uint64) tracer.Stats {
	var st tracer.Stats
	st.LostLines[tracer.Drop] = lines
	st.Missed, st.Coarsened = missed, coarsened
	return st
}

// logText is everything the entries say: messages and field values.
func logText(entries []observer.LoggedEntry) string {
	var b strings.Builder
	for _, e := range entries {
		b.WriteString(e.Level.String() + " " + e.Message)
		for k, v := range e.ContextMap() {
			b.WriteString(" " + k + "=" + strings.TrimSpace(strings.ReplaceAll(toString(v), "\n", " ")))
		}
		b.WriteString("\n")
	}
	return b.String()
}

func toString(v any) string { b, _ := json.Marshal(v); return string(b) }

func TestWatchLossWarnings(t *testing.T) {
	tests := []struct {
		name  string
		st    tracer.Stats
		total bool
		want  []string
		exact bool // may say "exact"
	}{
		{"lines lost, as they come", loss(3, 0, 0), false,
			[]string{"event lines lost", "their occurrences still arrive in the next summary lines", "lost_lines=3"}, false},
		{"lines lost in total, nothing missed", loss(3, 0, 0), true,
			[]string{"event lines lost in total", "counts are exact", "lost_lines=3"}, true},
		{"missed, as it comes", loss(0, 7, 0), false,
			[]string{"occurrences missed: counts may be short by up to this many", "missed=7", "before kdrop's filters", "already running on that CPU", "softirq", "kdrop check", "nstat"}, false},
		{"missed in total", loss(0, 7, 0), true,
			[]string{"occurrences missed in total: counts may be short by up to this many", "missed=7"}, false},
		{"both in total", loss(3, 7, 0), true,
			[]string{"occurrences missed in total", "missed=7", "event lines lost in total", "lost_lines=3"}, false},
		{"coarsened only: said, not as loss", loss(0, 0, 5), true,
			[]string{"flow table was full", "coarsened=5"}, false},
		{"coarsened as it comes", loss(0, 0, 5), false,
			[]string{"flow table full", "do not tell destinations apart", "coarsened=5"}, false},
		{"nothing", loss(0, 0, 0), true, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.InfoLevel)
			warnLoss(zap.New(core), tc.st, tc.total)
			text := logText(logs.All())
			for _, w := range tc.want {
				if !strings.Contains(text, w) {
					t.Errorf("warnings lack %q:\n%s", w, text)
				}
			}
			if len(tc.want) == 0 && text != "" {
				t.Errorf("warnings for no loss:\n%s", text)
			}
			if !tc.exact && strings.Contains(text, "exact") {
				t.Errorf("says \"exact\":\n%s", text)
			}
			if i, j := strings.Index(text, "occurrences missed"), strings.Index(text, "event lines lost"); i >= 0 && j >= 0 && j < i {
				t.Errorf("the miss should be said first:\n%s", text)
			}
		})
	}
}

func TestLossMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newLossMetrics(reg)
	m.add(loss(3, 7, 2))
	m.add(loss(1, 0, 0))
	rr := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rr, httptest.NewRequest("GET", "/metrics", nil))
	text := rr.Body.String()
	for _, want := range []string{
		"kdrop_lost_lines_total 4", "kdrop_missed_total 7", "kdrop_coarsened_total 2",
		"# TYPE kdrop_lost_lines_total counter", "# TYPE kdrop_missed_total counter", "# TYPE kdrop_coarsened_total counter",
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, text)
		}
	}
	help := map[string]string{}
	for _, l := range strings.Split(text, "\n") {
		if f := strings.SplitN(l, " ", 4); len(f) == 4 && f[1] == "HELP" {
			help[f[2]] = f[3]
		}
	}
	if h := help["kdrop_missed_total"]; !strings.Contains(h, "kdrop_events_total is short by up to this much") || strings.Contains(h, "exact") {
		t.Errorf("kdrop_missed_total's help should say counts are short: %q", h)
	}
	for _, name := range []string{"kdrop_lost_lines_total", "kdrop_coarsened_total"} {
		if h := help[name]; !strings.Contains(h, "kdrop_events_total stays exact") {
			t.Errorf("%s's help should say counts stay exact: %q", name, h)
		}
	}
	if strings.Contains(text, "kdrop_lost_events_total") {
		t.Error("the old metric kdrop_lost_events_total is still there")
	}
	lint := exec.Command("promtool", "check", "metrics")
	lint.Stdin = strings.NewReader(text)
	if out, err := lint.CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// An /events client is told of lost lines, of kernel misses, and of the
// occurrences its own stream had no room for; tail shows each in its own
// words, and the count it sees plus what it was told it missed is what was
// published.
func TestStreamLossNotices(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := &hub{node: "node-a", subs: map[*subscriber]struct{}{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.serve(ctx, w, r) }))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReaderSize(resp.Body, 1<<20)
	if hello, err := br.ReadBytes('\n'); err != nil || !bytes.Contains(hello, []byte(`"type":"hello"`)) {
		t.Fatalf("no hello line: %q %v", hello, err)
	}

	// The client does not read while the agent publishes far more than its
	// queue and the sockets hold: the rest is dropped for it, and counted.
	const published = 30000
	ev := &tracer.Event{Type: tracer.Drop, Count: 2, Reason: "NO_SOCKET"}
	line := []byte(`{"time":"2026-11-27T11:50:00Z","type":"drop","count":2,"reason":"NO_SOCKET","pad":"` + strings.Repeat("x", 2000) + `"}` + "\n")
	for i := 0; i < published; i++ {
		h.publish(&record{Event: ev}, line)
	}
	h.loss(4, 7)

	// Read until the stream has been quiet for a while after the notices:
	// queued events may still follow them.
	read := make(chan []byte, 1024)
	go func() {
		defer close(read)
		for {
			l, err := br.ReadBytes('\n')
			if err != nil {
				return
			}
			read <- l
		}
	}()
	var got, kernel, stream, lost uint64
	var lines []byte
	deadline := time.After(20 * time.Second)
	for {
		var l []byte
		select {
		case got, ok := <-read:
			if !ok {
				t.Fatalf("the stream ended:\n%s", lines)
			}
			l = got
		case <-deadline:
			t.Fatalf("notices: %d lost lines, %d missed by the kernel, %d by the stream after 20 s:\n%s", lost, kernel, stream, lines)
		case <-time.After(2 * time.Second):
		}
		if l == nil {
			if kernel > 0 && stream > 0 && lost > 0 {
				break
			}
			continue
		}
		var head struct {
			Type          string
			Count, Lost   uint64
			Missed        uint64
			Cause, Reason string
		}
		if err := json.Unmarshal(l, &head); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		switch head.Type {
		case "drop":
			got += head.Count
			continue
		case "lost":
			lost += head.Lost
		case "missed":
			switch head.Cause {
			case report.MissedByKernel:
				kernel += head.Missed
			case report.MissedByStream:
				stream += head.Missed
			default:
				t.Errorf("missed notice with cause %q: %s", head.Cause, l)
			}
		}
		lines = append(lines, l...)
	}
	if lost != 4 || kernel != 7 || stream == 0 {
		t.Fatalf("notices: %d lost lines, %d missed by the kernel, %d by the stream; want 4, 7 and some:\n%s", lost, kernel, stream, lines)
	}
	if got+stream != 2*published {
		t.Errorf("the client saw %d occurrences and was told it missed %d: %d, want the %d published", got, stream, got+stream, 2*published)
	}
	t.Logf("%d occurrences through, %d missed by the stream", got, stream)

	// tail's words for each notice, and the numbers it carries on
	tl := &tailer{lines: make(chan tailLine, 16)}
	if err := tl.read(bytes.NewReader(lines)); err != nil {
		t.Fatal(err)
	}
	close(tl.lines)
	var table []string
	var sumLost, sumMissed uint64
	for l := range tl.lines {
		sumLost += l.lost
		sumMissed += l.miss
		table = append(table, tableFromJSON(l.line))
	}
	if sumLost != 4 || sumMissed != 7+stream {
		t.Errorf("tail lines carry %d lost and %d missed, want 4 and %d", sumLost, sumMissed, 7+stream)
	}
	text := strings.Join(table, "\n")
	for _, want := range []string{
		"** 4 event lines lost on this node: the ring buffer was full (their counts arrive in later summary lines)",
		"** 7 occurrences missed on this node: counts may be short by up to 7 (the kernel skipped kdrop's program, already running on that CPU, e.g. a drop nested in softirq)",
		"occurrences missed on this node: counts are short by", "(this stream fell behind and the agent dropped lines for it; narrow the filters",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("tail lacks %q:\n%s", want, text)
		}
	}
	for _, row := range table {
		if strings.Contains(row, "missed") && (strings.Contains(row, "exact") || strings.Contains(row, "summary lines")) {
			t.Errorf("a missed row says its counts are kept: %s", row)
		}
	}
}

// A recording's loss notices and trailer, as written, read back by the
// report: lost lines apart from missed occurrences.
func TestRecordLossNotices(t *testing.T) {
	out := filepath.Join(t.TempDir(), "rec.jsonl.gz")
	r, err := createRecording(out, watchFlags{}, recordHeader{From: "watch", Nodes: []report.Node{{Name: "node-a"}}})
	if err != nil {
		t.Fatal(err)
	}
	r.lossNotices("node-a", loss(5, 0, 9))
	r.lossNotices("node-a", loss(0, 0, 0))
	r.lossNotices("node-a", loss(2, 3, 0))
	core, logs := observer.New(zapcore.InfoLevel)
	if err := r.finish(zap.New(core)); err != nil {
		t.Fatal(err)
	}
	if text := logText(logs.All()); !strings.Contains(text, "lost_lines=7") || !strings.Contains(text, "missed=3") || !strings.Contains(text, "counts are short") {
		t.Errorf("record's last words:\n%s", text)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rec, err := report.Read(f)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Lost() != 7 || len(rec.Losses) != 2 || rec.Missed() != 3 || len(rec.Misses) != 1 || len(rec.Notes) != 0 {
		t.Fatalf("read back %d lost lines in %d notices, %d missed in %d, notes %q; want 7 in 2, 3 in 1", rec.Lost(), len(rec.Losses), rec.Missed(), len(rec.Misses), rec.Notes)
	}
	if m := rec.Misses[0]; m.Node != "node-a" || m.Cause != report.MissedByKernel || m.Missed != 3 {
		t.Errorf("miss %+v", m)
	}
	if tr := rec.Trailer; tr == nil || tr.Lost != 7 || tr.Missed != 3 {
		t.Errorf("trailer %+v", tr)
	}
}

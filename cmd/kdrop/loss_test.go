package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/recording"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/report"
	"github.com/kdrop/kdrop/tracer"
)

// A recording's loss notices and trailer, as written, read back by the
// report: lost lines apart from missed occurrences.
func TestRecordLossNotices(t *testing.T) {
	out := filepath.Join(t.TempDir(), "rec.jsonl.gz")
	r, err := recording.Create(out, line.Header{From: "watch", Nodes: []line.Node{{Name: "node-a"}}})
	if err != nil {
		t.Fatal(err)
	}
	var st tracer.Stats
	st.LostLines[tracer.Drop], st.Coarsened = 5, 9
	r.LossNotices("node-a", st)
	r.LossNotices("node-a", tracer.Stats{})
	st = tracer.Stats{Missed: 3}
	st.LostLines[tracer.ListenOverflow] = 2
	r.LossNotices("node-a", st)
	core, logs := observer.New(zapcore.InfoLevel)
	if err := finish(r, "", out, zap.New(core)); err != nil {
		t.Fatal(err)
	}
	var said []string
	for _, e := range logs.All() {
		said = append(said, e.Message)
		for k, v := range e.ContextMap() {
			said = append(said, fmt.Sprintf("%s=%v", k, v))
		}
	}
	if text := strings.Join(said, "\n"); !strings.Contains(text, "lost_lines=7") || !strings.Contains(text, "missed=3") || !strings.Contains(text, "counts are short") {
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

package enrich

import (
	"encoding/json"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/kdrop/kdrop/tracer"
)

// Lost lines and missed occurrences, told apart in watch's warnings. No
// userspace action reliably makes the kernel skip a program (a recursion
// miss), so the misses here are simulated: a tracer.Stats with Missed set,
// fed to the code that words it.

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
			WarnLoss(zap.New(core), tc.st, tc.total)
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

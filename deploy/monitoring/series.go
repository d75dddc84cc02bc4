package monitoring

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// SeriesFile holds the kdrop_* series a real Prometheus scraped from a real
// agent with real drops (cmd/kdrop TestAgentMonitoring writes it with
// KDROP_UPDATE_SERIES=1, and otherwise checks it still matches). The
// alerts' promtool tests take their input series from it.
const SeriesFile = "deploy/monitoring/testdata/agent-series.txt"

// FixedInstance replaces the agent's address (a free port each run) in
// SeriesFile.
const FixedInstance = "127.0.0.1:9965"

// Series is one series: its metric name and labels.
type Series struct {
	Name   string
	Labels map[string]string
}

// String writes s as PromQL does: name{a="b", c="d"}, labels sorted.
func (s Series) String() string {
	var b strings.Builder
	b.WriteString(s.Name)
	b.WriteByte('{')
	for i, k := range slices.Sorted(maps.Keys(s.Labels)) {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(k + "=" + strconv.Quote(s.Labels[k]))
	}
	b.WriteByte('}')
	return b.String()
}

// LabelNames is the sorted label names of s, comma-separated.
func (s Series) LabelNames() string {
	return strings.Join(slices.Sorted(maps.Keys(s.Labels)), ",")
}

// With returns a copy of s with the labels kv (name, value, ...) set.
func (s Series) With(kv ...string) Series {
	c := Series{Name: s.Name, Labels: maps.Clone(s.Labels)}
	for i := 0; i+1 < len(kv); i += 2 {
		c.Labels[kv[i]] = kv[i+1]
	}
	return c
}

// ParseSeries reads SeriesFile's format: one series a line, # comments.
func ParseSeries(text string) ([]Series, error) {
	var out []Series
	for i, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		ls, err := parser.ParseMetric(l)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		s := Series{Labels: map[string]string{}}
		ls.Range(func(l labels.Label) {
			if l.Name == "__name__" {
				s.Name = l.Value
			} else {
				s.Labels[l.Name] = l.Value
			}
		})
		out = append(out, s)
	}
	return out, nil
}

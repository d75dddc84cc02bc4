package metrics

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// kdrop_events_total keeps at most max label sets: past that, the one
// updated least recently goes.
func TestEventSeriesBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kdrop_events_total", Help: "test"},
		[]string{"type", "reason", "namespace", "workload"})
	reg.MustRegister(vec)
	c := newEventCounter(vec, 4, 3)
	job := func(i int) labelSet { return labelSet{"drop", "NO_SOCKET", "ci", fmt.Sprintf("Job/run-%d", i)} }
	for i := range 3 {
		c.add(job(i), 1)
	}
	c.add(job(0), 1) // run-1 is now the least recently updated
	c.add(job(3), 5)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "workload" {
					got[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	want := map[string]float64{"Job/run-0": 2, "Job/run-2": 1, "Job/run-3": 5}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("series %v, want %v", got, want)
	}
}

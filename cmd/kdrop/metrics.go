package main

import (
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/lru"
)

// maxEventSeries bounds the label sets of kdrop_events_total.
const maxEventSeries = 2000

// eventCounter is kdrop_events_total with its label sets bounded:
// namespaces and workloads come and go (a Job per run, a namespace per CI
// pipeline) while an agent runs for months. It keeps at most max series;
// past that, the one updated least recently is deleted. Prometheus keeps
// what it scraped of it, and a series that comes back starts again from 0,
// which rate() and increase() read as a counter reset.
type eventCounter struct {
	vec    *prometheus.CounterVec
	series *lru.Cache // eventLabels → prometheus.Counter
}

type eventLabels struct{ typ, reason, namespace, workload string }

func newEventCounter(vec *prometheus.CounterVec, max int) *eventCounter {
	return &eventCounter{vec: vec, series: lru.NewWithEvictionFunc(max, func(k lru.Key, _ any) {
		l := k.(eventLabels)
		vec.DeleteLabelValues(l.typ, l.reason, l.namespace, l.workload)
	})}
}

func (c *eventCounter) add(l eventLabels, n float64) {
	v, ok := c.series.Get(l)
	if !ok {
		v = c.vec.WithLabelValues(l.typ, l.reason, l.namespace, l.workload)
		c.series.Add(l, v)
	}
	v.(prometheus.Counter).Add(n)
}

// Package metrics is the agent's Prometheus metrics: occurrences by type,
// reason, namespace and workload (label sets bounded), the ways kdrop's
// output fell short of the kernel, hooks and identity.
package metrics

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/lru"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

// MaxEventSeries bounds the label sets of kdrop_events_total.
const MaxEventSeries = 2000

// MaxNetfilterSeries bounds the label sets of kdrop_netfilter_drops_total.
const MaxNetfilterSeries = 500

// MaxConntrackSeries bounds the label sets of kdrop_conntrack_drops_total.
const MaxConntrackSeries = 200

// Agent is the agent's metrics. Label sets stay bounded: event type,
// reason, namespace, workload; never addresses, ports or pod names.
type Agent struct {
	counts                       *eventCounter // adds to kdrop_events_total, at most MaxEventSeries label sets
	netfilter                    *eventCounter // adds to kdrop_netfilter_drops_total, at most MaxNetfilterSeries
	conntrack                    *eventCounter // adds to kdrop_conntrack_drops_total, at most MaxConntrackSeries
	lostLines, missed, coarsened prometheus.Counter
}

// Sources are what the gauges read.
type Sources struct {
	Hooks   []tracer.HookStatus
	Healthy func() bool // pod identity synced and the API server answering
	Clients func() int  // /events clients connected
	// Refused counts /events callers refused, by HTTP status
	// (stream.Authorizer.Refused).
	Refused map[int]*atomic.Uint64
	// EventWrites and EventsUnrecorded count the Kubernetes Events
	// recorder's writes (k8sevents.Recorder Writes and Failed) and the
	// occurrences in no Event (Unrecorded); nil: Events are off.
	EventWrites      map[string]*atomic.Uint64 // by result: ok, failed
	EventsUnrecorded *atomic.Uint64
	// Rules reports naming netfilter rules (enrich.Pipeline.RuleStats).
	Rules func() netfilter.Stats
}

// NewAgent registers the agent's metrics, and Go's and the process's, in reg.
func NewAgent(reg prometheus.Registerer, src Sources) *Agent {
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kdrop_events_total",
		Help: fmt.Sprintf("Occurrences of kernel drops, listen queue overflows and ICMP errors sent, by type, reason (drop reason, ICMP error or queue), and the namespace and workload (KIND/NAME) of the pod concerned, or Service/NAME for traffic to a Service address. At most %d label sets: past that, the one updated least recently is dropped.", MaxEventSeries),
	}, []string{"type", "reason", "namespace", "workload"})
	nfDrops := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kdrop_netfilter_drops_total",
		Help: fmt.Sprintf("Occurrences of drops by a netfilter rule (NETFILTER_DROP), by the kind of rule: its backend (nftables, iptables-legacy, mixed among candidates; unknown when kdrop named no rule), its verdict (drop, reject, policy: a chain's drop policy; mixed among candidates, unknown), its Kubernetes meaning (no-endpoints, no-local-endpoints, invalid-conntrack, martian-localhost, source-range, network-policy; none when it has none), and the namespace of its Service or NetworkPolicy, else of the pod concerned. Never by rule, handle or comment. At most %d label sets: past that, the one updated least recently is dropped.", MaxNetfilterSeries),
	}, []string{"meaning", "namespace", "backend", "verdict"})
	ctDrops := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kdrop_conntrack_drops_total",
		Help: fmt.Sprintf("Occurrences of NETFILTER_DROP drops conntrack caused, by cause (insert-failed: lost the race to enter the table, typically a NAT port clash; table-full: nf_conntrack_max reached; drop: other; invalid: INVALID state, dropped by a rule) and the namespace of the pod concerned. Per cause, never more than the namespace's conntrack statistic (conntrack -S) moved. At most %d label sets: past that, the one updated least recently is dropped.", MaxConntrackSeries),
	}, []string{"cause", "namespace"})
	m := &Agent{
		conntrack: newEventCounter(ctDrops, 2, MaxConntrackSeries),
		counts:    newEventCounter(events, 4, MaxEventSeries),
		netfilter: newEventCounter(nfDrops, 4, MaxNetfilterSeries),
		lostLines: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kdrop_lost_lines_total",
			Help: "Events whose line found the ring buffer full: their lines (stdout, /events) are missing, but their occurrences came back in later summary lines, so kdrop_events_total stays exact.",
		}),
		missed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kdrop_missed_total",
			Help: "Occurrences kdrop never saw, because the kernel skipped its program (it was already running on that CPU, e.g. a drop nested in softirq): kdrop_events_total is short by up to this much (the kernel counts them before kdrop's filters).",
		}),
		coarsened: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kdrop_coarsened_total",
			Help: "Occurrences rate-limited under a coarser key than their flow because the in-kernel flow table was full: kdrop_events_total stays exact, but their summary lines do not tell destinations apart.",
		}),
	}
	hooks := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kdrop_hook_attached",
		Help: "1 for each hook attached, with its attach mode; 0 with mode \"none\" for a hook this kernel refused.",
	}, []string{"hook", "mode"})
	for _, h := range src.Hooks {
		if h.Mode == "" {
			hooks.WithLabelValues(h.Hook, "none").Set(0)
		} else {
			hooks.WithLabelValues(h.Hook, string(h.Mode)).Set(1)
		}
	}
	reg.MustRegister(events, nfDrops, ctDrops, m.lostLines, m.missed, m.coarsened, hooks,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kdrop_identity_healthy",
			Help: "1 when pod identity is synced and the API server answers; events are marked unresolved otherwise.",
		}, func() float64 {
			if src.Healthy != nil && src.Healthy() {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kdrop_stream_clients",
			Help: "Clients connected to /events.",
		}, func() float64 {
			if src.Clients == nil {
				return 0
			}
			return float64(src.Clients())
		}),
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	if src.Rules != nil {
		for _, c := range []struct {
			name, help string
			v          func(netfilter.Stats) uint64
		}{
			{"kdrop_netfilter_rule_reads_total", "Reads of a network namespace's netfilter rules, to name the rule of NETFILTER_DROP drops.",
				func(s netfilter.Stats) uint64 { return s.Reads }},
			{"kdrop_netfilter_rule_read_errors_total", "Reads of a namespace's netfilter rules that failed (timed out, rules changed meanwhile, namespace gone, permission denied).",
				func(s netfilter.Stats) uint64 { return s.ReadErrors }},
			{"kdrop_netfilter_rule_unknown_total", "NETFILTER_DROP lines that went out without a rule (rule.unknown says why).",
				func(s netfilter.Stats) uint64 { return s.Unknown }},
		} {
			reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: c.name, Help: c.help},
				func() float64 { return float64(c.v(src.Rules())) }))
		}
	}
	codes := slices.Sorted(maps.Keys(src.Refused))
	for _, code := range codes {
		n := src.Refused[code]
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "kdrop_stream_refused_total",
			Help:        "Callers of /events refused, by HTTP status: 401 not a stream token for this node, 403 the API server disowns it, 429 too many new tokens to review or streams for one token, 503 the API server could not say.",
			ConstLabels: prometheus.Labels{"code": strconv.Itoa(code)},
		}, func() float64 { return float64(n.Load()) }))
	}
	for _, result := range slices.Sorted(maps.Keys(src.EventWrites)) {
		n := src.EventWrites[result]
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "kdrop_k8s_events_writes_total",
			Help:        "Kubernetes Event writes (creates and patches) by result: ok, or failed (refused by the API server or not reaching it; the agent's log says why).",
			ConstLabels: prometheus.Labels{"result": result},
		}, func() float64 { return float64(n.Load()) }))
	}
	if n := src.EventsUnrecorded; n != nil {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kdrop_k8s_events_unrecorded_total",
			Help: "Occurrences of findings counted in no Kubernetes Event: their Event's write failed for good (namespace gone or terminating, invalid, forbidden) or kept failing for 10 minutes, or 10000 series were held.",
		}, func() float64 { return float64(n.Load()) }))
	}
	return m
}

// AddLoss counts what the tracer's loss counters grew by (see
// enrich.Pipeline.NewLoss).
func (m *Agent) AddLoss(d tracer.Stats) {
	m.lostLines.Add(float64(d.LostLinesTotal()))
	m.missed.Add(float64(d.Missed))
	m.coarsened.Add(float64(d.Coarsened))
}

// Observe counts ev's occurrences under the pod where the kernel acted,
// else the destination pod, else the destination Service (workload
// "Service/NAME": kube-proxy's REJECT of a Service without endpoints).
func (m *Agent) Observe(ev *line.Event) {
	who := ev.WhereK8s
	if who == nil || who.Kind != k8s.KindPod {
		who = ev.DstK8s
	}
	ns, wl := "", ""
	switch {
	case who == nil:
	case who.Kind == k8s.KindPod:
		ns = who.Namespace
		if who.WorkloadKind != "" {
			wl = who.WorkloadKind + "/" + who.WorkloadName
		}
	case who.Kind == k8s.KindService:
		ns, wl = who.Namespace, "Service/"+who.Name
	}
	m.counts.add(labelSet{ev.Type.String(), ev.What(), ns, wl}, float64(ev.Count))
	if c := ev.Conntrack; c != nil {
		m.conntrack.add(labelSet{c.Cause, ns}, float64(ev.Count))
	}
	if ev.Rule != nil {
		meaning := "none"
		if k := ev.Rule.K8s; k != nil {
			meaning = k.Kind
			if svcNS, _, ok := strings.Cut(k.Service, "/"); ok {
				ns = svcNS
			} else if len(k.NetworkPolicies) > 0 {
				ns = k.NetworkPolicies[0].Namespace
			}
		}
		backend, verdict := ruleKind(ev.Rule)
		m.netfilter.add(labelSet{meaning, ns, backend, verdict}, float64(ev.Count))
	}
}

// ruleKind is a rule's backend and verdict as bounded label values: a
// few words each, whatever the rule (see kdrop_netfilter_drops_total).
func ruleKind(r *netfilter.Rule) (backend, verdict string) {
	if !r.Known() {
		return "unknown", "unknown"
	}
	switch r.Backend {
	case netfilter.BackendNftables, netfilter.BackendLegacy:
		backend = r.Backend
	case netfilter.BackendNftables + "," + netfilter.BackendLegacy:
		backend = "mixed"
	default:
		backend = "unknown"
	}
	if len(r.Candidates) == 0 {
		return backend, netfilter.VerdictKind(r.Verdict)
	}
	verdict = netfilter.VerdictKind(r.Candidates[0].Verdict)
	for _, c := range r.Candidates[1:] {
		if netfilter.VerdictKind(c.Verdict) != verdict {
			return backend, "mixed"
		}
	}
	return backend, verdict
}

// eventCounter is a counter vector (kdrop_events_total,
// kdrop_netfilter_drops_total) with its label sets bounded:
// namespaces and workloads come and go (a Job per run, a namespace per CI
// pipeline) while an agent runs for months. It keeps at most max series;
// past that, the one updated least recently is deleted. Prometheus keeps
// what it scraped of it, and a series that comes back starts again from 0,
// which rate() and increase() read as a counter reset.
type eventCounter struct {
	vec    *prometheus.CounterVec
	labels int        // how many labels vec has
	series *lru.Cache // labelSet → prometheus.Counter
}

// labelSet is a series' label values in the vector's order; the vector's
// label count of them are used (at most 4).
type labelSet [4]string

func newEventCounter(vec *prometheus.CounterVec, labels, max int) *eventCounter {
	c := &eventCounter{vec: vec, labels: labels}
	c.series = lru.NewWithEvictionFunc(max, func(k lru.Key, _ any) {
		l := k.(labelSet)
		vec.DeleteLabelValues(c.values(l)...)
	})
	return c
}

// values are l's values for the vector's labels.
func (c *eventCounter) values(l labelSet) []string { return l[:c.labels] }

func (c *eventCounter) add(l labelSet, n float64) {
	v, ok := c.series.Get(l)
	if !ok {
		v = c.vec.WithLabelValues(c.values(l)...)
		c.series.Add(l, v)
	}
	v.(prometheus.Counter).Add(n)
}

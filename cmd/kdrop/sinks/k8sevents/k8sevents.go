// Package k8sevents posts what the agent sees as Kubernetes Events
// (events.k8s.io/v1) on the object each finding is about, so that
// `kubectl describe pod`, `kubectl events --for pod/NAME` and
// `kubectl get events --field-selector reason=...` show it:
//
//	ListenQueueOverflow  the listener's pod: connections dropped at a full accept or SYN queue
//	SentToDeletedPod     the client pod: packets to the IP of a pod deleted before, answered host-unreachable
//	NoReadyEndpoints     the Service: connections rejected (NETFILTER_DROP) while it has no ready endpoints
//	NoLocalEndpoints     the Service: packets kube-proxy drops because this node has no ready endpoint of a Local-policy Service
//	SourceRangeDenied    the Service: packets from outside its loadBalancerSourceRanges, dropped by kube-proxy
//	NothingListening     the destination pod: connection attempts (TCP SYN, UDP) to a port of its IP where no socket listens (NO_SOCKET), one series per port; none for a Terminating pod
//	NetworkPolicyDenied  the isolated pod: packets its NetworkPolicies allow none of (rule.k8s, ingress or egress)
//	ProbeDropped         the probed pod: a kubelet probe's packets dropped, reset (NO_SOCKET) or unreachable (line.Event.Probe)
//
// The Service of the last three is the one kube-proxy's rule names
// (rule.k8s.service), looked up by name for its UID (Config.Services); a
// REJECT whose rule names none, to the IP of a Service with no ready
// endpoints, is NoReadyEndpoints on that Service. Only drops in the node's
// own network namespace count for these: kube-proxy's rules are there.
//
// One Event series per object and reason (and port, for NothingListening): its count (series.count, or 1
// without a series) is the number of occurrences the stream showed for it;
// its note describes the first.
// Writes are bounded: one series is written at most every MinInterval, and
// the node writes at most PerMinute Events a minute; occurrences that come
// meanwhile are folded into the series' next write, never lost from its
// count. A write that fails for good (the namespace gone or terminating,
// the Event invalid or forbidden) drops its series, logged once, and the
// object's occurrences for the next 10 minutes are counted in Unrecorded
// instead; one that fails otherwise is retried with an exponential backoff
// (2 s to 5 min), retries taking at most a quarter of the node's budget,
// and a failing series idle for 10 minutes is dropped the same way.
// An Event is named after its object, cut to keep the name valid.
//
// client-go's recorders are not used: the events.k8s.io one counts calls,
// not occurrences, and writes a series' count only every 30 minutes; the
// core/v1 one's spam filter discards occurrences. Neither can say "513
// connections refused" with the count to match.
package k8sevents

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

// The Events' reasons.
const (
	ReasonListenOverflow   = "ListenQueueOverflow"
	ReasonDeletedPod       = "SentToDeletedPod"
	ReasonNoEndpoints      = "NoReadyEndpoints"
	ReasonNoLocalEndpoints = "NoLocalEndpoints"
	ReasonSourceRange      = "SourceRangeDenied"
	ReasonNothingListening = "NothingListening"
	ReasonPolicyDenied     = "NetworkPolicyDenied"
	ReasonProbeDropped     = "ProbeDropped"
)

// Controller is the Events' reportingController.
const Controller = "kdrop.dev/agent"

// Defaults of Config.
const (
	DefaultPerMinute   = 60
	DefaultMinInterval = 10 * time.Second
	// idle: a series with no occurrence for this long is forgotten; a new
	// occurrence starts a new Event.
	idle = 10 * time.Minute
	// maxSeries bounds the series held; past it, new ones are not started
	// (counted in Unrecorded) until idle ones are forgotten.
	maxSeries = 10000
	// A write that fails transiently is retried after retryMin, doubling at
	// each failure up to retryMax; retries take at most 1/retryShare of the
	// node's budget, so failing series never starve the others.
	retryMin   = 2 * time.Second
	retryMax   = 5 * time.Minute
	retryShare = 4
	noteMax    = 1024 // the API's limit on note
)

// Config is how the recorder writes.
type Config struct {
	Node        string        // the agent's node: reportingInstance
	PerMinute   int           // most Event writes (create or patch) a minute for this node
	MinInterval time.Duration // least time between two writes of one series
	// Services finds the Service kube-proxy's rule names, for its UID
	// (k8s.Resolver); nil: such drops are findings only when their
	// address is the Service's.
	Services ServiceLookup
	Log      *zap.Logger
}

// ServiceLookup finds a Service by namespace and name, as
// k8s.Resolver.LookupService does.
type ServiceLookup interface {
	LookupService(namespace, name string) (k8s.Endpoint, bool)
}

// Recorder aggregates findings into Event series and writes them.
type Recorder struct {
	cs    kubernetes.Interface
	cfg   Config
	limit *rate.Limiter
	mu    sync.Mutex
	// series by object and reason
	series map[key]*series
	// series whose writes failed for good (the namespace is gone or
	// terminating, the write is invalid or forbidden): their occurrences
	// are counted in Unrecorded until the entry expires (idle)
	dead map[key]time.Time
	// retry bounds the writes of series whose last write failed
	retry *rate.Limiter
	// Writes counts Events created or patched; Failed, writes the API
	// server refused or that did not reach it; Unrecorded, occurrences in
	// no Event: maxSeries were held, or their series' writes failed for
	// good or for longer than idle.
	Writes, Failed, Unrecorded atomic.Uint64
}

// key is a series': its object and reason, and for NothingListening the
// protocol and port nothing listens on (each port its own series, its
// note naming it).
type key struct {
	uid    types.UID
	reason string
	proto  uint8
	port   uint16
}

// keyOf is the series key of a finding of reason on ref from ev.
func keyOf(ref corev1.ObjectReference, reason string, ev *line.Event) key {
	k := key{uid: ref.UID, reason: reason}
	if reason == ReasonNothingListening {
		k.proto, k.port = ev.Proto, ev.Dst.Port()
	}
	return k
}

type series struct {
	key         key
	ref         corev1.ObjectReference
	reason      string
	count       uint64    // occurrences so far
	written     uint64    // count as last written
	first, last time.Time // of the occurrences
	detail      string    // of the first occurrence, for the note
	name        string    // of the Event, once created
	wrote       time.Time
	fails       int       // writes failed in a row
	retryAt     time.Time // after a failed write: not before
}

// New returns a recorder writing with cs.
func New(cs kubernetes.Interface, cfg Config) *Recorder {
	if cfg.PerMinute <= 0 {
		cfg.PerMinute = DefaultPerMinute
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = DefaultMinInterval
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	perSec := rate.Limit(float64(cfg.PerMinute) / 60)
	return &Recorder{cs: cs, cfg: cfg, series: map[key]*series{}, dead: map[key]time.Time{},
		limit: rate.NewLimiter(perSec, Burst(cfg.PerMinute)),
		retry: rate.NewLimiter(perSec/retryShare, max(1, Burst(cfg.PerMinute)/retryShare))}
}

// Burst is how many writes a node may make at once, of its perMinute: in
// any window of d, a node writes at most Burst(perMinute) +
// perMinute*d/1min Events.
func Burst(perMinute int) int { return max(1, perMinute/6) }

// Observe counts ev in its series, if it is a finding. It is cheap and
// never blocks on the API server.
func (r *Recorder) Observe(ev *line.Event) {
	ref, reason, detail, ok := classify(ev, r.cfg.Services, r.cfg.Node)
	if !ok {
		return
	}
	n := max(ev.Count, 1)
	k := keyOf(ref, reason, ev)
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.series[k]
	if s == nil {
		if until, ok := r.dead[k]; ok {
			if time.Now().Before(until) {
				r.Unrecorded.Add(n)
				return
			}
			delete(r.dead, k)
		}
		if len(r.series) >= maxSeries {
			r.Unrecorded.Add(n)
			return
		}
		s = &series{key: k, ref: ref, reason: reason, first: ev.Time}
		r.series[k] = s
	}
	if s.count == 0 {
		s.detail = detail
	}
	s.count += n
	s.last = ev.Time
}

// Run writes the series that have new occurrences, once a second, until
// ctx is done.
func (r *Recorder) Run(ctx context.Context) { wait.UntilWithContext(ctx, r.Flush, time.Second) }

// Flush writes every series due: new occurrences, its MinInterval passed,
// and the node's budget allowing. The others wait for a later Flush.
// Series whose last write failed come last, after their backoff, and take
// at most a share of the budget (retryShare); a write that fails for good
// drops its series (its occurrences counted in Unrecorded).
func (r *Recorder) Flush(ctx context.Context) {
	now := time.Now()
	var due []series
	r.mu.Lock()
	for k, t := range r.dead {
		if now.After(t) {
			delete(r.dead, k)
		}
	}
	var retries []*series
	for k, s := range r.series {
		if s.fails > 0 && now.Sub(s.last) > idle { // failing and idle: aged out
			r.Unrecorded.Add(s.count - s.written)
			delete(r.series, k)
			continue
		}
		if s.count == s.written {
			if now.Sub(s.last) > idle && now.Sub(s.wrote) > idle {
				delete(r.series, k)
			}
			continue
		}
		if !s.wrote.IsZero() && now.Sub(s.wrote) < r.cfg.MinInterval {
			continue
		}
		if s.fails > 0 {
			if now.After(s.retryAt) {
				retries = append(retries, s)
			}
			continue
		}
		if !r.limit.Allow() {
			break
		}
		s.wrote = now
		due = append(due, *s)
	}
	for _, s := range retries {
		if !r.retry.Allow() || !r.limit.Allow() {
			break
		}
		s.wrote = now
		due = append(due, *s)
	}
	r.mu.Unlock()
	for i := range due {
		d := &due[i]
		name, err := r.write(ctx, d)
		k := d.key
		permanent := err != nil && permanentError(err, d.name != "")
		r.mu.Lock()
		s := r.series[k]
		switch {
		case s == nil:
		case err == nil:
			s.name, s.written, s.fails = name, d.count, 0
		case permanent:
			r.Unrecorded.Add(s.count - s.written)
			delete(r.series, k)
			if len(r.dead) < maxSeries {
				r.dead[k] = now.Add(idle)
			}
		default:
			if d.name != "" && (apierrors.IsNotFound(err) || apierrors.IsGone(err)) {
				s.name = "" // expired (the API server's event TTL): create anew, now
			} else {
				s.fails++
				s.retryAt = now.Add(backoff(s.fails))
			}
		}
		r.mu.Unlock()
		if err != nil {
			r.Failed.Add(1)
			log := r.cfg.Log.Warn
			if !permanent && d.fails > 0 {
				log = r.cfg.Log.Debug // warned at its first failure
			}
			log("cannot write a Kubernetes Event", zap.String("reason", d.reason),
				zap.String("object", d.ref.Namespace+"/"+d.ref.Name), zap.Bool("dropped", permanent), zap.Error(err))
			continue
		}
		r.Writes.Add(1)
	}
}

// backoff is the wait before a series' retry after fails failed writes.
func backoff(fails int) time.Duration {
	d := retryMin
	for i := 1; i < fails && d < retryMax; i++ {
		d *= 2
	}
	return min(d, retryMax)
}

// permanentError says whether a write that failed with err would fail
// again: the namespace is gone (a create's NotFound) or terminating
// (Forbidden), the Event is invalid, or the agent may not write it.
// A patch's NotFound is an Event expired, not a failure.
func permanentError(err error, patch bool) bool {
	switch {
	case apierrors.IsNotFound(err) || apierrors.IsGone(err):
		return !patch
	case apierrors.IsInvalid(err), apierrors.IsForbidden(err), apierrors.IsBadRequest(err), apierrors.IsMethodNotSupported(err):
		return true
	}
	return false
}

// write creates s's Event, or patches its count and note; it returns the
// Event's name.
func (r *Recorder) write(ctx context.Context, s *series) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	note := s.note()
	var ser *eventsv1.EventSeries
	if s.count >= 2 { // the API's rule: a series counts 2 or more
		ser = &eventsv1.EventSeries{Count: int32(min(s.count, 1<<31-1)), LastObservedTime: metav1.NewMicroTime(s.last)}
	}
	evs := r.cs.EventsV1().Events(s.ref.Namespace)
	if s.name != "" {
		// Only the series may change: the API server keeps the note as
		// created.
		patch, _ := json.Marshal(map[string]any{"series": ser})
		_, err := evs.Patch(ctx, s.name, types.MergePatchType, patch, metav1.PatchOptions{})
		return s.name, err
	}
	e := &eventsv1.Event{
		ObjectMeta:          metav1.ObjectMeta{Name: eventName(s.ref.Name, time.Now().UnixNano()), Namespace: s.ref.Namespace},
		EventTime:           metav1.NewMicroTime(s.first),
		Series:              ser,
		ReportingController: Controller,
		ReportingInstance:   Controller + "-" + r.cfg.Node,
		Action:              "Observed",
		Reason:              s.reason,
		Regarding:           s.ref,
		Note:                note,
		Type:                corev1.EventTypeWarning,
	}
	if len(e.ReportingInstance) > 128 {
		e.ReportingInstance = e.ReportingInstance[:128]
	}
	created, err := evs.Create(ctx, e, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	return created.Name, nil
}

// eventName is the name of a new Event on the object named obj: obj, a dot
// and 16 hex digits, obj cut so that the whole is a valid name (at most
// 253 characters, a DNS subdomain: no dot or dash left at the cut's end).
func eventName(obj string, nano int64) string {
	suffix := fmt.Sprintf(".%016x", uint64(nano))
	if len(obj) > validation.DNS1123SubdomainMaxLength-len(suffix) {
		obj = strings.TrimRight(obj[:validation.DNS1123SubdomainMaxLength-len(suffix)], ".-")
	}
	return obj + suffix
}

// note says what the series counts and its first occurrence's detail. It
// has no count: the API server does not let a note change, the series'
// count does.
//
// kubectl describe prints the note as it is: the detail (names, a rule's
// meaning) is made printable (line.Printable), so that no control
// character or bidirectional override reaches the operator's terminal.
func (s *series) note() string {
	n := what[s.reason] + ": " + line.Printable(s.detail) + " (seen by kdrop)"
	if len(n) > noteMax {
		n = strings.ToValidUTF8(n[:noteMax-3], "") + "..."
	}
	return n
}

// Reasons are the Events' reasons, what each is on and what it is, in
// the order help lists them (ReasonsHelp); TestReasonsListed holds it to
// the Reason constants.
var Reasons = []struct{ Reason, On, Means string }{
	{ReasonListenOverflow, "the listener's pod", "connections dropped at a full accept or SYN queue, with the queue and somaxconn"},
	{ReasonDeletedPod, "the client pod", "packets to the IP of a deleted pod that the kernel answered host-unreachable"},
	{ReasonNoEndpoints, "the Service", "connections rejected while it had no ready endpoints"},
	{ReasonNoLocalEndpoints, "the Service", "packets kube-proxy drops because this node has no ready endpoint of its Local traffic policy"},
	{ReasonSourceRange, "the Service", "packets from outside its loadBalancerSourceRanges, dropped by kube-proxy"},
	{ReasonNothingListening, "the pod", "connection attempts (TCP SYN, UDP) to a port of its IP where nothing listens, one series per port"},
	{ReasonPolicyDenied, "the isolated pod", "packets its NetworkPolicies allow none of, ingress or egress"},
	{ReasonProbeDropped, "the pod", "a kubelet probe's packets dropped, reset (nothing listens on the probed port) or unreachable"},
}

// ReasonsHelp lists Reasons for a command's help: each reason indented by
// indent, what it is on and means in a column after it, lines wrapped at
// width.
func ReasonsHelp(indent, width int) string {
	col := 0
	for _, r := range Reasons {
		col = max(col, len(r.Reason))
	}
	col += indent + 2
	var b strings.Builder
	for i, r := range Reasons {
		if i > 0 {
			b.WriteByte('\n')
		}
		line := strings.Repeat(" ", indent) + r.Reason + strings.Repeat(" ", col-indent-len(r.Reason))
		n := len(line)
		b.WriteString(line)
		for j, w := range strings.Fields("on " + r.On + ": " + r.Means) {
			if j > 0 && n+1+len(w) > width {
				b.WriteString("\n" + strings.Repeat(" ", col))
				n = col
			} else if j > 0 {
				b.WriteByte(' ')
				n++
			}
			b.WriteString(w)
			n += len(w)
		}
	}
	return b.String()
}

// what each reason's occurrences are.
var what = map[string]string{
	ReasonListenOverflow:   "connections refused",
	ReasonDeletedPod:       "packets to a deleted pod",
	ReasonNoEndpoints:      "connections rejected",
	ReasonNoLocalEndpoints: "packets dropped",
	ReasonSourceRange:      "packets dropped",
	ReasonNothingListening: "packets dropped",
	ReasonPolicyDenied:     "packets denied by NetworkPolicy",
	ReasonProbeDropped:     "probe packets lost",
}

// classify says whether ev is a finding: the object it is about, the
// reason, and the detail of this occurrence. svcs finds the Services
// kube-proxy's rules name; node is the agent's, for an event that names
// none.
func classify(ev *line.Event, svcs ServiceLookup, node string) (ref corev1.ObjectReference, reason, detail string, ok bool) {
	if ref, reason, detail, ok = kubeProxyFinding(ev, svcs, node); ok {
		return ref, reason, detail, ok
	}
	pod := func(e *k8s.Endpoint) bool {
		return e != nil && e.Kind == k8s.KindPod && e.UID != "" && !e.Unresolved && e.DeletedAgo == 0
	}
	switch {
	case ev.Probe != nil: // what the kubelet saw says more than the kernel's reason
		end := ev.DstK8s
		if ev.Dst.Port() != ev.Probe.Port {
			end = ev.SrcK8s // the pod's SYN-ACK
		}
		if !pod(end) {
			return ref, "", "", false
		}
		return podRef(end), ReasonProbeDropped, ev.ProbeText(), true
	case ev.Type == tracer.ListenOverflow:
		at := ev.WhereK8s
		if !pod(at) {
			at = ev.DstK8s
		}
		if !pod(at) || at.HostNetwork {
			return ref, "", "", false
		}
		detail = fmt.Sprintf("%s queue of :%d full (%d/%d", ev.Queue, ev.Dst.Port(), ev.QueueLen, ev.QueueMax)
		if ev.Somaxconn > 0 {
			detail += fmt.Sprintf(", net.core.somaxconn=%d", ev.Somaxconn)
		}
		return podRef(at), ReasonListenOverflow, detail + ")", true
	case ev.Type == tracer.Unreachable && ev.DstK8s != nil && ev.DstK8s.Kind == k8s.KindPod && ev.DstK8s.DeletedAgo > 0 && pod(ev.SrcK8s):
		d := ev.DstK8s
		return podRef(ev.SrcK8s), ReasonDeletedPod, fmt.Sprintf("to %s, which was pod %s/%s, deleted %v before; the kernel answered %s",
			ev.Dst, d.Namespace, d.Name, d.DeletedAgo.Round(time.Second), ev.What()), true
	case ev.Type == tracer.Drop && ev.Reason == "NETFILTER_DROP" && ev.DstK8s != nil && ev.DstK8s.Kind == k8s.KindService &&
		ev.DstK8s.ReadyEndpoints == 0 && ev.DstK8s.UID != "" && inNode(ev):
		return serviceRef(ev.DstK8s), ReasonNoEndpoints, fmt.Sprintf("to %s %s, dropped by a firewall rule while the Service has no ready endpoints (kube-proxy rejects them)", tracer.ProtoName(ev.Proto), ev.Dst), true
	case ev.Type == tracer.Drop && ev.Rule != nil && ev.Rule.K8s != nil && ev.Rule.K8s.Kind == netfilter.MeaningNetworkPolicy:
		isolated := ev.DstK8s // ingress: the destination is isolated
		if ev.Rule.K8s.Direction == "egress" {
			isolated = ev.SrcK8s
		}
		if !pod(isolated) {
			return ref, "", "", false
		}
		return podRef(isolated), ReasonPolicyDenied, ev.Rule.K8s.Text, true
	case ev.Type == tracer.Drop && ev.Reason == "NO_SOCKET" && pod(ev.DstK8s) && !ev.DstK8s.HostNetwork && !ev.DstK8s.Terminating && attempt(ev):
		return podRef(ev.DstK8s), ReasonNothingListening, fmt.Sprintf("nothing listens on %s port %d of %s (NO_SOCKET)", tracer.ProtoName(ev.Proto), ev.Dst.Port(), ev.Dst.Addr()), true
	}
	return ref, "", "", false
}

// attempt says whether ev's packet opens a connection or sends a
// datagram: a TCP SYN without ACK, or UDP. Other TCP segments to a port
// without a socket (a FIN, RST or ACK arriving after the socket closed: a
// late packet of a connection, often to an ephemeral port) are no sign
// that something should listen there.
func attempt(ev *line.Event) bool {
	switch ev.Proto {
	case 6:
		const fin, syn, rst, ack = 0x01, 0x02, 0x04, 0x10
		return ev.TCPFlags&(fin|syn|rst|ack) == syn
	case 17, 136: // UDP, UDP-Lite
		return true
	}
	return false
}

// kubeProxyFinding is the finding of a drop by kube-proxy's rule for a
// Service (rule.k8s): on that Service, found by name.
func kubeProxyFinding(ev *line.Event, svcs ServiceLookup, node string) (ref corev1.ObjectReference, reason, detail string, ok bool) {
	if ev.Type != tracer.Drop || ev.Rule == nil || ev.Rule.K8s == nil || svcs == nil || !inNode(ev) {
		return ref, "", "", false
	}
	m := ev.Rule.K8s
	switch m.Kind {
	case netfilter.MeaningNoEndpoints, netfilter.MeaningNoLocalEndpoints, netfilter.MeaningSourceRange:
	default:
		return ref, "", "", false
	}
	// kube-proxy names a Service port "ns/name:port", or "ns/name".
	ns, rest, _ := strings.Cut(m.Service, "/")
	name, _, _ := strings.Cut(rest, ":")
	svc, found := svcs.LookupService(ns, name)
	if !found || svc.UID == "" {
		return ref, "", "", false
	}
	if ev.Node != "" {
		node = ev.Node
	}
	to := fmt.Sprintf("to %s %s", tracer.ProtoName(ev.Proto), ev.Dst)
	switch {
	case m.Kind == netfilter.MeaningNoEndpoints:
		reason, detail = ReasonNoEndpoints, fmt.Sprintf("%s, rejected by kube-proxy: Service %s has no ready endpoints", to, m.Service)
	case m.Kind == netfilter.MeaningNoLocalEndpoints && strings.Contains(m.Text, "internalTrafficPolicy"):
		reason, detail = ReasonNoLocalEndpoints, fmt.Sprintf("%s: Service %s has internalTrafficPolicy: Local and no ready endpoint on node %s; "+
			"use internalTrafficPolicy: Cluster, or run an endpoint on every node whose pods call it (a DaemonSet)", to, m.Service, node)
	case m.Kind == netfilter.MeaningNoLocalEndpoints:
		reason, detail = ReasonNoLocalEndpoints, fmt.Sprintf("%s: Service %s has externalTrafficPolicy: Local and no ready endpoint on node %s; "+
			"use externalTrafficPolicy: Cluster, or make the load balancer health-check the node (the Service's healthCheckNodePort) so that it sends only to nodes with an endpoint", to, m.Service, node)
	default:
		reason, detail = ReasonSourceRange, fmt.Sprintf("from %s %s: Service %s admits only its loadBalancerSourceRanges, which do not include the source; "+
			"add the client's range to spec.loadBalancerSourceRanges if it should reach the Service", ev.Src.Addr(), to, m.Service)
	}
	return serviceRef(&svc), reason, detail, true
}

// inNode says whether ev happened in the node's own network namespace,
// where kube-proxy's rules are. The same words in the rules of another
// namespace (a pod's, a cluster nested in pods, a test's) are not about
// this cluster's Services, nor is a drop there of a packet to one.
func inNode(ev *line.Event) bool { return ev.WhereK8s != nil && ev.WhereK8s.Kind == k8s.KindNode }

func serviceRef(e *k8s.Endpoint) corev1.ObjectReference {
	return corev1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: e.Namespace, Name: e.Name, UID: types.UID(e.UID)}
}

func podRef(e *k8s.Endpoint) corev1.ObjectReference {
	return corev1.ObjectReference{APIVersion: "v1", Kind: "Pod", Namespace: e.Namespace, Name: e.Name, UID: types.UID(e.UID)}
}

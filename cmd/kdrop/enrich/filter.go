package enrich

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

// Filter is what a user asked to see, as given: the flags of watch, tail,
// record and the agent, an /events query, a recording's header. Its kernel
// part (Trace) becomes the tracer's Filter, applied in the kernel and, for
// the agent's stream clients, by tracer.Filter.Match; its pod part
// (Namespace, Pod, Selector) is applied here, to both ends and the pod
// where the kernel acted.
type Filter struct {
	Types         []string // drop, overflow, unreach
	Reasons       []string // drop reason names, e.g. NO_SOCKET
	IncludeBenign bool     // also drop reasons that are not faults (tracer.BenignReasons)
	CIDRs         []string // addresses or CIDRs, matching either end
	Port          uint16   // either port
	Proto         string   // tcp, udp, icmp, icmpv6, sctp or a number
	Netns         string   // an inode number or a namespace file
	Namespace     string   // pods of this namespace
	Pod           string   // this pod: name, or namespace/name
	Selector      string   // pods matching this label selector
}

// FieldError is a bad value of one field of a Filter. Its message names
// the flag (--type); an /events query names the parameter (Param).
type FieldError struct {
	Field string // type, reason, cidr, port, proto, netns, namespace, pod, selector
	Value string // the value at fault, when the message shows it
	Err   error  // what is wrong and what is accepted
}

func (e *FieldError) Error() string { return "--" + e.Field + e.value() + ": " + e.Err.Error() }

// Param words the error for an /events query.
func (e *FieldError) Param() string {
	return "query parameter " + e.Field + e.value() + ": " + e.Err.Error()
}

func (e *FieldError) value() string {
	if e.Value == "" {
		return ""
	}
	return " " + strconv.Quote(e.Value)
}

func (e *FieldError) Unwrap() error { return e.Err }

// Trace checks the kernel part and returns it as the tracer's filter.
// Errors are *FieldError: they name the field and say what is accepted.
func (f Filter) Trace() (tracer.Filter, error) {
	var o tracer.Filter
	for _, s := range f.Types {
		t, err := tracer.ParseEventType(s)
		if err != nil {
			return o, &FieldError{Field: "type", Err: err}
		}
		o.Types = append(o.Types, t)
	}
	o.Reasons = f.Reasons
	if len(f.Reasons) > 0 && len(o.Types) == 0 {
		o.Types = []tracer.EventType{tracer.Drop} // reasons only exist for drops
	}
	o.IncludeBenign = f.IncludeBenign
	for _, s := range f.CIDRs {
		p, err := parseCIDR(s)
		if err != nil {
			return o, err
		}
		o.CIDRs = append(o.CIDRs, p)
	}
	o.Port = f.Port
	if f.Proto != "" {
		p, err := tracer.ParseProto(f.Proto)
		if err != nil {
			return o, &FieldError{Field: "proto", Err: err}
		}
		o.Proto = p
	}
	if f.Netns != "" {
		ino, err := ParseNetns(f.Netns)
		if err != nil {
			return o, err
		}
		o.Netns = ino
	}
	return o, nil
}

// HasPods says whether the pod part asks for anything.
func (f Filter) HasPods() bool { return f.Namespace != "" || f.Pod != "" || f.Selector != "" }

// Header is the filter as a recording's header keeps it.
func (f Filter) Header() line.Filters {
	h := line.Filters{Types: f.Types, Reasons: f.Reasons, CIDRs: f.CIDRs, Port: f.Port, Namespace: f.Namespace, Pod: f.Pod, Selector: f.Selector}
	if f.Netns != "" {
		if ino, err := ParseNetns(f.Netns); err == nil {
			h.Netns = uint64(ino)
		}
	}
	return h
}

// Query is the stream part of f as an agent's /events query (types,
// reasons, CIDRs, port, proto, namespace, pod); see FilterFromQuery.
func (f Filter) Query() url.Values {
	q := url.Values{}
	set := func(k string, v []string) {
		if len(v) > 0 {
			q.Set(k, strings.Join(v, ","))
		}
	}
	set("type", f.Types)
	set("reason", f.Reasons)
	set("cidr", f.CIDRs)
	if f.Port != 0 {
		q.Set("port", strconv.Itoa(int(f.Port)))
	}
	for k, v := range map[string]string{"proto": f.Proto, "netns": f.Netns, "namespace": f.Namespace, "pod": f.Pod} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return q
}

// FilterFromQuery reads an /events query: lists repeated or
// comma-separated, one value for the others (the last one given). netns
// is an inode number only: the agent opens no path a caller names. Errors
// are *FieldError.
func FilterFromQuery(q url.Values) (Filter, error) {
	list := func(k string) []string {
		var out []string
		for _, v := range q[k] {
			for _, s := range strings.Split(v, ",") {
				if s = strings.TrimSpace(s); s != "" {
					out = append(out, s)
				}
			}
		}
		return out
	}
	one := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[len(v)-1]
		}
		return ""
	}
	f := Filter{Types: list("type"), Reasons: list("reason"), CIDRs: list("cidr"),
		Proto: one("proto"), Netns: one("netns"), Namespace: one("namespace"), Pod: one("pod")}
	if p := one("port"); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return f, &FieldError{Field: "port", Value: p, Err: errors.New("not a port number")}
		}
		f.Port = uint16(n)
	}
	if f.Netns != "" {
		if _, err := strconv.ParseUint(f.Netns, 10, 32); err != nil {
			return f, &FieldError{Field: "netns", Value: f.Netns, Err: errors.New("not an inode number (the agent opens no path for a caller: give the number, e.g. from stat -L -c %i /proc/PID/ns/net)")}
		}
	}
	return f, nil
}

func parseCIDR(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.Prefix{}, &FieldError{Field: "cidr", Value: s, Err: errors.New("not an address or CIDR (examples: 10.0.0.7, 10.244.0.0/16, fd00::/64)")}
}

// ParseNetns reads --netns: an inode number, or a namespace file whose
// inode it is (/run/netns/NAME, /proc/PID/ns/net).
func ParseNetns(s string) (uint32, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), nil
	}
	var st unix.Stat_t
	if err := unix.Stat(s, &st); err != nil {
		return 0, &FieldError{Field: "netns", Value: s, Err: fmt.Errorf("neither an inode number nor a readable namespace file: %v", err)}
	}
	return uint32(st.Ino), nil
}

// PodMatcher returns the pod part of f as a predicate, true for every
// event when f names no pods. A Selector is followed by a watch on cfg's
// API server (see podSet); a pod deleted while selected still matches for
// deletedWindow (0: 5 minutes).
func (f Filter) PodMatcher(cfg *rest.Config, deletedWindow time.Duration) (func(*line.Event) bool, error) {
	if !f.HasPods() {
		return func(*line.Event) bool { return true }, nil
	}
	ns, pod := f.Namespace, f.Pod
	if i := strings.IndexByte(pod, '/'); i >= 0 {
		ns, pod = pod[:i], pod[i+1:]
	}
	// Names as Kubernetes allows them, or no pod could ever match.
	if bad := validation.IsDNS1123Label(ns); ns != "" && len(bad) > 0 {
		field := "namespace"
		if f.Namespace == "" {
			field = "pod"
		}
		return nil, &FieldError{Field: field, Value: ns, Err: fmt.Errorf("not a namespace name: %s", strings.Join(bad, "; "))}
	}
	if bad := validation.IsDNS1123Subdomain(pod); pod != "" && len(bad) > 0 {
		return nil, &FieldError{Field: "pod", Value: f.Pod, Err: fmt.Errorf("not a pod name (NAME or NAMESPACE/NAME): %s", strings.Join(bad, "; "))}
	}
	var selected *podSet
	if f.Selector != "" {
		var err error
		if selected, err = selectPods(cfg, f.Selector, ns, deletedWindow); err != nil {
			return nil, err
		}
	}
	one := func(e *k8s.Endpoint) bool {
		if e == nil || e.Kind == "" || (ns != "" && e.Namespace != ns) {
			return false
		}
		if pod != "" && (e.Kind != k8s.KindPod || e.Name != pod) {
			return false
		}
		return selected == nil || (e.Kind == k8s.KindPod && selected.has(e.Namespace, e.Name))
	}
	return func(ev *line.Event) bool {
		return one(ev.SrcK8s) || one(ev.DstK8s) || one(ev.WhereK8s)
	}, nil
}

// podSet is the set of pods a label selector matches, kept current by a
// watch the API server filters, so only matching pods cross the wire. A
// pod deleted while selected (or no longer matching) still matches for
// window (--deleted-window, default 5 minutes), so events about its stale
// IP do; at most podSetMaxDeleted (16,384) such pods are kept, and past
// that the ones deleted first are forgotten first. The live pods are what
// the selector matches in the API server now.
type podSet struct {
	mu      sync.RWMutex
	live    map[string]bool      // "ns/name"
	deleted map[string]time.Time // "ns/name" → when it left the set
	order   []deletedPod         // deletions, oldest first (some since superseded)
	window  time.Duration
	max     int
}

type deletedPod struct {
	key string
	at  time.Time
}

const podSetMaxDeleted = 16384

func newPodSet(window time.Duration, max int) *podSet {
	return &podSet{live: map[string]bool{}, deleted: map[string]time.Time{}, window: window, max: max}
}

func (s *podSet) has(ns, name string) bool {
	k := ns + "/" + name
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.live[k] {
		return true
	}
	at, ok := s.deleted[k]
	return ok && time.Since(at) <= s.window
}

func (s *podSet) add(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.live[key] = true
	delete(s.deleted, key)
}

// remove moves key to the deleted pods, and forgets those deleted more than
// window before now, and the oldest past max.
func (s *podSet) remove(key string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.live, key)
	s.deleted[key] = now
	s.order = append(s.order, deletedPod{key, now})
	n := 0
	for n < len(s.order) && (now.Sub(s.order[n].at) > s.window || len(s.order)-n > s.max) {
		if d := s.order[n]; s.deleted[d.key].Equal(d.at) {
			delete(s.deleted, d.key)
		}
		n++
	}
	s.order = s.order[n:] // the next append that grows it leaves the old array
}

func selectPods(cfg *rest.Config, selector, ns string, window time.Duration) (*podSet, error) {
	sel, err := labels.Parse(selector)
	if err != nil {
		return nil, fmt.Errorf("--selector %q: %v", selector, err)
	}
	if cfg == nil {
		return nil, fmt.Errorf("--selector %q needs a cluster: no kubeconfig found (set --kubeconfig or $KUBECONFIG)", selector)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	if window <= 0 {
		window = 5 * time.Minute // as k8s.Config's default
	}
	set := newPodSet(window, podSetMaxDeleted)
	inf := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(ns),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sel.String() })).Core().V1().Pods().Informer()
	inf.SetTransform(func(obj any) (any, error) { // keep names only
		if p, ok := obj.(*corev1.Pod); ok {
			return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, ResourceVersion: p.ResourceVersion}}, nil
		}
		return obj, nil
	})
	add := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok {
			set.add(p.Namespace + "/" + p.Name)
		}
	}
	remove := func(obj any) {
		switch p := obj.(type) {
		case *corev1.Pod:
			set.remove(p.Namespace+"/"+p.Name, time.Now())
		case cache.DeletedFinalStateUnknown: // its key is "ns/name"
			set.remove(p.Key, time.Now())
		}
	}
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: add, UpdateFunc: func(_, o any) { add(o) }, DeleteFunc: remove})
	go inf.Run(context.Background().Done()) // for the life of the process
	// A short wait for the first list, so the first events are filtered
	// right; never longer, the tracer must not wait on the API server.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cache.WaitForCacheSync(ctx.Done(), inf.HasSynced)
	return set, nil
}

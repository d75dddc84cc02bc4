package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

// identityFlags select the cluster whose pods name the addresses kdrop
// sees, and which pods to show.
type identityFlags struct {
	mode          string
	kubeconfig    string
	context       string
	node          string
	deletedWindow time.Duration
	namespace     string
	pod           string
	selector      string
	rest          *rest.Config // set by the agent, which also needs it for authorization
}

func (f *identityFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.mode, "identity", "auto", "resolve addresses to pods: auto (when a kubeconfig or in-cluster config exists), on, off")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG, else ~/.kube/config, else in-cluster)")
	fl.StringVar(&f.context, "context", "", "kubeconfig context (default: its current context)")
	fl.StringVar(&f.node, "node", "", "this node's name (default $NODE_NAME, else the hostname)")
	fl.DurationVar(&f.deletedWindow, "deleted-window", 5*time.Minute, "how long a deleted pod's IP still resolves to it (and it still matches --selector)")
	fl.StringVarP(&f.namespace, "namespace", "n", "", "only events with a pod of this namespace at either end (or where the kernel acted)")
	fl.StringVar(&f.pod, "pod", "", "only events with this pod (name, or namespace/name) at either end")
	fl.StringVarP(&f.selector, "selector", "l", "", "only events with a pod matching this label selector at either end (e.g. app=api)")
}

// clusterConfigured says whether "auto" finds a cluster to ask.
func (f *identityFlags) clusterConfigured() bool {
	if f.kubeconfig != "" || f.context != "" || os.Getenv("KUBECONFIG") != "" || os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		return true
	}
	home, _ := os.UserHomeDir()
	_, err := os.Stat(filepath.Join(home, ".kube", "config"))
	return err == nil
}

// resolver starts identity resolution, or returns nil when it is off.
func (f *identityFlags) resolver(log *zap.Logger) (*k8s.Resolver, error) {
	switch f.mode {
	case "off":
		if f.namespace != "" || f.pod != "" || f.selector != "" {
			return nil, fmt.Errorf("--namespace, --pod and --selector need pod identity: drop --identity off")
		}
		return nil, nil
	case "auto":
		if !f.clusterConfigured() {
			if f.namespace != "" || f.pod != "" || f.selector != "" {
				return nil, fmt.Errorf("--namespace, --pod and --selector need a cluster: no kubeconfig found (set --kubeconfig or $KUBECONFIG)")
			}
			return nil, nil
		}
	case "on":
	default:
		return nil, fmt.Errorf("--identity %q: use auto, on or off", f.mode)
	}
	return k8s.New(k8s.Config{Kubeconfig: f.kubeconfig, Context: f.context, Node: f.node, DeletedWindow: f.deletedWindow, REST: f.rest}, log)
}

// record is an event with the identity of both ends and of the namespace
// where the kernel acted. The sinks (table, JSON, stream) write records.
type record struct {
	*tracer.Event
	Node            string // node the event was seen on ("" outside a cluster)
	Src, Dst, Where k8s.Endpoint
	identity        bool
}

// enrich fills rec for ev. Lookups never block on the API server.
func enrich(r *k8s.Resolver, node string, ev *tracer.Event, rec *record) {
	*rec = record{Event: ev, Node: node}
	if r == nil {
		return
	}
	rec.identity = true
	if ev.Src.Addr().IsValid() {
		rec.Src = r.LookupIP(ev.Src.Addr(), ev.Src.Port(), ev.Time)
	}
	if ev.Dst.Addr().IsValid() {
		rec.Dst = r.LookupIP(ev.Dst.Addr(), ev.Dst.Port(), ev.Time)
	}
	if ev.Netns != 0 {
		rec.Where = r.LookupNetns(ev.Netns)
	}
}

// appendJSON writes the event's JSON with node and identity added.
func (rec *record) appendJSON(b []byte) []byte {
	b = rec.Event.AppendJSON(b)
	if rec.Node == "" && !rec.identity {
		return b
	}
	b = b[:len(b)-1] // reopen the object
	if rec.Node != "" {
		b = append(b, `,"node":`...)
		b = strconv.AppendQuote(b, rec.Node)
	}
	if rec.identity {
		b = appendEndpoint(b, "src_k8s", &rec.Src)
		b = appendEndpoint(b, "dst_k8s", &rec.Dst)
		b = appendEndpoint(b, "where_k8s", &rec.Where)
	}
	return append(b, '}')
}

func appendEndpoint(b []byte, key string, e *k8s.Endpoint) []byte {
	if e.Kind == "" && !e.Unresolved {
		return b // nothing known, nothing to say
	}
	if key != "" {
		b = append(b, ',', '"')
		b = append(b, key...)
		b = append(b, `":`...)
	}
	b = append(b, '{')
	first := true
	field := func(k string) {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '"')
		b = append(b, k...)
		b = append(b, `":`...)
	}
	str := func(k, v string) {
		if v != "" {
			field(k)
			b = strconv.AppendQuote(b, v)
		}
	}
	flag := func(k string, v bool) {
		if v {
			field(k)
			b = append(b, "true"...)
		}
	}
	str("kind", e.Kind)
	str("namespace", e.Namespace)
	str("name", e.Name)
	str("workload_kind", e.WorkloadKind)
	str("workload_name", e.WorkloadName)
	str("node", e.Node)
	if len(e.Services) > 0 {
		field("services")
		b = append(b, '[')
		for i, s := range e.Services {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendQuote(b, s)
		}
		b = append(b, ']')
	}
	switch e.Kind {
	case k8s.KindPod:
		field("ready")
		b = strconv.AppendBool(b, e.Ready)
	case k8s.KindService:
		field("ready_endpoints")
		b = strconv.AppendInt(b, int64(e.ReadyEndpoints), 10)
	}
	flag("terminating", e.Terminating)
	flag("host_network", e.HostNetwork)
	if e.DeletedAgo != 0 {
		field("deleted_ago_ms")
		b = strconv.AppendInt(b, e.DeletedAgo.Milliseconds(), 10)
	}
	if len(e.Previous) > 0 {
		field("previous")
		b = append(b, '[')
		for i := range e.Previous {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendEndpoint(b, "", &e.Previous[i])
		}
		b = append(b, ']')
	}
	flag("unresolved", e.Unresolved)
	return append(b, '}')
}

// describe is the table's short name for an endpoint: ns/pod, svc ns/name,
// node n1, deleted ns/pod 1.2s ago.
func describe(e *k8s.Endpoint) string {
	var s string
	switch e.Kind {
	case k8s.KindPod:
		s = e.Namespace + "/" + e.Name
		if e.DeletedAgo > 0 {
			s = fmt.Sprintf("deleted %s %s ago", s, roundAgo(e.DeletedAgo))
		}
	case k8s.KindService:
		s = "svc " + e.Namespace + "/" + e.Name
		if e.ReadyEndpoints == 0 {
			s += " (no ready endpoints)"
		}
	case k8s.KindNode:
		s = "node " + e.Name
	}
	if len(e.Previous) > 0 {
		p := e.Previous[0]
		s += fmt.Sprintf(", was %s/%s until %s ago", p.Namespace, p.Name, roundAgo(p.DeletedAgo))
	}
	if e.Unresolved {
		if s == "" {
			s = "?"
		} else {
			s += "?"
		}
	}
	return s
}

func roundAgo(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// tableRow is TableRow with identity after each address and the pod where
// the kernel acted.
func (rec *record) tableRow() string {
	if !rec.identity {
		return rec.Event.TableRow()
	}
	ev := *rec.Event
	row := ev.TableRow()
	var extra []string
	for _, x := range []struct {
		label string
		e     *k8s.Endpoint
	}{{"src", &rec.Src}, {"dst", &rec.Dst}, {"at", &rec.Where}} {
		if d := describe(x.e); d != "" {
			extra = append(extra, x.label+"="+d)
		}
	}
	if len(extra) > 0 {
		row += "  " + strings.Join(extra, " ")
	}
	return row
}

// matcher builds the --namespace / --pod / --selector filter, applied to
// both ends and to the pod where the kernel acted.
func (f *identityFlags) matcher(r *k8s.Resolver) (func(*record) bool, error) {
	if f.namespace == "" && f.pod == "" && f.selector == "" {
		return func(*record) bool { return true }, nil
	}
	ns, pod := f.namespace, f.pod
	if i := strings.IndexByte(pod, '/'); i >= 0 {
		ns, pod = pod[:i], pod[i+1:]
	}
	var selected *podSet
	if f.selector != "" {
		var err error
		if selected, err = f.selectPods(ns); err != nil {
			return nil, err
		}
	}
	one := func(e *k8s.Endpoint) bool {
		if e.Kind == "" || (ns != "" && e.Namespace != ns) {
			return false
		}
		if pod != "" && (e.Kind != k8s.KindPod || e.Name != pod) {
			return false
		}
		return selected == nil || (e.Kind == k8s.KindPod && selected.has(e.Namespace, e.Name))
	}
	return func(rec *record) bool {
		return one(&rec.Src) || one(&rec.Dst) || one(&rec.Where)
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

func (f *identityFlags) selectPods(ns string) (*podSet, error) {
	sel, err := labels.Parse(f.selector)
	if err != nil {
		return nil, fmt.Errorf("--selector %q: %v", f.selector, err)
	}
	cfg := f.rest
	if cfg == nil {
		if cfg, err = f.restConfig(); err != nil {
			return nil, err
		}
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	window := f.deletedWindow
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

// Package k8s resolves what the tracer sees — IP addresses and network
// namespaces — to Kubernetes identity: pods (with workload, node and the
// Services they back), Services, nodes, and recently deleted pods.
//
// Sources. Shared informers (client-go) on Pods, Services, EndpointSlices,
// ReplicaSets, Jobs, Namespaces and NetworkPolicies, all namespaces; see
// ClusterRoleRules for the RBAC. Namespaces (their labels) and
// NetworkPolicies serve NetworkPolicy evaluation (NetworkPolicies,
// NamespaceLabels), not the index.
// Their transforms keep only what identity needs, in compact structs with
// parsed IPs (objects.go), and their lists are decoded as they stream in
// (listdecode.go), so memory stays near the size of what is kept.
//
// Lookups. A builder goroutine turns the informers' contents into an
// immutable index (index.go), published through an atomic.Pointer; changes
// are coalesced (debounce, and at least ten times the last build's duration
// between builds). LookupIP loads the pointer and reads plain maps: no lock,
// no allocation on a hit, never waiting for the API server or a writer.
// LookupService reads the same index by a Service's namespace and name.
//
// Workloads. ReplicaSet → Deployment comes from the ReplicaSet informer, which
// is exact (Argo Rollouts and bare ReplicaSets included) and cheap once
// transformed; when a ReplicaSet is unknown (informer not synced or denied by
// RBAC) the Deployment is inferred from the RS name and the pod-template-hash
// label. Job → CronJob comes from the Job informer.
//
// Deleted pods: see tombstones.go for what is kept and which deletion time.
// Network namespaces: see netns.go. Outages: see health.go.
package k8s

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// Endpoint kinds.
const (
	KindPod     = "pod"
	KindService = "service"
	KindNode    = "node"
)

// Config configures a Resolver.
type Config struct {
	// Kubeconfig and Context follow kubectl: an empty Kubeconfig means
	// $KUBECONFIG, else ~/.kube/config, else — when running in a pod — the
	// in-cluster config; an empty Context means the kubeconfig's current one.
	Kubeconfig, Context string
	// Node is this node's name (default: $NODE_NAME, else the hostname).
	Node string
	// DeletedWindow is how long deleted pods stay resolvable (default 5m).
	DeletedWindow time.Duration
	// ProcRoot is where to find the processes whose network namespaces
	// LookupNetns maps (default "/proc"; it must be the host's /proc:
	// hostPID).
	ProcRoot string
	// REST, if set, is used instead of Kubeconfig and Context.
	REST *rest.Config
}

// Endpoint is what an IP (and port) or a network namespace is.
//
// The slices in an Endpoint returned by a lookup are shared with the
// resolver's index: read them, do not modify them.
type Endpoint struct {
	Kind            string // KindPod, KindService, KindNode, or "" (unresolved/unknown)
	Namespace, Name string
	UID             string // a pod's or Service's UID
	// WorkloadKind and WorkloadName name what runs the pod: Deployment
	// (through its ReplicaSet), CronJob (through its Job), StatefulSet,
	// DaemonSet, or whatever else controls it; empty for a bare pod.
	WorkloadKind, WorkloadName string
	Node                       string
	Services                   []string // "ns/name" of Services whose EndpointSlices include this pod or IP
	Ready, Terminating         bool
	HostNetwork                bool
	// Labels are a pod's labels and NamedPorts its named container ports,
	// what NetworkPolicies select and name; nil for a hostNetwork pod
	// (policies do not apply to it) and for other kinds. Shared with the
	// index: read them, do not modify them.
	Labels     map[string]string
	NamedPorts []NamedPort
	// Probes are a pod's ports the kubelet probes from the node, one per
	// port, sorted by port (ProbeOn finds one); nil for a hostNetwork pod
	// and for other kinds. Shared with the index: read, do not modify.
	Probes []Probe
	// ReadyEndpoints, for a Service: how many ready endpoints its
	// EndpointSlices list (0: kube-proxy rejects or drops its traffic;
	// -1: unknown, from a line that did not say).
	ReadyEndpoints int
	// Unresolved: identity is not (fully) available — the API server is
	// unreachable, access is forbidden, the informers have not synced, or
	// (a netns) no walk of ProcRoot has looked for it yet. Whatever is
	// known from before is still filled in.
	Unresolved bool
	// DeletedAgo > 0: the pod that had this IP was deleted this long
	// before the event time. < 0: it was deleted that long after the event
	// (it still had the IP when the event happened). 0: not deleted.
	DeletedAgo time.Duration
	// Previous lists, when the IP was reused, the older owners still
	// within DeletedWindow, newest first (each with DeletedAgo).
	Previous []Endpoint
}

// Status is the resolver's state.
type Status struct {
	Synced        bool   // the pod, service and EndpointSlice informers completed their initial list
	Healthy       bool   // synced and those informers' last calls succeeded: lookups are not Unresolved
	Condition     string // ConditionOK, ConditionStarting, ConditionUnreachable, ConditionForbidden, ...
	Since         time.Time
	Forbidden     bool // some list or watch is denied by RBAC
	LastError     string
	LastErrorTime time.Time
	Resources     []ResourceStatus

	Pods, Services, EndpointSlices, ReplicaSets, Jobs int // objects in the informers
	IPs                                               int // IPs in the index
	Tombstones                                        int // deleted-pod records
	NetnsCached                                       int // network namespaces in the netns cache
	LastRebuild                                       time.Time
	RebuildDuration                                   time.Duration
}

// Resolver maps IPs and network namespaces to Kubernetes identity.
type Resolver struct {
	cfg    Config
	log    *zap.Logger
	client kubernetes.Interface

	snap   atomic.Pointer[snapshot]
	ready  atomic.Bool // synced and required informers healthy
	synced atomic.Bool
	health *health
	tombs  *tombstones
	netns  *netnsCache
	window time.Duration

	informers                         []*informer
	pods, svcs, slices, rss, jobs     cache.SharedIndexInformer
	nss, netpols                      cache.SharedIndexInformer
	policies                          *policyHistory
	dirty                             chan struct{}
	changes, built                    atomic.Uint64 // markDirty calls; the count the last rebuild covered
	buildMu                           sync.Mutex
	lastBuildDur                      atomic.Int64
	debounce                          time.Duration
	startOnce                         sync.Once
	syncedCh                          chan struct{}
	startedAt                         time.Time
	janitorEvery, minUnsyncedInterval time.Duration
}

type informer struct {
	name     string
	required bool
	inf      cache.SharedIndexInformer
}

// New checks cfg and prepares a Resolver; it does not contact the API server
// (Start does, in the background). Configuration errors — a kubeconfig that
// does not exist or does not parse, an unknown context, no configuration at
// all — are returned.
func New(cfg Config, log *zap.Logger) (*Resolver, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if cfg.DeletedWindow < 0 {
		return nil, fmt.Errorf("k8s: DeletedWindow %v is negative", cfg.DeletedWindow)
	}
	if cfg.DeletedWindow == 0 {
		cfg.DeletedWindow = 5 * time.Minute
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.Node == "" {
		cfg.Node = os.Getenv("NODE_NAME")
	}
	if cfg.Node == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("k8s: no node name: $NODE_NAME is empty and hostname failed: %w", err)
		}
		cfg.Node = h
	}
	restCfg, err := restConfig(cfg)
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("k8s: client for %s: %w", restCfg.Host, err)
	}
	r := newResolver(cfg, log)
	r.client = client
	r.setupInformers()
	return r, nil
}

// newResolver builds a Resolver without a client (unit tests feed it
// snapshots directly).
func newResolver(cfg Config, log *zap.Logger) *Resolver {
	r := &Resolver{
		cfg:                 cfg,
		log:                 log,
		tombs:               newTombstones(cfg.DeletedWindow),
		netns:               newNetnsCache(cfg.ProcRoot, log),
		window:              cfg.DeletedWindow,
		policies:            newPolicyHistory(cfg.DeletedWindow),
		dirty:               make(chan struct{}, 1),
		debounce:            50 * time.Millisecond,
		syncedCh:            make(chan struct{}),
		janitorEvery:        min(max(cfg.DeletedWindow/10, time.Second), 15*time.Second),
		minUnsyncedInterval: time.Second,
	}
	r.health = newHealth(log, r.ready.Store)
	r.snap.Store(emptySnapshot)
	return r
}

// LoadConfig loads the client configuration the way kubectl does: the
// kubeconfig file (default $KUBECONFIG, else ~/.kube/config), else the
// in-cluster one; context "" is the file's current context. Errors say
// which and what to pass.
func LoadConfig(kubeconfig, context string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		if _, err := os.Stat(kubeconfig); err != nil {
			return nil, fmt.Errorf("k8s: kubeconfig %q: %w", kubeconfig, err)
		}
		rules.ExplicitPath = kubeconfig
	}
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: context}).ClientConfig()
	switch {
	case err == nil:
		return rc, nil
	case clientcmd.IsEmptyConfig(err):
		return nil, errors.New("k8s: no kubeconfig ($KUBECONFIG, ~/.kube/config) and not running in a cluster: pass --kubeconfig")
	case context != "":
		return nil, fmt.Errorf("k8s: kubeconfig context %q: %w", context, err)
	}
	return nil, fmt.Errorf("k8s: kubeconfig: %w", err)
}

// ClusterName is the kubeconfig's name for the cluster of context ("":
// the current one); "" when unknown.
func ClusterName(kubeconfig, context string) string {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	raw, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: context}).RawConfig()
	if err != nil {
		return ""
	}
	if context == "" {
		context = raw.CurrentContext
	}
	if c, ok := raw.Contexts[context]; ok {
		return c.Cluster
	}
	return ""
}

// restConfig is the configuration the resolver uses: cfg.REST or
// LoadConfig's, tuned for informers.
func restConfig(cfg Config) (*rest.Config, error) {
	var rc *rest.Config
	if cfg.REST != nil {
		rc = rest.CopyConfig(cfg.REST)
	} else {
		var err error
		if rc, err = LoadConfig(cfg.Kubeconfig, cfg.Context); err != nil {
			return nil, err
		}
	}
	// Protobuf is smaller on the wire and cheaper to decode than JSON: it
	// matters for the initial list of every pod in the cluster.
	rc.ContentType = runtime.ContentTypeProtobuf
	rc.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	if rc.UserAgent == "" {
		rc.UserAgent = "kdrop"
	}
	// Watches are long requests: a client-wide timeout would cut them.
	rc.Timeout = 0
	return rc, nil
}

func (r *Resolver) setupInformers() {
	c := r.client
	dirty := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { r.markDirty() },
		UpdateFunc: func(any, any) { r.markDirty() },
		DeleteFunc: func(any) { r.markDirty() },
	}
	lister := func(k listKind) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
		return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return streamList(ctx, k, o)
		}
	}
	r.pods = r.addInformer("pods", true, &corev1.Pod{}, transformPod,
		lister(listKind{c.CoreV1().RESTClient(), "pods", "PodList",
			func() protoObject { return &corev1.Pod{} }, func() runtime.Object { return &corev1.PodList{} }, transformPod}),
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return c.CoreV1().Pods("").Watch(ctx, o)
		},
		cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) {
				r.markDirty()
				p, _ := obj.(*podInfo)
				r.sandboxUp(nil, p)
			},
			UpdateFunc: func(old, cur any) {
				a, _ := old.(*podInfo)
				b, _ := cur.(*podInfo)
				if a == nil || b == nil || !samePod(a, b) {
					r.markDirty()
				}
				r.sandboxUp(a, b)
				r.ipsReleased(a, b)
			},
			DeleteFunc: r.podDeleted,
		})
	r.svcs = r.addInformer("services", true, &corev1.Service{}, transformService,
		lister(listKind{c.CoreV1().RESTClient(), "services", "ServiceList",
			func() protoObject { return &corev1.Service{} }, func() runtime.Object { return &corev1.ServiceList{} }, transformService}),
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return c.CoreV1().Services("").Watch(ctx, o)
		}, dirty)
	r.slices = r.addInformer("endpointslices", true, &discoveryv1.EndpointSlice{}, transformEndpointSlice,
		lister(listKind{c.DiscoveryV1().RESTClient(), "endpointslices", "EndpointSliceList",
			func() protoObject { return &discoveryv1.EndpointSlice{} }, func() runtime.Object { return &discoveryv1.EndpointSliceList{} }, transformEndpointSlice}),
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return c.DiscoveryV1().EndpointSlices("").Watch(ctx, o)
		}, dirty)
	r.rss = r.addInformer("replicasets", false, &appsv1.ReplicaSet{}, transformReplicaSet,
		lister(listKind{c.AppsV1().RESTClient(), "replicasets", "ReplicaSetList",
			func() protoObject { return &appsv1.ReplicaSet{} }, func() runtime.Object { return &appsv1.ReplicaSetList{} }, transformReplicaSet}),
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return c.AppsV1().ReplicaSets("").Watch(ctx, o)
		}, dirty)
	r.jobs = r.addInformer("jobs", false, &batchv1.Job{}, transformJob,
		lister(listKind{c.BatchV1().RESTClient(), "jobs", "JobList",
			func() protoObject { return &batchv1.Job{} }, func() runtime.Object { return &batchv1.JobList{} }, transformJob}),
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return c.BatchV1().Jobs("").Watch(ctx, o)
		}, dirty)
	// Namespaces and NetworkPolicies do not change the index: they are
	// read at evaluation time (NamespaceLabels, NetworkPolicies).
	r.nss = r.addInformer("namespaces", false, &corev1.Namespace{}, transformNamespace,
		lister(listKind{c.CoreV1().RESTClient(), "namespaces", "NamespaceList",
			func() protoObject { return &corev1.Namespace{} }, func() runtime.Object { return &corev1.NamespaceList{} }, transformNamespace}),
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return c.CoreV1().Namespaces().Watch(ctx, o)
		}, cache.ResourceEventHandlerFuncs{})
	r.netpols = r.addInformer("networkpolicies", false, &networkingv1.NetworkPolicy{}, transformNetworkPolicy,
		lister(listKind{c.NetworkingV1().RESTClient(), "networkpolicies", "NetworkPolicyList",
			func() protoObject { return &networkingv1.NetworkPolicy{} }, func() runtime.Object { return &networkingv1.NetworkPolicyList{} }, transformNetworkPolicy}),
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return c.NetworkingV1().NetworkPolicies("").Watch(ctx, o)
		}, cache.ResourceEventHandlerFuncs{})
	r.policies.reg, _ = r.netpols.AddEventHandler(r.policies.handler())
}

// NetworkPolicies returns every NetworkPolicy of the cluster in force at
// t (zero: now) — as the informer held them then, for a t within the
// deleted-object window (Config.DeletedWindow), else the oldest list kept
// — sorted by namespace/name (name, namespace and spec only; policyTypes
// always set), and a generation that changes whenever a policy is added,
// changed or deleted: a set built from the list stays right for every t
// that gives the same generation. synced is false until the informer's
// first list is in — RBAC may deny networkpolicies, or the API server be
// out of reach — and then no conclusion about isolation may be drawn from
// the list. The policies are shared: read them, do not modify them. It
// never calls the API server.
func (r *Resolver) NetworkPolicies(t time.Time) (list []*networkingv1.NetworkPolicy, generation uint64, synced bool) {
	if r.netpols == nil {
		return nil, 0, false
	}
	return r.policies.at(t, true)
}

// NetworkPolicyGeneration is NetworkPolicies' generation and synced,
// without the list: a cheap check whether a set built before is right.
func (r *Resolver) NetworkPolicyGeneration(t time.Time) (generation uint64, synced bool) {
	if r.netpols == nil {
		return 0, false
	}
	_, generation, synced = r.policies.at(t, false)
	return generation, synced
}

// NamespaceLabels returns namespace ns's labels (shared: do not modify).
// A namespace the informer does not hold (deleted, RBAC denies namespaces,
// not synced yet) gets the one label the API server sets on every
// namespace since Kubernetes 1.21, kubernetes.io/metadata.name=ns, so that
// selectors on it still match. It never calls the API server.
func (r *Resolver) NamespaceLabels(ns string) map[string]string {
	if r.nss != nil {
		if o, ok, _ := r.nss.GetStore().GetByKey(ns); ok {
			if n, isNs := o.(*nsInfo); isNs && n.Labels != nil {
				return n.Labels
			}
		}
	}
	return map[string]string{corev1.LabelMetadataName: ns}
}

// addInformer builds an informer whose list and watch calls report to the
// health tracker. The tracker replaces client-go's default watch error
// handler, which would log every failed retry.
func (r *Resolver) addInformer(name string, required bool, example runtime.Object, transform cache.TransformFunc,
	list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error),
	handler cache.ResourceEventHandler) cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			obj, err := list(ctx, o)
			r.health.report(name, err)
			return obj, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			w, err := watchFn(ctx, o)
			r.health.report(name, err)
			return w, err
		},
	}
	inf := cache.NewSharedIndexInformerWithOptions(lw, example, cache.SharedIndexInformerOptions{ObjectDescription: name})
	// These only fail once the informer has started.
	_ = inf.SetTransform(transform)
	_ = inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		r.health.report(name, err)
	})
	_, _ = inf.AddEventHandler(handler)
	r.health.add(name, required)
	r.informers = append(r.informers, &informer{name: name, required: required, inf: inf})
	return inf
}

// sandboxUp asks for a walk of /proc when a pod of this node gets its IPs
// (cur, previously old, nil if just added): its sandbox, so its netns,
// exists by then, and its first events then find the netns cached.
func (r *Resolver) sandboxUp(old, cur *podInfo) {
	if cur != nil && cur.node == r.cfg.Node && !cur.hostNetwork && len(cur.ips) > 0 &&
		(old == nil || !equalAddrs(old.ips, cur.ips)) {
		r.netns.refresh()
	}
}

// samePod reports whether an update changed nothing identity depends on.
func samePod(a, b *podInfo) bool {
	return a.Name == b.Name && a.Namespace == b.Namespace && a.UID == b.UID &&
		(a.DeletionTimestamp == nil) == (b.DeletionTimestamp == nil) &&
		a.mirrorHash == b.mirrorHash && a.ownerKind == b.ownerKind && a.ownerName == b.ownerName &&
		a.templateHash == b.templateHash && a.node == b.node && a.phase == b.phase &&
		a.ready == b.ready && a.hostNetwork == b.hostNetwork &&
		equalAddrs(a.ips, b.ips) && equalAddrs(a.hostIPs, b.hostIPs) && equalPorts(a.ports, b.ports) &&
		maps.Equal(a.labels, b.labels) && slices.Equal(a.namedPorts, b.namedPorts) && slices.Equal(a.probes, b.probes)
}

func equalAddrs(a, b []netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func equalPorts(a, b []uint16) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Start runs the informers and the index builder until ctx is done. It
// returns at once: lookups answer Unresolved until the initial lists are in,
// and keep answering (Unresolved, with what is known) while the API server
// is unreachable or denies access; the informers retry by themselves.
// Calling Start again does nothing.
func (r *Resolver) Start(ctx context.Context) {
	r.startOnce.Do(func() {
		r.startedAt = time.Now()
		for _, i := range r.informers {
			go i.inf.RunWithContext(ctx)
		}
		go r.builderLoop(ctx)
		go r.janitor(ctx)
		go r.netns.run(ctx)
		go r.waitSync(ctx)
	})
}

// WaitForSync blocks until the initial lists are in and indexed, or ctx is
// done; it reports which.
func (r *Resolver) WaitForSync(ctx context.Context) bool {
	select {
	case <-r.syncedCh:
		return true
	case <-ctx.Done():
		return false
	}
}

// optionalSyncWait bounds the wait for informers that may never sync.
const optionalSyncWait = 5 * time.Second

func (r *Resolver) waitSync(ctx context.Context) {
	var required, optional []cache.InformerSynced
	for _, i := range r.informers {
		if i.required {
			required = append(required, i.inf.HasSynced)
		} else {
			optional = append(optional, i.inf.HasSynced)
		}
	}
	if !cache.WaitForCacheSync(ctx.Done(), required...) {
		return
	}
	// The optional informers (ReplicaSets, Jobs: RBAC may deny them) sync
	// moments after the rest when allowed; a short wait for them keeps the
	// first events' workload names right rather than inferred.
	octx, cancel := context.WithTimeout(ctx, optionalSyncWait)
	cache.WaitForCacheSync(octx.Done(), optional...)
	cancel()
	r.rebuild()
	r.synced.Store(true)
	close(r.syncedCh)
	r.health.setSynced()
	s := r.snap.Load()
	r.log.Info("kubernetes identity synced",
		zap.Duration("took", time.Since(r.startedAt)),
		zap.Int("pods", s.pods), zap.Int("services", s.services),
		zap.Int("endpointslices", s.slices), zap.Int("ips", len(s.ips)))
}

func (r *Resolver) markDirty() {
	r.changes.Add(1)
	select {
	case r.dirty <- struct{}{}:
	default:
	}
}

// builderLoop rebuilds the index after changes. Changes are coalesced: a
// rebuild waits debounce after the first change, and at least ten times the
// last rebuild's duration since the previous one, which bounds the CPU spent
// rebuilding to about 10% however fast the cluster churns. Before the initial
// sync it rebuilds at most once a second (partial data is still "what is
// known").
func (r *Resolver) builderLoop(ctx context.Context) {
	timer := time.NewTimer(0)
	<-timer.C
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.dirty:
		}
		wait := max(r.debounce, 10*time.Duration(r.lastBuildDur.Load()))
		if !r.synced.Load() {
			wait = max(wait, r.minUnsyncedInterval)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		select {
		case <-r.dirty:
		default:
		}
		if r.changes.Load() != r.built.Load() {
			r.rebuild()
		}
	}
}

// rebuild indexes the informers' contents and publishes the result.
func (r *Resolver) rebuild() {
	r.buildMu.Lock()
	defer r.buildMu.Unlock()
	changes := r.changes.Load() // before reading: a change after this triggers another rebuild
	in := buildInput{
		replicaSets: map[nsName]*ownerInfo{},
		jobs:        map[nsName]*ownerInfo{},
	}
	for _, o := range r.pods.GetStore().List() {
		if p, ok := o.(*podInfo); ok {
			in.pods = append(in.pods, p)
		}
	}
	for _, o := range r.svcs.GetStore().List() {
		if s, ok := o.(*svcInfo); ok {
			in.services = append(in.services, s)
		}
	}
	for _, o := range r.slices.GetStore().List() {
		if s, ok := o.(*sliceInfo); ok {
			in.slices = append(in.slices, s)
		}
	}
	for _, o := range r.rss.GetStore().List() {
		if s, ok := o.(*ownerInfo); ok {
			in.replicaSets[nsName{s.Namespace, s.Name}] = s
		}
	}
	for _, o := range r.jobs.GetStore().List() {
		if s, ok := o.(*ownerInfo); ok {
			in.jobs[nsName{s.Namespace, s.Name}] = s
		}
	}
	in.tombs, in.deadUIDs = r.tombs.snapshot()
	s := buildSnapshot(in, time.Now())
	r.snap.Store(s)
	r.lastBuildDur.Store(int64(s.duration))
	r.built.Store(changes)
}

// podDeleted records a deleted pod's identity; see tombstones for the
// deletion time.
func (r *Resolver) podDeleted(obj any) {
	observed := time.Now()
	late := false
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj, late = d.Obj, true
	}
	p, ok := obj.(*podInfo)
	if !ok {
		r.markDirty()
		return
	}
	ep := r.lastEndpoint(p)
	ips := p.ips
	if p.hostNetwork {
		ips = nil // the node's IPs, not the pod's
	}
	r.tombs.add(ep, string(p.UID), ips, deletedAt(p, observed, late))
	r.markDirty()
}

// ipsReleased records the IPs a terminating pod gave up (old had them, cur
// has not) as deleted from now. The kubelet writes status.podIPs from the
// runtime, and containerd reports no IP once the sandbox's netns is closed:
// a pod whose sandbox goes before the kubelet's final delete is seen without
// its IPs for that while, and is deleted without them. Traffic to those IPs
// fails from the moment they were released, so that is when the pod went.
func (r *Resolver) ipsReleased(old, cur *podInfo) {
	if old == nil || cur == nil || cur.DeletionTimestamp == nil || cur.hostNetwork || old.UID != cur.UID {
		return
	}
	var gone []netip.Addr
	for _, ip := range old.ips {
		if !slices.Contains(cur.ips, ip) {
			gone = append(gone, ip)
		}
	}
	if len(gone) == 0 {
		return
	}
	r.tombs.add(r.lastEndpoint(old), "", gone, time.Now()) // by IP only: the pod is still there
	r.markDirty()
}

// lastEndpoint is p's identity with its Services and workload as last
// indexed, or from p and the owners' stores if the index never held it.
func (r *Resolver) lastEndpoint(p *podInfo) Endpoint {
	if cur := r.snap.Load().uids[string(p.UID)]; cur != nil && cur.Name == p.Name && cur.Namespace == p.Namespace {
		return *cur
	}
	return podEndpoint(p, r.ownerIndex(r.rss, p), r.ownerIndex(r.jobs, p))
}

// ownerIndex returns a one-entry index with p's owner from inf's store, for
// resolving the workload of a pod the index never saw.
func (r *Resolver) ownerIndex(inf cache.SharedIndexInformer, p *podInfo) map[nsName]*ownerInfo {
	if inf == nil || p.ownerName == "" {
		return nil
	}
	o, ok, _ := inf.GetStore().GetByKey(p.Namespace + "/" + p.ownerName)
	if oi, isOwner := o.(*ownerInfo); ok && isOwner {
		return map[nsName]*ownerInfo{{p.Namespace, p.ownerName}: oi}
	}
	return nil
}

func (r *Resolver) janitor(ctx context.Context) {
	t := time.NewTicker(r.janitorEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if r.tombs.prune(now) {
				r.markDirty()
			}
		}
	}
}

// LookupIP resolves ip (and port, for hostNetwork pods sharing a node IP)
// at the event time at (zero: now). It takes no lock, never blocks, and
// allocates only to list Previous owners of a reused IP.
//
// An IP of a pod resolves to the pod, a Service IP to the Service, a node IP
// to the node — or, when port is one of a hostNetwork pod's containerPorts
// on that node, to that pod. A freed IP resolves, for DeletedWindow, to the
// pod deleted last with DeletedAgo set; a reused one to its current owner
// with the deleted ones in Previous.
func (r *Resolver) LookupIP(ip netip.Addr, port uint16, at time.Time) (out Endpoint) {
	if ip.Is4In6() {
		ip = ip.Unmap()
	}
	if ip.Zone() != "" {
		ip = ip.WithZone("")
	}
	e := r.snap.Load().ips[ip]
	switch {
	case e == nil:
	case e.ep.Kind != "":
		src := &e.ep
		if port != 0 && len(e.ports) > 0 {
			if p := e.portEndpoint(port); p != nil {
				src = p
			}
		}
		out = *src
		if len(e.dead) > 0 {
			if at.IsZero() {
				at = time.Now()
			}
			out.Previous = r.previous(e.dead, at)
		}
	default:
		// Only deleted pods had this IP.
		if at.IsZero() {
			at = time.Now()
		}
		i := 0
		for i < len(e.dead) && at.Sub(e.dead[i].at) > r.window {
			i++
		}
		if i < len(e.dead) {
			out = e.dead[i].ep
			out.DeletedAgo = ago(at, e.dead[i].at)
			out.Previous = r.previous(e.dead[i+1:], at)
		}
	}
	out.Unresolved = !r.ready.Load()
	return out
}

// LookupService resolves a Service by namespace and name, as kube-proxy's
// rules name it: Kind KindService with its UID and ReadyEndpoints, and
// false when the index holds no such Service (not created, deleted, or the
// informers not synced: then Unresolved is set too). Like LookupIP it reads
// the published index: no lock, no allocation, never the API server; the
// index holds each Service the informer holds, once.
func (r *Resolver) LookupService(namespace, name string) (out Endpoint, ok bool) {
	if e := r.snap.Load().svcs[nsName{namespace, name}]; e != nil {
		out, ok = *e, true
	}
	out.Unresolved = !r.ready.Load()
	return out, ok
}

// previous lists the deleted owners in dead still within the window at the
// event time, newest first, or nil.
func (r *Resolver) previous(dead []tomb, at time.Time) []Endpoint {
	n := 0
	for i := range dead {
		if at.Sub(dead[i].at) <= r.window {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	out := make([]Endpoint, 0, n)
	for i := range dead {
		if at.Sub(dead[i].at) <= r.window {
			ep := dead[i].ep
			ep.DeletedAgo = ago(at, dead[i].at)
			out = append(out, ep)
		}
	}
	return out
}

// ago is DeletedAgo: never 0 for a deleted pod.
func ago(at, deleted time.Time) time.Duration {
	if d := at.Sub(deleted); d != 0 {
		return d
	}
	return 1
}

// LookupNetns resolves a network namespace inode on this node: the host's
// netns is the node (Kind "node"), a pod sandbox's netns is the pod; a netns
// of a pod deleted within DeletedWindow is that pod with DeletedAgo. It
// never walks ProcRoot itself (see netns.go): an inode not seen before asks
// for a walk in the background, at most one a second, and is Unresolved
// until one has run (about 10 ms for 2,000 processes, BenchmarkScanProc). A
// hit takes no lock and does not allocate.
func (r *Resolver) LookupNetns(inode uint32) Endpoint {
	uid, host, known := r.netns.lookup(inode)
	switch {
	case host:
		return Endpoint{Kind: KindNode, Name: r.cfg.Node, Node: r.cfg.Node}
	case !known:
		return Endpoint{Unresolved: true} // not walked for yet
	case uid == "":
		return Endpoint{Unresolved: !r.ready.Load()}
	}
	s := r.snap.Load()
	if ep := s.uids[uid]; ep != nil {
		out := *ep
		out.Unresolved = !r.ready.Load()
		return out
	}
	if t := s.dead[uid]; t != nil {
		out := t.ep
		out.DeletedAgo = ago(time.Now(), t.at)
		out.Unresolved = !r.ready.Load()
		return out
	}
	// A pod's netns, but the pod is not (yet) known.
	return Endpoint{Kind: KindPod, UID: uid, Node: r.cfg.Node, Unresolved: true}
}

// Status reports whether the resolver is synced and healthy, the last API
// error, and counts.
func (r *Resolver) Status() Status {
	st := Status{Synced: r.synced.Load(), Healthy: r.ready.Load()}
	r.health.status(&st)
	for i := range st.Resources {
		for _, inf := range r.informers {
			if inf.name == st.Resources[i].Resource {
				st.Resources[i].Synced = inf.inf.HasSynced()
			}
		}
	}
	count := func(inf cache.SharedIndexInformer) int {
		if inf == nil {
			return 0
		}
		return len(inf.GetStore().ListKeys())
	}
	st.Pods, st.Services, st.EndpointSlices = count(r.pods), count(r.svcs), count(r.slices)
	st.ReplicaSets, st.Jobs = count(r.rss), count(r.jobs)
	s := r.snap.Load()
	st.IPs = len(s.ips)
	st.LastRebuild, st.RebuildDuration = s.built, s.duration
	st.Tombstones = r.tombs.len()
	st.NetnsCached = len(r.netns.cur.Load().pods)
	return st
}

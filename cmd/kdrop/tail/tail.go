// Package tail is the client of the agents' /events streams: it finds the
// agents (the DaemonSet's pods), follows each one's stream through the API
// server's pod proxy with a stream token of that node (never the user's own
// credentials), reconnecting, merges the nodes' lines in time order, and
// says which windows of which node it did not see (gap notices).
package tail

import (
	"bufio"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/stream"
)

// Agents say where the agents are and how to reach them.
type Agents struct {
	Namespace string // of the agent pods
	Selector  string // label selector of the agent pods
	Port      int    // their --stream-listen port
	// Account names the service account whose stream tokens the agents
	// take (in Namespace; their --stream-account).
	Account string
	Delay   time.Duration // how long lines are held to put the nodes' streams in time order
	// IdleTimeout is how long a stream may stay silent before it counts as
	// lost (0: DefaultIdleTimeout).
	IdleTimeout time.Duration
}

// Line is one line of an agent's stream (or of the tail itself), with what
// ordering needs.
type Line struct {
	At     time.Time
	seq    uint64
	Kind   line.Kind
	Lost   uint64 // of a "lost" notice
	Missed uint64 // of a "missed" notice
	Raw    []byte // the line as the agent wrote it, without newline
}

type lineHeap []Line

func (h lineHeap) Len() int { return len(h) }
func (h lineHeap) Less(i, j int) bool {
	if !h[i].At.Equal(h[j].At) {
		return h[i].At.Before(h[j].At)
	}
	return h[i].seq < h[j].seq
}
func (h lineHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *lineHeap) Push(x any)   { *h = append(*h, x.(Line)) }
func (h *lineHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// New returns a tailer of the agents cs finds, asking each for query (an
// /events query, see enrich.Filter.Query). Nothing is contacted yet.
func New(cs kubernetes.Interface, agents Agents, query url.Values) *Tailer {
	t := &Tailer{agents: agents, cs: cs, query: query, lines: make(chan Line, 4096),
		maxHeld: MaxHeld, stderr: os.Stderr,
		streams: map[string]context.CancelFunc{}, down: map[string]time.Time{}, tokens: map[string]streamToken{}}
	t.open = t.openProxied
	return t
}

// Tailer follows every agent.
type Tailer struct {
	agents Agents
	cs     kubernetes.Interface
	query  url.Values
	lines  chan Line
	seq    uint64
	// maxHeld bounds the lines merge holds (tailMaxHeld); stderr is where
	// it says when that bound is hit.
	maxHeld int
	stderr  io.Writer
	mu      sync.Mutex
	// streams by agent pod name; a pod that goes away has its stream ended
	streams map[string]context.CancelFunc
	// down: nodes whose stream was lost, since when. Kept by node, not by
	// pod, so an agent pod replaced by a new one still closes the gap.
	down map[string]time.Time
	// open opens the stream of an agent pod on node (openProxied; tests
	// reach agents directly).
	open func(ctx context.Context, pod, node string) (io.ReadCloser, error)
	// tokens: the stream token of each node, reused until near its expiry
	tokens  map[string]streamToken
	reached bool // some stream connected
	// OnConnect, if set, is called (under a lock: it must not call the
	// Tailer) each time a node's stream connects.
	OnConnect func(node string)
}

// notice sends a line about the tail itself; gap notices also carry the
// window whose events were not seen.
func (t *Tailer) notice(node, msg string, gap ...time.Time) {
	now := time.Now().UTC()
	t.lines <- Line{At: now, Kind: line.KindNotice, Raw: NoticeLine(now, node, msg, gap...)}
}

// NoticeLine is a notice line; with gap, it carries the window [from, to]
// whose events on node were not seen.
func NoticeLine(at time.Time, node, msg string, gap ...time.Time) []byte {
	n := line.Notice{Time: at, Type: line.NoticeMessage, Node: node, Message: msg}
	if len(gap) == 2 {
		n.GapFrom, n.GapTo = gap[0], gap[1]
	}
	return line.AppendNotice(nil, &n)
}

// streamLost marks node's stream as lost (once per outage) and says so.
func (t *Tailer) streamLost(node, msg string) {
	if t.markDown(node) {
		t.notice(node, msg)
	}
}

// markDown marks node's stream as lost, and reports whether it was up.
func (t *Tailer) markDown(node string) bool { return t.markDownSince(node, time.Time{}) }

// markDownSince is markDown with the time the stream last delivered
// anything (zero: now): what came after it was not seen.
func (t *Tailer) markDownSince(node string, since time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, already := t.down[node]; already {
		return false
	}
	if since.IsZero() {
		since = time.Now()
	}
	t.down[node] = since.UTC()
	return true
}

// Reached says whether any agent's stream connected.
func (t *Tailer) Reached() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.reached
}

// connected closes node's gap, if it had one, and says what was missed.
func (t *Tailer) connected(node, pod string) {
	t.mu.Lock()
	t.reached = true
	since, was := t.down[node]
	delete(t.down, node)
	if t.OnConnect != nil {
		t.OnConnect(node)
	}
	t.mu.Unlock()
	if was {
		now := time.Now().UTC()
		t.notice(node, fmt.Sprintf("connected to agent %s: events on node %s between %s and %s were not seen", pod, node,
			since.Format(time.RFC3339), now.Format(time.RFC3339)), since, now)
	}
}

// Run discovers the agents and streams their lines to emit, in time
// order, in batches, until ctx is done.
func (t *Tailer) Run(ctx context.Context, emit func([]Line)) {
	dctx, stopDiscover := context.WithCancel(ctx)
	defer stopDiscover()
	go t.discover(dctx)
	t.merge(ctx, emit)
}

// discover keeps one stream per running agent pod, following the agent
// pods with a watch (an informer on their label selector).
func (t *Tailer) discover(ctx context.Context) {
	inf := informers.NewSharedInformerFactoryWithOptions(t.cs, 0, informers.WithNamespace(t.agents.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = t.agents.Selector })).Core().V1().Pods().Informer()
	inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
		if ctx.Err() == nil {
			t.notice("", "cannot list or watch the agents: "+err.Error())
		}
	})
	nodeOf := map[string]string{} // agent pod → node, of the streams started; under t.mu
	update := func(obj any) {
		p, ok := obj.(*corev1.Pod)
		if !ok {
			return
		}
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || p.DeletionTimestamp != nil {
			t.gone(p.Name, nodeOf)
			return
		}
		t.mu.Lock()
		defer t.mu.Unlock()
		if _, ok := t.streams[p.Name]; !ok {
			sctx, cancel := context.WithCancel(ctx)
			t.streams[p.Name] = cancel
			nodeOf[p.Name] = p.Spec.NodeName
			go t.stream(sctx, p.Name, p.Spec.NodeName)
		}
	}
	remove := func(obj any) {
		switch p := obj.(type) {
		case *corev1.Pod:
			t.gone(p.Name, nodeOf)
		case cache.DeletedFinalStateUnknown: // its key is "namespace/name"
			t.gone(p.Key[strings.IndexByte(p.Key, '/')+1:], nodeOf)
		}
	}
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: update, UpdateFunc: func(_, o any) { update(o) }, DeleteFunc: remove})
	go inf.Run(ctx.Done())
	if cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) && len(inf.GetStore().List()) == 0 {
		t.notice("", fmt.Sprintf("no agent pods in namespace %s with labels %s yet (is kdrop deployed? see --agents-namespace, --agents-selector)", t.agents.Namespace, t.agents.Selector))
	}
	<-ctx.Done()
}

// gone ends the stream of an agent pod that was deleted or stopped running,
// and says so.
func (t *Tailer) gone(pod string, nodeOf map[string]string) {
	t.mu.Lock()
	cancel, ok := t.streams[pod]
	node := nodeOf[pod]
	if ok {
		cancel()
		delete(t.streams, pod)
		delete(nodeOf, pod)
	}
	t.mu.Unlock()
	if ok {
		t.streamLost(node, fmt.Sprintf("agent %s on node %s went away (deleted, or no longer running)", pod, node))
	}
}

// stream follows one agent through the pod proxy, reconnecting.
func (t *Tailer) stream(ctx context.Context, pod, node string) {
	backoff := 500 * time.Millisecond
	refused := "" // the agent's refusal last shown, not repeated at each retry
	for ctx.Err() == nil {
		body, err := t.open(ctx, pod, node)
		var last time.Time // when the stream last delivered anything
		if err == nil {
			t.connected(node, pod)
			last, err = t.readLive(body, pod, node)
			body.Close()
			backoff = 500 * time.Millisecond
			refused = ""
		}
		if ctx.Err() != nil {
			return
		}
		if err == nil && t.tokenExpired(node) {
			// The agent ends a stream when its token expires: at once
			// again, with a new token, the gap said as any other.
			t.markDownSince(node, last)
			t.notice(node, fmt.Sprintf("stream from agent %s on node %s ended as its token expired; reconnecting with a new one", pod, node))
			continue
		}
		wait := backoff
		if s, ok := apierrors.SuggestsClientDelay(err); ok { // Retry-After
			wait = max(wait, time.Duration(s)*time.Second)
		}
		if why := refusal(err); why != "" {
			if t.markDown(node) || why != refused {
				t.notice(node, fmt.Sprintf("agent %s on node %s refused the stream: %s (retrying in %v)", pod, node, why, wait))
			}
			refused = why
		} else {
			if t.markDownSince(node, last) {
				t.notice(node, fmt.Sprintf("stream from agent %s on node %s lost (%v); reconnecting", pod, node, errOrEOF(err)))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// openProxied opens pod's /events stream (HTTPS) through the API server's
// pod proxy, with a stream token of node in stream.TokenHeader.
func (t *Tailer) openProxied(ctx context.Context, pod, node string) (io.ReadCloser, error) {
	token, err := t.token(ctx, node)
	if err != nil {
		return nil, err
	}
	req := t.cs.CoreV1().RESTClient().Get().Namespace(t.agents.Namespace).Resource("pods").
		Name(fmt.Sprintf("https:%s:%d", pod, t.agents.Port)).SubResource("proxy").Suffix("events").
		SetHeader(stream.TokenHeader, "Bearer "+token).
		MaxRetries(0) // a refusal's Retry-After is waited for in stream, where it is shown
	for k, v := range t.query {
		req = req.Param(k, v[0])
	}
	return req.Stream(ctx)
}

type streamToken struct {
	token   string
	expires time.Time
}

// token is a stream token for node, from the cache while it has more than
// a third of its life left, else a new one from the API server.
func (t *Tailer) token(ctx context.Context, node string) (string, error) {
	t.mu.Lock()
	c, ok := t.tokens[node]
	t.mu.Unlock()
	if ok && time.Until(c.expires) > stream.TokenLifetime/3 {
		return c.token, nil
	}
	acct := stream.Account{Namespace: t.agents.Namespace, Name: t.agents.Account}
	tok, exp, err := stream.RequestToken(ctx, t.cs, acct, node)
	if err != nil {
		if apierrors.IsForbidden(err) {
			return "", fmt.Errorf("you may not open kdrop streams: %w (%s)", err, ViewerHint(t.agents.Namespace))
		}
		return "", fmt.Errorf("asking the API server for a stream token of %s bound to node %s: %w", acct, node, err)
	}
	t.mu.Lock()
	t.tokens[node] = streamToken{tok, exp}
	t.mu.Unlock()
	return tok, nil
}

// tokenExpired says whether node's stream token has (about) expired.
func (t *Tailer) tokenExpired(node string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, ok := t.tokens[node]
	return ok && time.Until(c.expires) < 2*time.Second
}

// ViewerHint says how to grant the stream in namespace ns.
func ViewerHint(ns string) string {
	return fmt.Sprintf("bind ClusterRole kdrop-viewer in namespace %s: kubectl create rolebinding kdrop-viewer-$USER -n %s --clusterrole=kdrop-viewer --user=<you>", ns, ns)
}

// refusal is an agent's own words when it refuses a stream for now (503,
// e.g. too many streams: what limit, which flag raises it), as it sent
// them; "" for other errors.
func refusal(err error) string {
	var se *apierrors.StatusError
	if !errors.As(err, &se) || se.ErrStatus.Code != http.StatusServiceUnavailable || se.ErrStatus.Details == nil {
		return ""
	}
	for _, c := range se.ErrStatus.Details.Causes {
		// where client-go puts a body that is not a Status
		if c.Type == metav1.CauseTypeUnexpectedServerResponse && c.Message != "" && c.Message != "unknown" {
			return c.Message
		}
	}
	return ""
}

func errOrEOF(err error) error {
	if err == nil {
		return io.EOF
	}
	return err
}

// readLive reads body until it ends or stays silent for the idle timeout
// (a few heartbeats): a half-open connection is a lost stream, not a quiet
// node. It returns when the stream last delivered anything.
func (t *Tailer) readLive(body io.ReadCloser, pod, node string) (time.Time, error) {
	idle := t.agents.IdleTimeout
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	var silent atomic.Bool
	timer := time.AfterFunc(idle, func() { silent.Store(true); body.Close() })
	defer timer.Stop()
	last := time.Now()
	err := t.read(&resetReader{r: body, reset: func() { last = time.Now(); timer.Reset(idle) }}, pod, node)
	if silent.Load() {
		return last, fmt.Errorf("no line, not even a heartbeat, for %v", idle)
	}
	return last, err
}

// DefaultIdleTimeout is how long a stream may stay silent: three of the
// agent's 15 s heartbeats.
const DefaultIdleTimeout = 45 * time.Second

// resetReader calls reset whenever data arrives.
type resetReader struct {
	r     io.Reader
	reset func()
}

func (r *resetReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.reset()
	}
	return n, err
}

// read passes body's lines on. A line naming another node than the
// agent's is left out (said once): an agent speaks for its own node only.
func (t *Tailer) read(body io.Reader, pod, node string) error {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var d line.Decoder
	var l line.Line
	foreign := false
	for sc.Scan() {
		// A line this kdrop cannot read in full (from a newer agent, say)
		// is still passed on, as it came, if it has a time to order it by.
		if d.Decode(sc.Bytes(), &l) != nil && l.Time.IsZero() {
			continue
		}
		if l.Type == line.NoticeHello || l.Type == line.NoticeHeartbeat {
			continue
		}
		if n := lineNode(&l); n != "" && n != node {
			if !foreign {
				foreign = true
				t.notice(node, fmt.Sprintf("agent %s on node %s sent lines naming node %q: lines naming another node are left out", pod, node, n))
			}
			continue
		}
		t.lines <- Line{At: l.Time, Kind: l.Kind, Lost: l.Notice.Lost, Missed: l.Notice.Missed, Raw: append([]byte(nil), sc.Bytes()...)}
	}
	return sc.Err()
}

// lineNode is the node a line says it is from.
func lineNode(l *line.Line) string {
	switch l.Kind {
	case line.KindEvent:
		return l.Event.Node
	case line.KindNotice:
		return l.Notice.Node
	}
	return ""
}

// MaxHeld bounds the lines merge holds: past it, the oldest are let go
// before their merge delay is up, and the order may then be approximate.
const MaxHeld = 50000

// merge holds lines for the merge delay, so the nodes' streams come out in
// time order, and passes them to emit. It holds at most maxHeld lines: past
// that, it lets the oldest go early (down to 7/8 of it, in one batch) and
// says once on stderr that the order may be approximate.
func (t *Tailer) merge(ctx context.Context, emit func([]Line)) {
	var h lineHeap
	var batch []Line
	warned := false
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	// release passes on, oldest first, the lines older than cut and any
	// beyond the keep oldest-last.
	release := func(cut time.Time, keep int) {
		batch = batch[:0]
		for h.Len() > 0 && (h[0].At.Before(cut) || h.Len() > keep) {
			batch = append(batch, heap.Pop(&h).(Line))
		}
		if len(batch) > 0 {
			emit(batch)
		}
	}
	push := func(l Line) {
		t.seq++
		l.seq = t.seq
		heap.Push(&h, l)
		if h.Len() > t.maxHeld {
			if !warned {
				fmt.Fprintf(t.stderr, "kdrop: more than %d lines held for --merge-delay %v: letting the oldest go early, so lines may be out of time order from now on\n", t.maxHeld, t.agents.Delay)
				warned = true
			}
			release(time.Time{}, t.maxHeld*7/8)
		}
	}
	for {
		select {
		case <-ctx.Done():
			for len(t.lines) > 0 {
				push(<-t.lines)
			}
			release(time.Time{}, 0)
			return
		case l := <-t.lines:
			push(l)
		case <-tick.C:
			release(time.Now().Add(-t.agents.Delay), t.maxHeld)
		}
	}
}

// OpenGaps lists the nodes whose stream is down now, and since when.
func (t *Tailer) OpenGaps() map[string]time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]time.Time, len(t.down))
	for n, at := range t.down {
		out[n] = at
	}
	return out
}

// Nodes lists the nodes that run an agent now, with their kernels as the
// nodes report them (for a recording's header).
func (t *Tailer) Nodes(ctx context.Context) ([]line.Node, error) {
	pods, err := t.cs.CoreV1().Pods(t.agents.Namespace).List(ctx, metav1.ListOptions{LabelSelector: t.agents.Selector})
	if err != nil {
		return nil, fmt.Errorf("listing the agents in namespace %s: %w", t.agents.Namespace, err)
	}
	var nodes []line.Node
	seen := map[string]bool{}
	for _, p := range pods.Items {
		n := p.Spec.NodeName
		if n == "" || seen[n] {
			continue
		}
		seen[n] = true
		kernel := ""
		if node, err := t.cs.CoreV1().Nodes().Get(ctx, n, metav1.GetOptions{}); err == nil {
			kernel = node.Status.NodeInfo.KernelVersion
		}
		nodes = append(nodes, line.Node{Name: n, Kernel: kernel})
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
	return nodes, nil
}

// WhenStreaming calls fn once every node in nodes has had its stream
// connected (at once if nodes is empty). It sets OnConnect: call it before
// Run.
func (t *Tailer) WhenStreaming(nodes []line.Node, fn func()) {
	pending := map[string]bool{}
	for _, n := range nodes {
		pending[n.Name] = true
	}
	if len(pending) == 0 {
		fn()
		return
	}
	t.OnConnect = func(node string) { // under t.mu
		if len(pending) > 0 {
			delete(pending, node)
			if len(pending) == 0 {
				fn()
			}
		}
	}
}

// CheckAccess asks the API server (SelfSubjectAccessReviews) whether the
// caller may do what tail does in the agents' namespace: find the agents,
// ask for stream tokens, reach the agents through the pod proxy. It
// returns an error naming what is missing, with the fix; nil if all is
// allowed or the API server could not say (the streams then tell).
func (t *Tailer) CheckAccess(ctx context.Context) error {
	ns := t.agents.Namespace
	var missing []string
	for _, ra := range []authzv1.ResourceAttributes{
		{Namespace: ns, Verb: "list", Resource: "pods"},
		{Namespace: ns, Verb: "watch", Resource: "pods"},
		{Namespace: ns, Verb: "create", Resource: "serviceaccounts", Subresource: "token", Name: t.agents.Account},
		{Namespace: ns, Verb: "get", Resource: "pods", Subresource: "proxy"},
	} {
		r, err := t.cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx,
			&authzv1.SelfSubjectAccessReview{Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &ra}}, metav1.CreateOptions{})
		if err != nil {
			return nil
		}
		if !r.Status.Allowed {
			what := ra.Verb + " " + ra.Resource
			if ra.Subresource != "" {
				what += "/" + ra.Subresource
			}
			if ra.Name != "" {
				what += " " + ra.Name
			}
			missing = append(missing, what)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("you may not read kdrop's stream: the API server says you may not %s in namespace %s; %s",
			strings.Join(missing, ", "), ns, ViewerHint(ns))
	}
	return nil
}

package main

import (
	"bufio"
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kdrop/kdrop/cmd/kdrop/report"
	"github.com/kdrop/kdrop/k8s"
)

type tailFlags struct {
	watchFlags
	agents streamFlags
}

// streamFlags say where the agents are and how to reach them; tail and
// record --from tail share them.
type streamFlags struct {
	namespace string
	selector  string
	port      int
	token     string
	delay     time.Duration
}

func (s *streamFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&s.namespace, "agents-namespace", "kdrop", "namespace of the kdrop agents")
	fl.StringVar(&s.selector, "agents-selector", "app.kubernetes.io/name=kdrop", "label selector of the agent pods")
	fl.IntVar(&s.port, "agent-port", 9965, "the agents' --listen port")
	fl.StringVar(&s.token, "token", "", "bearer token for the agents (default: your kubeconfig's)")
	fl.DurationVar(&s.delay, "merge-delay", time.Second, "how long to hold events to put the nodes' streams in time order")
}

func tailCmd() *cobra.Command {
	var f tailFlags
	cmd := &cobra.Command{
		Use:   "tail",
		Short: "Follow the events of every kdrop agent in the cluster, merged in time order",
		Long: `Tail finds the kdrop agents (the DaemonSet's pods), connects to each one's
/events stream through the API server's pod proxy with your own credentials,
and prints one stream for the whole cluster in time order, with the node and
pod identity of every event. It keeps going when an agent restarts or a node
joins or leaves, and says what it could not see meanwhile.

You need "get" on pods/proxy and "list,watch" on pods in the agents'
namespace, and "get" on events in API group kdrop.dev there (ClusterRole
kdrop-viewer, bound with a RoleBinding in the agents' namespace or a
ClusterRoleBinding). The agents check a bearer token: the one of your
kubeconfig, or --token (e.g. from "kubectl create token").

Installed as kubectl-kdrop on your PATH (make install does it), this is
"kubectl kdrop tail".`,
		Example: `  kubectl kdrop tail
  kdrop tail -o json --type overflow
  kdrop tail -n web --reason NO_SOCKET,NETFILTER_DROP
  kdrop record --from tail -o incident.jsonl.gz --duration 10m   # keep it for the ticket`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runTail(cmd.Context(), f) },
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.output, "output", "o", "table", "output format: table or json")
	fl.DurationVarP(&f.duration, "duration", "d", 0, "stop after this long; 0 runs until interrupted")
	fl.Uint64VarP(&f.count, "count", "c", 0, "stop after this many events; 0 for no limit")
	f.registerStreamFilters(fl)
	fl.StringVar(&f.id.kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG, else ~/.kube/config)")
	fl.StringVar(&f.id.context, "context", "", "kubeconfig context")
	f.agents.register(fl)
	return cmd
}

// registerStreamFilters adds the filters an agent's stream applies for its
// caller: a subset of watch's (the agent's attach modes, rate limit and
// benign reasons are its own).
func (f *watchFlags) registerStreamFilters(fl *pflag.FlagSet) {
	fl.StringSliceVarP(&f.types, "type", "t", nil, "event types: drop, overflow, unreach (default all)")
	fl.StringSliceVarP(&f.reasons, "reason", "r", nil, "drop reasons, e.g. NO_SOCKET,NETFILTER_DROP")
	fl.StringSliceVar(&f.cidrs, "cidr", nil, "only packets with either end in this address or CIDR")
	fl.Uint16VarP(&f.port, "port", "p", 0, "only packets with either port equal to this")
	fl.StringVar(&f.proto, "proto", "", "only this IP protocol")
	fl.StringVarP(&f.id.namespace, "namespace", "n", "", "only events with a pod of this namespace at either end")
	fl.StringVar(&f.id.pod, "pod", "", "only events with this pod (name or namespace/name) at either end")
}

// tailLine is one line of an agent's stream, with what ordering needs.
type tailLine struct {
	at   time.Time
	seq  uint64
	typ  string // drop, overflow, unreach, lost, missed or notice
	lost uint64 // of a "lost" line
	miss uint64 // of a "missed" line
	line []byte
}

type lineHeap []tailLine

func (h lineHeap) Len() int { return len(h) }
func (h lineHeap) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].seq < h[j].seq
}
func (h lineHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *lineHeap) Push(x any)   { *h = append(*h, x.(tailLine)) }
func (h *lineHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// streamQuery turns the stream filters into an agent's /events query,
// checked here first so a typo fails at once rather than once per agent.
func (f *watchFlags) streamQuery() (url.Values, error) {
	if _, err := f.options(nil); err != nil {
		return nil, err
	}
	q := url.Values{}
	set := func(k string, v []string) {
		if len(v) > 0 {
			q.Set(k, strings.Join(v, ","))
		}
	}
	set("type", f.types)
	set("reason", f.reasons)
	set("cidr", f.cidrs)
	if f.port != 0 {
		q.Set("port", strconv.Itoa(int(f.port)))
	}
	for k, v := range map[string]string{"proto": f.proto, "namespace": f.id.namespace, "pod": f.id.pod} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return q, nil
}

func runTail(parent context.Context, f tailFlags) error {
	t, err := newTailer(f.watchFlags, f.agents)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := withDuration(ctx, f.duration)
	defer cancel()

	out := bufio.NewWriterSize(os.Stdout, 64<<10)
	defer out.Flush()
	if f.output == "table" {
		fmt.Fprintln(out, "NODE        "+tableHeaderRest)
	}
	var printed uint64
	t.run(ctx, func(lines []tailLine) {
		for _, l := range lines {
			if f.count > 0 && printed >= f.count {
				break
			}
			if f.output == "json" {
				out.Write(append(l.line, '\n'))
			} else {
				fmt.Fprintln(out, tableFromJSON(l.line))
			}
			printed++
		}
		out.Flush()
		if f.count > 0 && printed >= f.count {
			cancel()
		}
	})
	return nil
}

// newTailer checks the filters and credentials; nothing is contacted yet.
func newTailer(f watchFlags, agents streamFlags) (*tailer, error) {
	q, err := f.streamQuery()
	if err != nil {
		return nil, err
	}
	cfg, err := f.id.restConfig()
	if err != nil {
		return nil, err
	}
	token := agents.token
	if token == "" {
		token = cfg.BearerToken
	}
	if token == "" && cfg.BearerTokenFile != "" {
		b, err := os.ReadFile(cfg.BearerTokenFile)
		if err != nil {
			return nil, err
		}
		token = strings.TrimSpace(string(b))
	}
	if token == "" {
		return nil, fmt.Errorf("the agents check a bearer token, and your kubeconfig has none (client certificate?): pass --token, e.g. --token $(kubectl create token <serviceaccount>)")
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &tailer{agents: agents, cs: cs, cfg: cfg, token: token, query: q, lines: make(chan tailLine, 4096),
		maxHeld: tailMaxHeld, stderr: os.Stderr,
		streams: map[string]context.CancelFunc{}, down: map[string]time.Time{}}, nil
}

type tailer struct {
	agents streamFlags
	cs     kubernetes.Interface
	cfg    *rest.Config
	token  string
	query  url.Values
	lines  chan tailLine
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
	// onConnect, if set, is called (under mu) each time a node's stream
	// connects.
	onConnect func(node string)
}

// notice sends a line about the tail itself; gap notices also carry the
// window whose events were not seen.
func (t *tailer) notice(node, msg string, gap ...time.Time) {
	now := time.Now().UTC()
	t.lines <- tailLine{at: now, typ: "notice", line: noticeJSON(now, node, msg, gap...)}
}

// noticeJSON is a notice line; a gap notice carries the window [from, to]
// whose events were not seen.
func noticeJSON(at time.Time, node, msg string, gap ...time.Time) []byte {
	line := fmt.Appendf(nil, `{"time":%q,"type":"notice","node":%q,"message":%q`, at.Format(time.RFC3339Nano), node, msg)
	if len(gap) == 2 {
		line = fmt.Appendf(line, `,"gap_from":%q,"gap_to":%q`, gap[0].Format(time.RFC3339Nano), gap[1].Format(time.RFC3339Nano))
	}
	return append(line, '}')
}

// lost marks node's stream as lost (once per outage) and says so.
func (t *tailer) lost(node, msg string) {
	if t.markDown(node) {
		t.notice(node, msg)
	}
}

// markDown marks node's stream as lost, and reports whether it was up.
func (t *tailer) markDown(node string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, already := t.down[node]; already {
		return false
	}
	t.down[node] = time.Now().UTC()
	return true
}

// connected closes node's gap, if it had one, and says what was missed.
func (t *tailer) connected(node, pod string) {
	t.mu.Lock()
	since, was := t.down[node]
	delete(t.down, node)
	if t.onConnect != nil {
		t.onConnect(node)
	}
	t.mu.Unlock()
	if was {
		now := time.Now().UTC()
		t.notice(node, fmt.Sprintf("connected to agent %s: events on node %s between %s and %s were not seen", pod, node,
			since.Format(time.RFC3339), now.Format(time.RFC3339)), since, now)
	}
}

// run discovers the agents and streams their events to emit, in time
// order, in batches, until ctx is done; then it says which nodes are still
// unseen.
func (t *tailer) run(ctx context.Context, emit func([]tailLine)) {
	dctx, stopDiscover := context.WithCancel(ctx)
	defer stopDiscover()
	go t.discover(dctx)
	t.merge(ctx, emit)
}

// discover keeps one stream per running agent pod, every few seconds.
func (t *tailer) discover(ctx context.Context) {
	nodeOf := map[string]string{}
	for {
		pods, err := t.cs.CoreV1().Pods(t.agents.namespace).List(ctx, metav1.ListOptions{LabelSelector: t.agents.selector})
		if err != nil && ctx.Err() == nil {
			t.notice("", "cannot list the agents: "+err.Error())
		}
		if err == nil && len(pods.Items) == 0 && len(nodeOf) == 0 {
			t.notice("", fmt.Sprintf("no agent pods in namespace %s with labels %s yet (is kdrop deployed? see --agents-namespace, --agents-selector)", t.agents.namespace, t.agents.selector))
		}
		seen := map[string]bool{}
		if pods != nil {
			for i := range pods.Items {
				p := &pods.Items[i]
				if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || p.DeletionTimestamp != nil {
					continue
				}
				seen[p.Name] = true
				t.mu.Lock()
				if _, ok := t.streams[p.Name]; !ok {
					sctx, cancel := context.WithCancel(ctx)
					t.streams[p.Name] = cancel
					nodeOf[p.Name] = p.Spec.NodeName
					go t.stream(sctx, p.Name, p.Spec.NodeName)
				}
				t.mu.Unlock()
			}
		}
		var gone []string
		t.mu.Lock()
		for name, cancel := range t.streams {
			if !seen[name] {
				cancel()
				delete(t.streams, name)
				gone = append(gone, name)
			}
		}
		t.mu.Unlock()
		for _, name := range gone {
			t.lost(nodeOf[name], fmt.Sprintf("agent %s on node %s went away (deleted, or no longer running)", name, nodeOf[name]))
			delete(nodeOf, name)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

// stream follows one agent through the pod proxy, reconnecting.
func (t *tailer) stream(ctx context.Context, pod, node string) {
	backoff := 500 * time.Millisecond
	refused := "" // the agent's refusal last shown, not repeated at each retry
	for ctx.Err() == nil {
		req := t.cs.CoreV1().RESTClient().Get().Namespace(t.agents.namespace).Resource("pods").
			Name(fmt.Sprintf("%s:%d", pod, t.agents.port)).SubResource("proxy").Suffix("events").
			SetHeader(tokenHeader, "Bearer "+t.token).
			MaxRetries(0) // a refusal's Retry-After is waited for here, where it is shown
		for k, v := range t.query {
			req = req.Param(k, v[0])
		}
		body, err := req.Stream(ctx)
		if err == nil {
			t.connected(node, pod)
			err = t.read(body)
			body.Close()
			backoff = 500 * time.Millisecond
			refused = ""
		}
		if ctx.Err() != nil {
			return
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
			t.lost(node, fmt.Sprintf("stream from agent %s on node %s lost (%v); reconnecting", pod, node, errOrEOF(err)))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
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

func (t *tailer) read(body io.Reader) error {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var head struct {
			Time   time.Time `json:"time"`
			Type   string    `json:"type"`
			Lost   uint64    `json:"lost"`
			Missed uint64    `json:"missed"`
		}
		if json.Unmarshal(sc.Bytes(), &head) != nil {
			continue
		}
		if head.Type == "hello" || head.Type == "heartbeat" {
			continue
		}
		t.lines <- tailLine{at: head.Time, typ: head.Type, lost: head.Lost, miss: head.Missed, line: append([]byte(nil), sc.Bytes()...)}
	}
	return sc.Err()
}

// tailMaxHeld bounds the lines merge holds: past it, the oldest are let go
// before their merge delay is up, and the order may then be approximate.
const tailMaxHeld = 50000

// merge holds lines for the merge delay, so the nodes' streams come out in
// time order, and passes them to emit. It holds at most maxHeld lines: past
// that, it lets the oldest go early (down to 7/8 of it, in one batch) and
// says once on stderr that the order may be approximate.
func (t *tailer) merge(ctx context.Context, emit func([]tailLine)) {
	var h lineHeap
	var batch []tailLine
	warned := false
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	// release passes on, oldest first, the lines older than cut and any
	// beyond the keep oldest-last.
	release := func(cut time.Time, keep int) {
		batch = batch[:0]
		for h.Len() > 0 && (h[0].at.Before(cut) || h.Len() > keep) {
			batch = append(batch, heap.Pop(&h).(tailLine))
		}
		if len(batch) > 0 {
			emit(batch)
		}
	}
	push := func(l tailLine) {
		t.seq++
		l.seq = t.seq
		heap.Push(&h, l)
		if h.Len() > t.maxHeld {
			if !warned {
				fmt.Fprintf(t.stderr, "kdrop: more than %d lines held for --merge-delay %v: letting the oldest go early, so lines may be out of time order from now on\n", t.maxHeld, t.agents.delay)
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
			release(time.Now().Add(-t.agents.delay), t.maxHeld)
		}
	}
}

// openGaps lists the nodes whose stream is down now, and since when.
func (t *tailer) openGaps() map[string]time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]time.Time, len(t.down))
	for n, at := range t.down {
		out[n] = at
	}
	return out
}

const tableHeaderRest = "TIME          EVENT     COUNT  WHAT                    PROTO  SOURCE                   DESTINATION"

type jsonEndpoint struct {
	Kind, Namespace, Name string
	DeletedAgoMs          int64          `json:"deleted_ago_ms"`
	ReadyEndpoints        int            `json:"ready_endpoints"`
	Unresolved            bool           `json:"unresolved"`
	Previous              []jsonEndpoint `json:"previous"`
}

func (j *jsonEndpoint) endpoint() k8s.Endpoint {
	if j == nil {
		return k8s.Endpoint{}
	}
	e := k8s.Endpoint{Kind: j.Kind, Namespace: j.Namespace, Name: j.Name, ReadyEndpoints: j.ReadyEndpoints,
		Unresolved: j.Unresolved, DeletedAgo: time.Duration(j.DeletedAgoMs) * time.Millisecond}
	for i := range j.Previous {
		e.Previous = append(e.Previous, j.Previous[i].endpoint())
	}
	return e
}

// tableFromJSON renders an agent's JSON line as a table row.
func tableFromJSON(line []byte) string {
	var e struct {
		Time                       time.Time
		Type, Node, Proto, Message string
		Cause                      string
		Count, Lost, Missed        uint64
		Summary                    bool
		Src, Dst                   string
		Sport, Dport               int
		Reason, ICMP, Queue        string
		QueueLen                   int `json:"queue_len"`
		QueueMax                   int `json:"queue_max"`
	}
	var ids struct {
		Src   *jsonEndpoint `json:"src_k8s"`
		Dst   *jsonEndpoint `json:"dst_k8s"`
		Where *jsonEndpoint `json:"where_k8s"`
	}
	if json.Unmarshal(line, &e) != nil || json.Unmarshal(line, &ids) != nil {
		return string(line)
	}
	at := e.Time.Local().Format("15:04:05.000")
	switch e.Type {
	case "notice":
		return fmt.Sprintf("%-11s %-13s ** %s", e.Node, at, e.Message)
	case "lost":
		return fmt.Sprintf("%-11s %-13s ** %d event lines lost on this node: the ring buffer was full (their counts arrive in later summary lines)", e.Node, at, e.Lost)
	case "missed":
		// the kernel counts misses before kdrop's filters: "up to"
		short, why := fmt.Sprintf("counts may be short by up to %d", e.Missed), "cause not given"
		switch e.Cause {
		case report.MissedByKernel:
			why = "the kernel skipped kdrop's program, already running on that CPU, e.g. a drop nested in softirq"
		case report.MissedByStream:
			short = fmt.Sprintf("counts are short by %d", e.Missed)
			why = "this stream fell behind and the agent dropped lines for it; narrow the filters (--type, --reason, --namespace, --pod)"
		}
		return fmt.Sprintf("%-11s %-13s ** %d occurrences missed on this node: %s (%s)", e.Node, at, e.Missed, short, why)
	}
	what := e.Reason
	switch e.Type {
	case "unreach":
		what = e.ICMP
	case "overflow":
		what = e.Queue + "-queue"
		if e.QueueMax > 0 {
			what += fmt.Sprintf(" %d/%d", e.QueueLen, e.QueueMax)
		}
	}
	count := strconv.FormatUint(e.Count, 10)
	if e.Summary {
		count = "+" + count
	}
	addr := func(a string, port int) string {
		if a == "" {
			return "-"
		}
		if port == 0 {
			return a
		}
		if strings.Contains(a, ":") {
			return fmt.Sprintf("[%s]:%d", a, port)
		}
		return fmt.Sprintf("%s:%d", a, port)
	}
	row := fmt.Sprintf("%-11s %-13s %-9s %5s  %-23s %-6s %-24s %-24s", e.Node, at, e.Type, count, what, e.Proto,
		addr(e.Src, e.Sport), addr(e.Dst, e.Dport))
	var extra []string
	for _, x := range []struct {
		label string
		e     *jsonEndpoint
	}{{"src", ids.Src}, {"dst", ids.Dst}, {"at", ids.Where}} {
		ep := x.e.endpoint()
		if d := describe(&ep); d != "" {
			extra = append(extra, x.label+"="+d)
		}
	}
	if len(extra) > 0 {
		row += "  " + strings.Join(extra, " ")
	}
	return row
}

package tail

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/stream"
	"github.com/kdrop/kdrop/tracer"
)

// agentPod is an agent's pod as discovery lists it.
func agentPod(name, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kdrop", Name: name, Labels: map[string]string{"app.kubernetes.io/name": "kdrop"}},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "198.18.0.1"},
	}
}

// fakeAgent is an agent's /events served by the real hub, on a local
// listener that can be stopped and started again.
type fakeAgent struct {
	node string
	hub  *stream.Hub
	mu   sync.Mutex
	srv  *httptest.Server
	stop context.CancelFunc
}

func (a *fakeAgent) start() {
	ctx, cancel := context.WithCancel(context.Background())
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stop = cancel
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { a.hub.Serve(ctx, w, r) }))
}

func (a *fakeAgent) kill() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stop()
	a.srv.CloseClientConnections()
	a.srv.Close()
}

func (a *fakeAgent) url() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.srv.URL
}

// Discovery through the API (client-go's fake clientset), one stream per
// agent, the nodes' lines merged in time order, and the gaps: an agent
// restarting is a lost stream, then a reconnect notice with the window not
// seen; an agent pod deleted is said to have gone away. No root, no BPF.
func TestTailFollowsAgents(t *testing.T) {
	cs := fake.NewSimpleClientset(agentPod("kdrop-a", "node-a"), agentPod("kdrop-b", "node-b"))
	agents := map[string]*fakeAgent{
		"kdrop-a": {node: "node-a", hub: stream.NewHub("node-a", nil, 0)},
		"kdrop-b": {node: "node-b", hub: stream.NewHub("node-b", nil, 0)},
	}
	for _, a := range agents {
		a.start()
		defer a.srv.Close()
	}
	tl := New(cs, Agents{Namespace: "kdrop", Selector: "app.kubernetes.io/name=kdrop", Delay: 200 * time.Millisecond}, url.Values{"type": {"drop"}})
	var queries []string
	var qmu sync.Mutex
	tl.open = func(ctx context.Context, pod, _ string) (io.ReadCloser, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", agents[pod].url()+"/events?"+tl.query.Encode(), nil)
		qmu.Lock()
		queries = append(queries, req.URL.RawQuery)
		qmu.Unlock()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		return resp.Body, nil
	}
	var mu sync.Mutex
	var got []Line
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tl.Run(ctx, func(ls []Line) {
			mu.Lock()
			got = append(got, ls...)
			mu.Unlock()
		})
	}()
	var dec line.Decoder
	seen := func(pred func(*line.Line) bool) int {
		mu.Lock()
		defer mu.Unlock()
		var l line.Line
		for i := range got {
			if dec.Decode(got[i].Raw, &l) == nil && pred(&l) {
				return i
			}
		}
		return -1
	}
	waitFor := func(what string, pred func(*line.Line) bool, publish func()) int {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if publish != nil {
				publish()
			}
			if i := seen(pred); i >= 0 {
				return i
			}
		}
		mu.Lock()
		defer mu.Unlock()
		var b strings.Builder
		for _, l := range got {
			b.Write(l.Raw)
			b.WriteByte('\n')
		}
		t.Fatalf("never saw %s; lines:\n%s", what, b.String())
		return 0
	}
	var buf []byte
	publish := func(a *fakeAgent) func() {
		return func() {
			ev := &line.Event{Event: tracer.Event{Time: time.Now(), Type: tracer.Drop, Count: 1, Reason: "NO_SOCKET"}, Node: a.node}
			buf = line.AppendEvent(buf[:0], ev)
			a.hub.Publish(ev, buf)
		}
	}
	dropFrom := func(node string) func(*line.Line) bool {
		return func(l *line.Line) bool { return l.Kind == line.KindEvent && l.Event.Node == node }
	}
	waitFor("a drop from node-a", dropFrom("node-a"), publish(agents["kdrop-a"]))
	waitFor("a drop from node-b", dropFrom("node-b"), publish(agents["kdrop-b"]))

	// node-a's agent restarts
	agents["kdrop-a"].kill()
	waitFor("node-a's stream lost", func(l *line.Line) bool {
		return l.Type == line.NoticeMessage && l.Notice.Node == "node-a" && strings.Contains(l.Notice.Message, "stream from agent kdrop-a on node node-a lost")
	}, nil)
	agents["kdrop-a"].start()
	waitFor("node-a back, with its gap", func(l *line.Line) bool {
		return l.Type == line.NoticeMessage && l.Notice.Node == "node-a" && strings.Contains(l.Notice.Message, "connected to agent kdrop-a: events on node node-a between") &&
			!l.Notice.GapFrom.IsZero() && l.Notice.GapTo.After(l.Notice.GapFrom)
	}, nil)
	waitFor("a drop from node-a after the gap", dropFrom("node-a"), publish(agents["kdrop-a"]))

	// node-b's agent pod is deleted
	if err := cs.CoreV1().Pods("kdrop").Delete(context.Background(), "kdrop-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("node-b's agent gone", func(l *line.Line) bool {
		return l.Type == line.NoticeMessage && l.Notice.Node == "node-b" && strings.Contains(l.Notice.Message, "agent kdrop-b on node node-b went away")
	}, nil)
	if gaps := tl.OpenGaps(); len(gaps) != 1 || gaps["node-b"].IsZero() {
		t.Errorf("open gaps %v, want node-b's", gaps)
	}
	cancel()
	<-done

	// in time order, and the query was the caller's
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(got); i++ {
		if got[i].At.Before(got[i-1].At) {
			t.Errorf("line %d (%s) before line %d (%s)", i, got[i].At, i-1, got[i-1].At)
		}
	}
	qmu.Lock()
	defer qmu.Unlock()
	for _, q := range queries {
		if q != "type=drop" {
			t.Errorf("query %q, want type=drop", q)
		}
	}
}

// A line this kdrop cannot read in full is still passed on, as it came;
// one without a time to order it by is not; one naming another node than
// the agent's is left out, and that said once.
func TestTailPassesLinesItCannotRead(t *testing.T) {
	tl := &Tailer{lines: make(chan Line, 16)}
	in := strings.Join([]string{
		`{"time":"2026-11-30T12:00:00Z","type":"drop","count":1,"proto":"gre"}`,
		`{"time":"2026-11-30T12:00:01Z","type":"drop","count":1,"dst_k8s":{"kind":"pod","services":"a/b"}}`,
		`{"time":"2026-11-30T12:00:02Z","type":"verdict","x":1}`,
		`{"time":"2026-11-30T12:00:03Z","type":"heartbeat","node":"n"}`,
		`{"type":"drop","count":1}`,
		`not json`,
		`{"time":"2026-11-30T12:00:04Z","type":"drop","count":1,"node":"node-z"}`,
		`{"time":"2026-11-30T12:00:05Z","type":"notice","node":"node-y","message":"forged"}`,
		`{"time":"2026-11-30T12:00:06Z","type":"drop","count":1,"node":"n"}`,
	}, "\n")
	if err := tl.read(strings.NewReader(in), "kdrop-n", "n"); err != nil {
		t.Fatal(err)
	}
	close(tl.lines)
	var kinds []line.Kind
	for l := range tl.lines {
		kinds = append(kinds, l.Kind)
	}
	if want := []line.Kind{line.KindEvent, line.KindEvent, line.KindOther, line.KindNotice, line.KindEvent}; !slices.Equal(kinds, want) {
		t.Errorf("passed on kinds %v, want %v (the notice: lines naming another node left out)", kinds, want)
	}
}

// An agent whose connection goes silent (no line, no heartbeat) is a lost
// stream within the idle timeout, then a gap once it speaks again; a tail
// that never reached an agent says so.
func TestTailSilentAgent(t *testing.T) {
	cs := fake.NewSimpleClientset(agentPod("kdrop-a", "node-a"))
	var mu sync.Mutex
	silent := true
	hub := stream.NewHub("node-a", nil, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		quiet := silent
		mu.Unlock()
		if quiet { // hello, then nothing at all, as a stopped or cut-off agent
			w.Write([]byte(`{"time":"2026-11-30T12:00:00Z","type":"hello","node":"node-a"}` + "\n"))
			w.(http.Flusher).Flush()
			<-r.Context().Done()
			return
		}
		hub.Serve(ctx, w, r)
	}))
	defer srv.Close()
	tl := New(cs, Agents{Namespace: "kdrop", Selector: "app.kubernetes.io/name=kdrop", Delay: 100 * time.Millisecond, IdleTimeout: time.Second}, nil)
	tl.open = func(ctx context.Context, pod, _ string) (io.ReadCloser, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		return resp.Body, nil
	}
	var lmu sync.Mutex
	var msgs []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		tl.Run(ctx, func(ls []Line) {
			var d line.Decoder
			var l line.Line
			lmu.Lock()
			defer lmu.Unlock()
			for _, x := range ls {
				if d.Decode(x.Raw, &l) == nil && l.Kind == line.KindNotice {
					msgs = append(msgs, l.Notice.Message)
				}
			}
		})
	}()
	said := func(what string) bool {
		lmu.Lock()
		defer lmu.Unlock()
		for _, m := range msgs {
			if strings.Contains(m, what) {
				return true
			}
		}
		return false
	}
	start := time.Now()
	for !said("no line, not even a heartbeat, for 1s") {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("a silent stream was never called lost; notices: %q", msgs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if lost := time.Since(start); lost > 5*time.Second {
		t.Errorf("a silent stream was called lost after %v, want within a few idle timeouts", lost)
	}
	mu.Lock()
	silent = false
	mu.Unlock()
	for !said("connected to agent kdrop-a: events on node node-a between") {
		if time.Since(start) > 20*time.Second {
			t.Fatalf("no gap notice once the agent spoke again; notices: %q", msgs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !tl.Reached() {
		t.Error("Reached is false after streams connected")
	}
	cancel()
	<-done

	// nothing reachable: Reached stays false
	none := New(fake.NewSimpleClientset(agentPod("kdrop-b", "node-b")), Agents{Namespace: "kdrop", Selector: "app.kubernetes.io/name=kdrop", Delay: 50 * time.Millisecond}, nil)
	none.open = func(context.Context, string, string) (io.ReadCloser, error) { return nil, io.ErrUnexpectedEOF }
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	none.Run(ctx2, func([]Line) {})
	if none.Reached() {
		t.Error("Reached is true though no stream ever connected")
	}
}

package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/stream"
	"github.com/kdrop/kdrop/tracer"
)

// reviewer answers TokenReviews as an API server would for tokens minted
// by stream.RequestToken: "stream-token" is kdrop/kdrop-stream's for
// audience kdrop.dev/stream bound to node-a; "node-b-token" the same bound
// to node-b; "other-sa-token" another account's for that audience;
// "api-token" a token valid at the API server but not for that audience
// (a user's own); others are not accepted.
func reviewer(reviews *atomic.Int64) *fake.Clientset {
	cs := fake.NewSimpleClientset()
	cs.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		reviews.Add(1)
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		if !slices.Equal(tr.Spec.Audiences, []string{stream.Audience}) {
			return true, nil, fmt.Errorf("review for audiences %v, want only %s", tr.Spec.Audiences, stream.Audience)
		}
		bound := func(user, node string) authnv1.TokenReviewStatus {
			return authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{stream.Audience},
				User: authnv1.UserInfo{Username: user, Extra: map[string]authnv1.ExtraValue{"authentication.kubernetes.io/node-name": {node}}}}
		}
		switch tr.Spec.Token {
		case "stream-token":
			tr.Status = bound("system:serviceaccount:kdrop:kdrop-stream", "node-a")
		case "node-b-token":
			tr.Status = bound("system:serviceaccount:kdrop:kdrop-stream", "node-b")
		case "other-sa-token":
			tr.Status = bound("system:serviceaccount:kdrop:kdrop", "node-a")
		case "api-token":
			tr.Status = authnv1.TokenReviewStatus{Error: "token audiences [\"https://kubernetes.default.svc\"] is invalid for the target audiences [\"kdrop.dev/stream\"]"}
		default:
			tr.Status = authnv1.TokenReviewStatus{Error: "invalid bearer token"}
		}
		return true, tr, nil
	})
	return cs
}

// The agent's HTTP side without BPF or root: probes, metrics, and /events
// behind its authorization, with filters checked and events streamed.
func TestServer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hooks := []tracer.HookStatus{{Hook: "kfree_skb", Mode: "tp_btf"}, {Hook: "icmp_send"}}
	var reviews atomic.Int64
	s := NewServer(ctx, Node{Name: "node-a", Hooks: hooks, Healthy: func() bool { return true }},
		Config{MaxStreams: 2, Clientset: reviewer(&reviews), Account: stream.Account{Namespace: "kdrop", Name: "kdrop-stream"}, Log: zap.NewNop()})
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	events := httptest.NewTLSServer(s.StreamHandler())
	defer events.Close()

	get := func(path, token string) (*http.Response, string) {
		t.Helper()
		base, client := srv.URL, http.DefaultClient
		if strings.HasPrefix(path, "/events") {
			base, client = events.URL, events.Client()
		}
		req, _ := http.NewRequestWithContext(ctx, "GET", base+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == 200 && strings.HasPrefix(path, "/events") {
			first, _ := bufio.NewReader(resp.Body).ReadString('\n')
			return resp, first
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}
	if resp, body := get("/healthz", ""); resp.StatusCode != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", resp.StatusCode, body)
	}
	if resp, body := get("/readyz", ""); resp.StatusCode != 503 || !strings.Contains(body, "waiting for pod identity") {
		t.Errorf("/readyz before ready: %d %q", resp.StatusCode, body)
	}
	s.SetReady()
	if resp, _ := get("/readyz", ""); resp.StatusCode != 200 {
		t.Errorf("/readyz once ready: %d", resp.StatusCode)
	}
	for _, c := range []struct {
		path, token string
		code        int
		body        string
	}{
		{"/events", "", 401, "no stream token: kdrop tail gets one from the API server (a TokenRequest for service account kdrop/kdrop-stream, audience kdrop.dev/stream, bound to node node-a)"},
		{"/events", "forged", 401, "not a stream token (the API server does not accept it for audience kdrop.dev/stream): invalid bearer token"},
		{"/events", "api-token", 401, "not a stream token (the API server does not accept it for audience kdrop.dev/stream): token audiences"},
		{"/events", "other-sa-token", 403, "a token of system:serviceaccount:kdrop:kdrop: streams take tokens of service account kdrop/kdrop-stream only"},
		{"/events", "node-b-token", 403, `the token is bound to node "node-b", this agent runs on node "node-a"`},
		{"/events?type=drops", "stream-token", 400, `query parameter type: unknown event type "drops"`},
		{"/events?cidr=10.0.0.0/33", "stream-token", 400, `query parameter cidr "10.0.0.0/33": not an address or CIDR`},
		{"/events?port=http", "stream-token", 400, `query parameter port "http": not a port number`},
		{"/events?netns=/etc/shadow", "stream-token", 400, `query parameter netns "/etc/shadow": not an inode number`},
		{"/events?type=drop&port=80", "stream-token", 200, `"type":"hello","node":"node-a"`},
	} {
		resp, body := get(c.path, c.token)
		if resp.StatusCode != c.code || !strings.Contains(body, c.body) {
			t.Errorf("%s with %q: %d %q, want %d with %q", c.path, c.token, resp.StatusCode, body, c.code, c.body)
		}
		if c.code == 200 {
			resp.Body.Close()
		}
	}

	// Metrics and probes, and the stream, each on its own listener only.
	for _, c := range []struct {
		url    string
		client *http.Client
	}{{srv.URL + "/events", http.DefaultClient}, {events.URL + "/metrics", events.Client()}, {events.URL + "/readyz", events.Client()}} {
		resp, err := c.client.Get(c.url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("%s: %d, want 404", c.url, resp.StatusCode)
		}
	}

	// 1,000 callers with random tokens: the agent reviews at most what its
	// own limiter allows, refuses the rest with 429, and real users, whose
	// decisions are cached, still get through.
	before, start := reviews.Load(), time.Now()
	limited := 0
	for i := range 1000 {
		if resp, _ := get("/events", fmt.Sprintf("random-%d", i)); resp.StatusCode == http.StatusTooManyRequests {
			limited++
		}
	}
	budget := 10 + 5*time.Since(start).Seconds() + 1
	if n := reviews.Load() - before; float64(n) > budget || limited < 900 {
		t.Errorf("1,000 random tokens cost %d TokenReviews (budget %.0f), %d refused with 429", n, budget, limited)
	}
	if resp, _ := get("/events?type=drop", "stream-token"); resp.StatusCode != 200 {
		t.Errorf("a viewer during the flood: %d", resp.StatusCode)
	} else {
		resp.Body.Close()
	}

	// A viewer's stream gets what its filter selects, and the metrics count
	// every event.
	req, _ := http.NewRequestWithContext(ctx, "GET", events.URL+"/events?type=drop&port=80", nil)
	req.Header.Set(stream.TokenHeader, "Bearer stream-token")
	resp, err := events.Client().Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("stream: %v %v", err, resp)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	br.ReadString('\n') // hello
	for s.Hub.Clients() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, ev := range []line.Event{
		{Event: tracer.Event{Time: at, Type: tracer.Drop, Count: 1, Reason: "NO_SOCKET"}, Node: "node-a"},                               // port 0: filtered out
		{Event: tracer.Event{Time: at, Type: tracer.Unreachable, Count: 1, Family: 4, ICMPType: 3, ICMPCode: 1}, Node: "node-a"},        // type: filtered out
		{Event: tracer.Event{Time: at, Type: tracer.Drop, Count: 3, Summary: true, Reason: "NETFILTER_DROP", Proto: 6}, Node: "node-a"}, // port 0: filtered out
		{Event: tracer.Event{Time: at, Type: tracer.Drop, Count: 2, Summary: true, Reason: "NO_SOCKET", Proto: 6, Dst: mustAddrPort("10.0.0.1:80")}, Node: "node-a"},
	} {
		b := line.AppendEvent(nil, &ev)
		s.Hub.Publish(&ev, b)
		s.Metrics.Observe(&ev)
	}
	l, err := br.ReadString('\n')
	if err != nil || !strings.Contains(l, `"count":2,"summary":true`) || !strings.Contains(l, `"dport":80`) {
		t.Errorf("streamed %q (%v), want the summary to port 80", l, err)
	}
	_, metrics := get("/metrics", "")
	for _, want := range []string{
		`kdrop_events_total{namespace="",reason="NO_SOCKET",type="drop",workload=""} 3`,
		`kdrop_events_total{namespace="",reason="host-unreachable",type="unreach",workload=""} 1`,
		`kdrop_hook_attached{hook="kfree_skb",mode="tp_btf"} 1`, `kdrop_hook_attached{hook="icmp_send",mode="none"} 0`,
		"kdrop_identity_healthy 1", "kdrop_stream_clients 1",
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

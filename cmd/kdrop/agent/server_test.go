package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/tracer"
)

// reviewer answers TokenReviews and SubjectAccessReviews as an API server
// would: token "viewer-token" is a viewer allowed to read kdrop events in
// namespace kdrop, "nobody-token" is a user without that right, others
// are not accepted.
func reviewer(reviews *atomic.Int64) *fake.Clientset {
	cs := fake.NewSimpleClientset()
	cs.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		reviews.Add(1)
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		switch tr.Spec.Token {
		case "viewer-token":
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: "viewer"}}
		case "nobody-token":
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: "nobody"}}
		default:
			tr.Status = authnv1.TokenReviewStatus{Error: "invalid bearer token"}
		}
		return true, tr, nil
	})
	cs.PrependReactor("create", "subjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		sar := a.(k8stesting.CreateAction).GetObject().(*authzv1.SubjectAccessReview)
		ra := sar.Spec.ResourceAttributes
		sar.Status.Allowed = sar.Spec.User == "viewer" && ra != nil && ra.Namespace == "kdrop" &&
			ra.Group == "kdrop.dev" && ra.Resource == "events" && ra.Verb == "get"
		return true, sar, nil
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
		Config{MaxStreams: 2, Clientset: reviewer(&reviews), Namespace: "kdrop", Log: zap.NewNop()})
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()

	get := func(path, token string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
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
		{"/events", "", 401, "no bearer token"},
		{"/events", "forged", 401, "token not accepted by the API server: invalid bearer token"},
		{"/events", "nobody-token", 403, `nobody may not read kdrop events: grant "get" on "events" in API group kdrop.dev in namespace kdrop`},
		{"/events?type=drops", "viewer-token", 400, `query parameter type: unknown event type "drops"`},
		{"/events?cidr=10.0.0.0/33", "viewer-token", 400, `query parameter cidr "10.0.0.0/33": not an address or CIDR`},
		{"/events?port=http", "viewer-token", 400, `query parameter port "http": not a port number`},
		{"/events?netns=/etc/shadow", "viewer-token", 400, `query parameter netns "/etc/shadow": not an inode number`},
		{"/events?type=drop&port=80", "viewer-token", 200, `"type":"hello","node":"node-a"`},
	} {
		resp, body := get(c.path, c.token)
		if resp.StatusCode != c.code || !strings.Contains(body, c.body) {
			t.Errorf("%s with %q: %d %q, want %d with %q", c.path, c.token, resp.StatusCode, body, c.code, c.body)
		}
		if c.code == 200 {
			resp.Body.Close()
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
	if resp, _ := get("/events?type=drop", "viewer-token"); resp.StatusCode != 200 {
		t.Errorf("a viewer during the flood: %d", resp.StatusCode)
	} else {
		resp.Body.Close()
	}

	// A viewer's stream gets what its filter selects, and the metrics count
	// every event.
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/events?type=drop&port=80", nil)
	req.Header.Set("X-Kdrop-Authorization", "Bearer viewer-token")
	resp, err := http.DefaultClient.Do(req)
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

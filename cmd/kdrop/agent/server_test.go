package agent

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
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

// jwt is a token shaped as the API server makes them, unsigned: the
// reviewer below stands for the API server, which checks signatures.
func jwt(sub, node string, aud []string, life time.Duration, jti ...string) string {
	now := time.Now()
	payload, _ := json.Marshal(map[string]any{"aud": aud, "sub": sub, "iat": now.Unix(), "exp": now.Add(life).Unix(), "jti": jti,
		"kubernetes.io": map[string]any{"namespace": "kdrop", "node": map[string]string{"name": node}}})
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc(payload) + "." + enc([]byte("signature"))
}

const streamSA = "system:serviceaccount:kdrop:kdrop-stream"

// The tokens of TestServer, as the API server would review them for
// audience kdrop.dev/stream.
var (
	streamToken  = jwt(streamSA, "node-a", []string{stream.Audience}, time.Hour)
	streamToken2 = jwt(streamSA, "node-a", []string{stream.Audience}, time.Hour, "second")   // a reconnect's new token
	forgedToken  = jwt(streamSA, "node-a", []string{stream.Audience}, time.Hour+time.Second) // claims right, signature not
	otherSAToken = jwt("system:serviceaccount:kdrop:kdrop", "node-a", []string{stream.Audience}, time.Hour)
	nodeBToken   = jwt(streamSA, "node-b", []string{stream.Audience}, time.Hour)
	apiToken     = jwt(streamSA, "node-a", []string{"https://kubernetes.default.svc"}, time.Hour)
	yearToken    = jwt(streamSA, "node-a", []string{stream.Audience}, 365*24*time.Hour)
)

// reviewer answers TokenReviews as an API server would: streamToken is
// kdrop/kdrop-stream's for audience kdrop.dev/stream bound to node-a; the
// others are not accepted.
func reviewer(reviews *atomic.Int64) *fake.Clientset {
	cs := fake.NewSimpleClientset()
	cs.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		reviews.Add(1)
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		if !slices.Equal(tr.Spec.Audiences, []string{stream.Audience}) {
			return true, nil, fmt.Errorf("review for audiences %v, want only %s", tr.Spec.Audiences, stream.Audience)
		}
		switch tr.Spec.Token {
		case streamToken, streamToken2:
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{stream.Audience},
				User: authnv1.UserInfo{Username: streamSA, Extra: map[string]authnv1.ExtraValue{"authentication.kubernetes.io/node-name": {"node-a"}}}}
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
			req.Header.Set(stream.TokenHeader, "Bearer "+token)
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
		{"/events", "", 401, "no stream token in X-Kdrop-Authorization: kdrop tail gets one from the API server (a TokenRequest for service account kdrop/kdrop-stream, audience kdrop.dev/stream, bound to node node-a); never send your own credentials"},
		{"/events", "not-a-jwt", 401, "not a stream token for this agent: not a JWT"},
		{"/events", apiToken, 401, "not a stream token for this agent: its audience is not kdrop.dev/stream"},
		{"/events", otherSAToken, 401, "not a stream token for this agent: it is not a token of service account kdrop/kdrop-stream"},
		{"/events", nodeBToken, 401, `not a stream token for this agent: it is bound to node "node-b", this agent runs on node "node-a"`},
		{"/events", yearToken, 401, "not a stream token for this agent: it lives 8760h0m0s, longer than the 1h1m0s a stream token may"},
		{"/events", forgedToken, 401, "not a stream token (the API server does not accept it for audience kdrop.dev/stream): invalid bearer token"},
		{"/events?type=drops", streamToken, 400, `query parameter type: unknown event type "drops"`},
		{"/events?cidr=10.0.0.0/33", streamToken, 400, `query parameter cidr "10.0.0.0/33": not an address or CIDR`},
		{"/events?port=http", streamToken, 400, `query parameter port "http": not a port number`},
		{"/events?netns=/etc/shadow", streamToken, 400, `query parameter netns "/etc/shadow": not an inode number`},
		{"/events?pod=a/b/c", streamToken, 400, `query parameter pod "a/b/c": not a pod name (NAME or NAMESPACE/NAME)`},
		{"/events?namespace=Shop", streamToken, 400, `query parameter namespace "Shop": not a namespace name`},
		{"/events?type=drop&port=80", streamToken, 200, `"type":"hello","node":"node-a"`},
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

	// 1,000 callers with random tokens cost no review at all; 1,000 with
	// forged tokens whose claims are right (from 127.0.0.2, an address
	// that never showed a good token) cost at most the limiter's budget,
	// the rest refused with 429; and a viewer's new token through the
	// address that showed a good one before (127.0.0.1, as the API
	// server's pod proxy) still gets through.
	before := reviews.Load()
	for i := range 1000 {
		if resp, _ := get("/events", fmt.Sprintf("random-%d", i)); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("a random token: %d, want 401", resp.StatusCode)
		}
	}
	if n := reviews.Load() - before; n != 0 {
		t.Errorf("1,000 random tokens cost %d TokenReviews, want none", n)
	}
	tr2 := events.Client().Transport.(*http.Transport).Clone()
	tr2.DialContext = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext
	from2 := &http.Client{Transport: tr2}
	before, start := reviews.Load(), time.Now()
	limited := 0
	for i := range 1000 {
		req, _ := http.NewRequestWithContext(ctx, "GET", events.URL+"/events", nil)
		req.Header.Set(stream.TokenHeader, "Bearer "+jwt(streamSA, "node-a", []string{stream.Audience}, time.Hour, strconv.Itoa(i)))
		resp, err := from2.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests {
			limited++
		}
	}
	budget := 10 + 5*time.Since(start).Seconds() + 1
	if n := reviews.Load() - before; float64(n) > budget || limited < 900 {
		t.Errorf("1,000 forged tokens cost %d TokenReviews (budget %.0f), %d refused with 429", n, budget, limited)
	}
	if resp, _ := get("/events?type=drop", streamToken2); resp.StatusCode != 200 {
		t.Errorf("a viewer's new token during the flood: %d", resp.StatusCode)
	} else {
		resp.Body.Close()
	}
	// One token holds at most MaxStreamsPerToken streams, whatever
	// --max-streams leaves.
	wide := httptest.NewTLSServer(NewServer(ctx, Node{Name: "node-a"}, Config{MaxStreams: 10, Clientset: reviewer(&reviews),
		Account: stream.Account{Namespace: "kdrop", Name: "kdrop-stream"}, Log: zap.NewNop()}).StreamHandler())
	defer wide.Close()
	for i := range stream.MaxStreamsPerToken + 1 {
		req, _ := http.NewRequestWithContext(ctx, "GET", wide.URL+"/events", nil)
		req.Header.Set(stream.TokenHeader, "Bearer "+streamToken)
		resp, err := wide.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if want := 200; i == stream.MaxStreamsPerToken {
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 429 || !strings.Contains(string(b), "this stream token already holds 4 streams") {
				t.Errorf("stream %d of one token: %d %s, want 429", i+1, resp.StatusCode, b)
			}
		} else if resp.StatusCode != want {
			t.Errorf("stream %d of one token: %d", i+1, resp.StatusCode)
		} else {
			bufio.NewReader(resp.Body).ReadString('\n') // hello: registered
		}
	}

	// A viewer's stream gets what its filter selects, and the metrics count
	// every event.
	req, _ := http.NewRequestWithContext(ctx, "GET", events.URL+"/events?type=drop&port=80", nil)
	req.Header.Set(stream.TokenHeader, "Bearer "+streamToken)
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
	// Every refusal counted: the table's seven 401s and the 1,000 random
	// tokens, the forged ones reviewed (401) or not (429), the token over
	// its stream limit (429).
	if n := metricValue(metrics, `kdrop_stream_refused_total{code="401"}`); n < 1007 {
		t.Errorf("kdrop_stream_refused_total{code=\"401\"} = %v, want at least 1007", n)
	}
	if n := metricValue(metrics, `kdrop_stream_refused_total{code="429"}`); n < 900 {
		t.Errorf("kdrop_stream_refused_total{code=\"429\"} = %v, want at least 900", n)
	}
	for _, want := range []string{
		`kdrop_events_total{namespace="",reason="NO_SOCKET",type="drop",workload=""} 3`,
		`kdrop_events_total{namespace="",reason="host-unreachable",type="unreach",workload=""} 1`,
		`kdrop_hook_attached{hook="kfree_skb",mode="tp_btf"} 1`, `kdrop_hook_attached{hook="icmp_send",mode="none"} 0`,
		"kdrop_identity_healthy 1", "kdrop_stream_clients 1",
		`kdrop_stream_refused_total{code="503"} 0`,
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// metricValue is the value of the sample named exactly name in text.
func metricValue(text, name string) float64 {
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

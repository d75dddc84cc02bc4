package main

// The agent against a real API server: its stream refuses callers without a
// stream token of its node and serves those with one, which only viewers
// get from the API server; its metrics count
// what the kernel counted; stdout carries the same events.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/stream"
	"github.com/kdrop/kdrop/k8s/testenv"
	"github.com/kdrop/kdrop/tracer/nstest"
)

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// saToken creates a service account and returns a token for it.
func saToken(t *testing.T, cs kubernetes.Interface, ns, name string) string {
	t.Helper()
	ctx := context.Background()
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authnv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// forge is token with its signature replaced: the same claims, a token
// the API server did not make.
func forge(token, salt string) string {
	return token[:strings.LastIndexByte(token, '.')+1] + base64.RawURLEncoding.EncodeToString([]byte("forged-"+salt))
}

// agentClient talks to agents' streams, whose certificates are made at
// their start and trusted by nobody (the API server's pod proxy does not
// check them).
var agentClient = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}

func get(t *testing.T, url string, hdr map[string]string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := agentClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestAgentStreamAuthAndMetrics(t *testing.T) {
	env := testenv.Start(t)
	cs := kubernetes.NewForConfigOrDie(env.Config())
	ctx := context.Background()
	// A viewer bound with a ClusterRoleBinding (tailViewer), one bound with
	// a RoleBinding in the agents' namespace only, and one bound to nothing.
	viewerToken, _ := tailViewer(t, env, cs)
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().RoleBindings("kdrop").Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "kdrop-viewer-carol"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "kdrop-viewer"},
		Subjects: []rbacv1.Subject{{Kind: "User", Name: "carol"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	carol := kubernetes.NewForConfigOrDie(env.UserConfig("carol"))
	viewer := streamToken(t, carol, "node-a")
	otherNode := streamToken(t, carol, "node-b")
	_, _, err := stream.RequestToken(ctx, kubernetes.NewForConfigOrDie(env.UserConfig("mallory")), stream.Account{Namespace: "kdrop", Name: stream.DefaultAccount}, "node-a")
	if !apierrors.IsForbidden(err) {
		t.Errorf("a user bound to nothing asked for a stream token: got %v, want 403", err)
	}
	// kdrop tail as a user bound to nothing: a clear refusal, at once.
	out, err := exec.Command(kdropBin, "tail", "--kubeconfig", env.UserKubeconfig("mallory"), "--duration", "30s").CombinedOutput()
	const refused = `you may not read kdrop's stream: the API server says you may not list pods, watch pods, create serviceaccounts/token kdrop-stream, get pods/proxy in namespace kdrop; bind ClusterRole kdrop-viewer in namespace kdrop: kubectl create rolebinding`
	if err == nil || !strings.Contains(string(out), refused) {
		t.Errorf("kdrop tail without rights: %v\n%s\nwant it to fail with %q", err, out, refused)
	}
	// A stream token is good for nothing at the API server.
	cfg := rest.AnonymousClientConfig(env.Config())
	cfg.BearerToken = viewer
	if _, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().Pods("kdrop").List(ctx, metav1.ListOptions{}); !apierrors.IsUnauthorized(err) {
		t.Errorf("the API server should refuse a stream token with 401, got %v", err)
	}

	ns := nstest.New(t, "agent")
	ns.Sh(t, "iptables -A INPUT -p udp --dport 9999 -j DROP")
	addr, streamAddr := freeAddr(t), freeAddr(t)
	agent := exec.Command(kdropBin, "agent", "--kubeconfig", env.Kubeconfig(), "--node", "node-a", "--listen", addr,
		"--stream-listen", streamAddr, "--netns", "/run/netns/"+ns.Name, "--type", "drop", "--log-format", "console")
	agent.Env = append(os.Environ(), "POD_NAMESPACE=kdrop") // as deploy/ sets it
	var stdout, stderr syncBuffer
	agent.Stdout, agent.Stderr = &stdout, &stderr
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- agent.Wait() }()
	t.Cleanup(func() {
		agent.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("agent stderr:\n%s", stderr.String())
		}
	})
	base := "http://" + addr
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get(base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("agent exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("agent not ready in 60s")
		}
	}

	prom := startPrometheus(t, addr)

	// Who may read the stream.
	for _, c := range []struct {
		name string
		hdr  map[string]string
		code int
		body string
	}{
		{"no token", nil, 401, "no stream token"},
		{"bad token", map[string]string{stream.TokenHeader: "Bearer not-a-token"}, 401, "not a stream token for this agent: not a JWT"},
		{"a viewer's own token", map[string]string{stream.TokenHeader: "Bearer " + viewerToken}, 401, "not a stream token for this agent: its audience is not kdrop.dev/stream"},
		{"a stream token in Authorization", map[string]string{"Authorization": "Bearer " + viewer}, 401, "no stream token in X-Kdrop-Authorization"},
		{"another node's stream token", map[string]string{stream.TokenHeader: "Bearer " + otherNode}, 401, `it is bound to node "node-b", this agent runs on node "node-a"`},
		{"a forged token with the right claims", map[string]string{stream.TokenHeader: "Bearer " + forge(viewer, "x")}, 401, "not a stream token (the API server does not accept it for audience kdrop.dev/stream)"},
		{"bad filter", map[string]string{stream.TokenHeader: "Bearer " + viewer}, 400, "unknown drop reason"},
		{"stream token of a RoleBinding's viewer", map[string]string{stream.TokenHeader: "Bearer " + viewer}, 200, `"type":"hello"`},
	} {
		url := "https://" + streamAddr + "/events"
		if c.name == "bad filter" {
			url += "?reason=NO_SOKET"
		}
		resp := get(t, url, c.hdr)
		var body []byte
		if resp.StatusCode == 200 { // a stream: its first line
			body, _ = bufio.NewReader(resp.Body).ReadBytes('\n')
		} else {
			body, _ = io.ReadAll(resp.Body)
		}
		resp.Body.Close()
		if resp.StatusCode != c.code || !strings.Contains(string(body), c.body) {
			t.Errorf("%s: got %d %q, want %d with %q", c.name, resp.StatusCode, body, c.code, c.body)
		}
	}

	// A viewer streams (token in the header kdrop tail uses through the pod proxy).
	resp := get(t, "https://"+streamAddr+"/events?reason=NETFILTER_DROP&port=9999", map[string]string{stream.TokenHeader: "Bearer " + viewer})
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("viewer: %d %s", resp.StatusCode, b)
	}
	sc := bufio.NewScanner(resp.Body)
	if !sc.Scan() || !strings.Contains(sc.Text(), `"type":"hello","node":"node-a"`) {
		t.Fatalf("stream should start with a hello line, got %q", sc.Text())
	}
	// A datagram every 200 ms to the dropped port (one flow each, well
	// under the rate limit: one line per drop) while the test reads: the
	// stream never counts more than the rule, and trails it by no more
	// than a second and a half; then, the load stopped, it equals it.
	var got atomic.Uint64
	streamErr := make(chan error, 1)
	go func() {
		var dec line.Decoder
		for sc.Scan() {
			var l line.Line
			if err := dec.Decode(sc.Bytes(), &l); err != nil {
				streamErr <- fmt.Errorf("%v: %s", err, sc.Text())
				return
			}
			ev := &l.Event
			if l.Type == "heartbeat" || l.Type == "lost" || l.Type == "missed" {
				streamErr <- fmt.Errorf("unexpected %s line: %s", l.Type, sc.Text())
				return
			}
			if l.Type != "drop" || ev.Reason != "NETFILTER_DROP" || ev.Dst.Port() != 9999 || ev.Node != "node-a" {
				streamErr <- fmt.Errorf("unexpected event: %s", sc.Text())
				return
			}
			got.Add(ev.Count)
		}
	}()
	rule := func() uint64 { return ns.IptablesPackets(t, "iptables", "INPUT", "DROP", "") }
	stopLoad := nstest.Paced(t, 200*time.Millisecond, func() { ns.SendUDP(t, "127.0.0.1", 9999, 1) })
	nstest.WhileRunning(t, "the stream's NETFILTER_DROP count vs the DROP rule's", nstest.For(4*time.Second), 500*time.Millisecond, 1500*time.Millisecond, got.Load, rule)
	stopLoad()
	n := rule()
	for deadline := time.Now().Add(5 * time.Second); got.Load() != n; time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-streamErr:
			t.Fatal(err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream counted %d drops, the DROP rule %d", got.Load(), n)
		}
	}

	// 1,000 callers with random tokens cost the real API server nothing,
	// and 1,000 with forged tokens (a real stream token's claims, another
	// signature) at most the agent's own review budget (5 a second, burst
	// 10), counted by the API server itself.
	reviews := func() float64 { return apiserverRequests(t, cs, `resource="tokenreviews"`, `verb="POST"`) }
	before := reviews()
	for i := range 1000 {
		r := get(t, "https://"+streamAddr+"/events", map[string]string{stream.TokenHeader: fmt.Sprintf("Bearer random-%d", i)})
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	if n := reviews() - before; n != 0 {
		t.Errorf("1,000 random tokens cost the API server %.0f TokenReviews, want none", n)
	}
	before, start, limited := reviews(), time.Now(), 0
	for i := range 1000 {
		r := get(t, "https://"+streamAddr+"/events", map[string]string{stream.TokenHeader: "Bearer " + forge(viewer, strconv.Itoa(i))})
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
		if r.StatusCode == http.StatusTooManyRequests {
			limited++
		}
	}
	budget := 10 + 5*time.Since(start).Seconds() + 1
	reviewed := reviews() - before
	t.Logf("1,000 forged tokens: %.0f TokenReviews at the API server (budget %.0f), %d refused with 429", reviewed, budget, limited)
	if reviewed > budget || reviewed < 1 || limited < 500 {
		t.Errorf("1,000 forged tokens cost the API server %.0f TokenReviews (budget %.0f, and some must be made); %d refused with 429", reviewed, budget, limited)
	}

	// Metrics count the same, with bounded labels.
	mresp := get(t, base+"/metrics", nil)
	metrics, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	want := fmt.Sprintf(`kdrop_events_total{namespace="",reason="NETFILTER_DROP",type="drop",workload=""} %d`, n)
	if !strings.Contains(string(metrics), want) {
		t.Errorf("metrics lack %q:\n%s", want, grepLines(string(metrics), "kdrop_"))
	}
	for _, m := range []string{`kdrop_hook_attached{hook="kfree_skb",mode=`, "kdrop_identity_healthy 1", "kdrop_stream_clients 1",
		"kdrop_lost_lines_total 0", "kdrop_missed_total 0", "kdrop_coarsened_total 0"} {
		if !strings.Contains(string(metrics), m) {
			t.Errorf("metrics lack %q:\n%s", m, grepLines(string(metrics), "kdrop_"))
		}
	}
	lint := exec.Command("promtool", "check", "metrics")
	lint.Stdin = bytes.NewReader(metrics)
	if out, err := lint.CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	// A real Prometheus scraped the agent during the scenario: PromQL
	// over its HTTP API sees the same count.
	q := `sum(kdrop_events_total{type="drop",reason="NETFILTER_DROP"})`
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		v, err := prom.query(q)
		if err == nil && uint64(v) == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus: %s = %v (%v), want %d", q, v, err, n)
		}
	}
	// stdout: the same events as JSON lines, for kubectl logs (flushed
	// within 200 ms).
	for deadline := time.Now().Add(3 * time.Second); uint64(strings.Count(stdout.String(), `"reason":"NETFILTER_DROP"`)) != n; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("agent stdout should have %d NETFILTER_DROP lines:\n%s", n, stdout.String())
		}
	}
}

// syncBuffer is a bytes.Buffer a child process writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

type prometheusServer struct{ url string }

// startPrometheus runs Debian's prometheus scraping target every second,
// evaluating the rule files given every second too.
func startPrometheus(t *testing.T, target string, ruleFiles ...string) *prometheusServer {
	t.Helper()
	if _, err := exec.LookPath("prometheus"); err != nil {
		if out, err := exec.Command("sh", "-c", "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus").CombinedOutput(); err != nil {
			t.Fatalf("prometheus is needed (make deps installs it): %v\n%s", err, out)
		}
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	rules, _ := json.Marshal(append([]string{}, ruleFiles...)) // a YAML flow sequence
	os.WriteFile(cfg, []byte(fmt.Sprintf("global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files: %s\nscrape_configs:\n- job_name: kdrop\n  static_configs: [{targets: [%q]}]\n", rules, target)), 0o644)
	listen := freeAddr(t)
	cmd := exec.Command("prometheus", "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+listen, "--log.level=warn")
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus:\n%s", logs.String())
		}
	})
	p := &prometheusServer{url: "http://" + listen}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if resp, err := http.Get(p.url + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready:\n%s", logs.String())
		}
	}
}

// query returns the single value of an instant PromQL query.
func (p *prometheusServer) query(q string) (int, error) {
	resp, err := http.Get(p.url + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string
		Data   struct {
			Result []struct {
				Value [2]any
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, err
	}
	if r.Status != "success" || len(r.Data.Result) != 1 {
		return 0, fmt.Errorf("query %s: status %s, %d results", q, r.Status, len(r.Data.Result))
	}
	v, _ := r.Data.Result[0].Value[1].(string)
	f, err := strconv.ParseFloat(v, 64)
	return int(f), err
}

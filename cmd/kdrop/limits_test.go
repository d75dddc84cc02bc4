package main

// The bounds a long-running agent or tail keeps: stream clients per agent,
// lines tail holds to merge, pods a selector keeps after their deletion,
// metric series, cached authorization decisions.

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kdrop/kdrop/cmd/kdrop/sinks/stream"
	"github.com/kdrop/kdrop/k8s/testenv"
	"github.com/kdrop/kdrop/tracer/nstest"
)

// An agent at its --max-streams refuses one more stream with 503, a message
// that names the limit and the flag, and Retry-After; kdrop tail, reaching
// it through the real API server's pod proxy, shows that message once and
// connects when a slot frees. What reaches the agent is recorded on the
// way (a TLS proxy at the pod IP): never the viewer's own token, only a
// stream token that the API server refuses.
func TestAgentStreamLimitAndTailRetry(t *testing.T) {
	env := testenv.Start(t)
	cs := kubernetes.NewForConfigOrDie(env.Config())
	ctx := context.Background()
	viewerToken, viewerKC := tailViewer(t, env, cs)
	viewerCfg, err := clientcmd.BuildConfigFromFlags("", viewerKC)
	if err != nil {
		t.Fatal(err)
	}
	viewer := kubernetes.NewForConfigOrDie(viewerCfg)
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	token := streamToken(t, viewer, "node-a")

	// The agent's pod IP on a veth (the pod proxy refuses loopback).
	const ip = "198.18.51.1"
	peer := nstest.New(t, "podnet")
	dev := fmt.Sprintf("kdl%d", rand.Intn(1e6))
	nstest.Run(t, "ip", "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", peer.Name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", dev).Run() })
	peer.IP(t, "link set eth0 up")
	nstest.Run(t, "ip", "addr", "add", ip+"/32", "dev", dev)
	nstest.Run(t, "ip", "link", "set", dev, "up")
	ns := nstest.New(t, "node-a")
	ns.Sh(t, "iptables -A INPUT -p udp --dport 9999 -j DROP")
	agentStream := freeAddr(t)
	startAgent(t, env.Kubeconfig(), "node-a", ip+":9965", agentStream, ns.Name, "--max-streams", "1")
	seen := recordingProxy(t, ip+":9966", agentStream)
	p, err := cs.CoreV1().Pods("kdrop").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "kdrop-a", Labels: map[string]string{"app.kubernetes.io/name": "kdrop"}},
		Spec:       corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "agent", Image: "kdrop"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
	if _, err := cs.CoreV1().Pods("kdrop").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	// One stream takes the only slot; the next is refused.
	base := "https://" + agentStream + "/events"
	held := get(t, base, map[string]string{stream.TokenHeader: "Bearer " + token})
	if held.StatusCode != 200 {
		b, _ := io.ReadAll(held.Body)
		t.Fatalf("first stream: %d %s", held.StatusCode, b)
	}
	bufio.NewReader(held.Body).ReadBytes('\n') // its hello: it is registered
	const refusal = "kdrop agent on node node-a already serves 1 /events streams, its limit: retry later, or raise the limit with kdrop agent --max-streams"
	resp := get(t, base, map[string]string{stream.TokenHeader: "Bearer " + token})
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || strings.TrimSpace(string(body)) != refusal || resp.Header.Get("Retry-After") != "5" {
		t.Fatalf("second stream: %d, Retry-After %q, %q; want 503, 5, %q", resp.StatusCode, resp.Header.Get("Retry-After"), body, refusal)
	}

	// tail says so, as the agent put it, once however often it retries.
	tail := exec.Command(kdropBin, "tail", "--kubeconfig", viewerKC, "-o", "json", "--type", "drop", "--duration", "90s", "--merge-delay", "200ms")
	stdout, _ := tail.StdoutPipe()
	var tailErr syncBuffer
	tail.Stderr = &tailErr
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		tail.Process.Kill()
		tail.Wait()
		if t.Failed() {
			t.Logf("tail stderr:\n%s", tailErr.String())
		}
	})
	var mu sync.Mutex
	var lines []map[string]any
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m, err := decodeMap(sc.Bytes()); err == nil {
				mu.Lock()
				lines = append(lines, m)
				mu.Unlock()
			}
		}
	}()
	// count returns how many lines are notices containing msg, or drops
	// from node-a when msg is "".
	count := func(msg string) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, m := range lines {
			text, _ := m["message"].(string)
			if (msg == "" && m["type"] == "drop" && m["node"] == "node-a") || (msg != "" && m["type"] == "notice" && strings.Contains(text, msg)) {
				n++
			}
		}
		return n
	}
	want := "agent kdrop-a on node node-a refused the stream: " + refusal + " (retrying in 5s)"
	waitUntil := func(what string, timeout time.Duration, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(timeout); !ok(); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				mu.Lock()
				defer mu.Unlock()
				t.Fatalf("%s; tail's lines: %v", what, lines)
			}
		}
	}
	waitUntil("tail never showed the agent's refusal", 30*time.Second, func() bool { return count(want) == 1 })
	time.Sleep(11 * time.Second) // two more retries, refused the same way
	if n := count("refused the stream"); n != 1 {
		t.Errorf("the refusal was shown %d times, want once", n)
	}
	// A slot frees: tail connects and streams.
	held.Body.Close()
	waitUntil("tail never connected once the slot was free", 30*time.Second, func() bool {
		return count("connected to agent kdrop-a: events on node node-a between") == 1
	})
	waitUntil("no drop from node-a after tail connected", 30*time.Second, func() bool {
		ns.SendUDP(t, "127.0.0.1", 9999, 1)
		return count("") > 0
	})

	// What reached the agent: stream tokens only, none of which the API
	// server takes; never the viewer's token.
	reqs := seen.all()
	if len(reqs) < 2 {
		t.Fatalf("%d requests reached the agent through the pod proxy, want tail's", len(reqs))
	}
	for _, h := range reqs {
		for k, vs := range h {
			for _, v := range vs {
				if strings.Contains(v, viewerToken) {
					t.Errorf("the viewer's own token reached the agent in %s", k)
				}
			}
		}
		tok, ok := strings.CutPrefix(h.Get(stream.TokenHeader), "Bearer ")
		if !ok {
			t.Errorf("a request reached the agent without a stream token: %v", h)
			continue
		}
		cfg := rest.AnonymousClientConfig(env.Config())
		cfg.BearerToken = tok
		if _, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); !apierrors.IsUnauthorized(err) {
			t.Errorf("the API server should refuse the stream token that reached the agent (401), got %v", err)
		}
		tr, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: tok, Audiences: []string{stream.Audience}}}, metav1.CreateOptions{})
		if err != nil || !tr.Status.Authenticated || tr.Status.User.Username != "system:serviceaccount:kdrop:kdrop-stream" ||
			!slices.Equal(tr.Status.User.Extra["authentication.kubernetes.io/node-name"], []string{"node-a"}) {
			t.Errorf("the token that reached the agent: %v %+v, want kdrop-stream's bound to node-a", err, tr.Status)
		}
	}
}

// headersSeen are the request headers a recordingProxy passed on.
type headersSeen struct {
	mu   sync.Mutex
	reqs []http.Header
}

func (h *headersSeen) all() []http.Header {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.reqs)
}

// recordingProxy serves TLS on listen, records each request's headers and
// passes it on to the agent's stream at target, as the agent would see it.
func recordingProxy(t *testing.T, listen, target string) *headersSeen {
	t.Helper()
	seen := &headersSeen{}
	tlsConf, err := stream.ServingTLS("proxy")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", listen, tlsConf)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "https", Host: target})
	rp.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	rp.FlushInterval = -1
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.mu.Lock()
		seen.reqs = append(seen.reqs, r.Header.Clone())
		seen.mu.Unlock()
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return seen
}

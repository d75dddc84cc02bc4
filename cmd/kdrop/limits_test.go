package main

// The bounds a long-running agent or tail keeps: stream clients per agent,
// lines tail holds to merge, pods a selector keeps after their deletion,
// metric series, cached authorization decisions.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kdrop/kdrop/k8s/testenv"
	"github.com/kdrop/kdrop/tracer/nstest"
)

// An agent at its --max-streams refuses one more stream with 503, a message
// that names the limit and the flag, and Retry-After; kdrop tail, reaching
// it through the real API server's pod proxy, shows that message once and
// connects when a slot frees.
func TestAgentStreamLimitAndTailRetry(t *testing.T) {
	env := testenv.Start(t)
	cs := kubernetes.NewForConfigOrDie(env.Config())
	ctx := context.Background()
	token, viewerKC := tailViewer(t, env, cs)

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
	startAgent(t, env.Kubeconfig(), "node-a", ip+":9965", ns.Name, "--max-streams", "1")
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
	base := "http://" + ip + ":9965/events"
	held := get(t, base, map[string]string{"Authorization": "Bearer " + token})
	if held.StatusCode != 200 {
		b, _ := io.ReadAll(held.Body)
		t.Fatalf("first stream: %d %s", held.StatusCode, b)
	}
	bufio.NewReader(held.Body).ReadBytes('\n') // its hello: it is registered
	const refusal = "kdrop agent on node node-a already serves 1 /events streams, its limit: retry later, or raise the limit with kdrop agent --max-streams"
	resp := get(t, base, map[string]string{"Authorization": "Bearer " + token})
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
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
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
}

// tail holds at most maxHeld lines for the merge delay: past that, the
// oldest go out early, in time order, and stderr says so once.
func TestTailMergeHoldsAtMostMaxHeld(t *testing.T) {
	var stderr syncBuffer
	tl := &tailer{agents: streamFlags{delay: time.Hour}, lines: make(chan tailLine), maxHeld: 8, stderr: &stderr}
	var mu sync.Mutex
	var out []tailLine
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		tl.merge(ctx, func(batch []tailLine) {
			mu.Lock()
			out = append(out, batch...)
			mu.Unlock()
		})
		close(done)
	}()
	base := time.Now()
	const n = 40
	for i := range n { // pairs swapped, for the merge to put back in order
		j := i ^ 1
		tl.lines <- tailLine{at: base.Add(time.Duration(j) * time.Millisecond), typ: "drop", line: fmt.Appendf(nil, `{"i":%d}`, j)}
	}
	// Unbuffered: the last line is pushed once the next select runs.
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	early := len(out)
	mu.Unlock()
	if held := n - early; held > 8 || held < 7 {
		t.Errorf("%d lines held with a cap of 8 (%d let go early)", held, early)
	}
	if got := strings.Count(stderr.String(), "more than 8 lines held for --merge-delay 1h0m0s: letting the oldest go early"); got != 1 {
		t.Errorf("stderr said it %d times, want once:\n%s", got, stderr.String())
	}
	cancel()
	<-done
	if len(out) != n {
		t.Fatalf("%d lines out, %d in", len(out), n)
	}
	// The early ones were the oldest, and swaps within the cap are still
	// put right: all in time order.
	for i := range out {
		if want := fmt.Sprintf(`{"i":%d}`, i); string(out[i].line) != want {
			t.Fatalf("line %d out is %s, want %s (early: %d)", i, out[i].line, want, early)
		}
	}
}

// A selected pod deleted stays selected for the deleted window, then not;
// at most max deleted pods are kept, those deleted first forgotten first.
func TestPodSetBounds(t *testing.T) {
	s := newPodSet(200*time.Millisecond, 3)
	s.add("web/a")
	s.remove("web/a", time.Now())
	if !s.has("web", "a") {
		t.Error("a pod deleted just now no longer matches")
	}
	time.Sleep(250 * time.Millisecond)
	if s.has("web", "a") {
		t.Error("a pod deleted past the window still matches")
	}
	now := time.Now()
	for i := range 5 {
		s.remove(fmt.Sprintf("web/p%d", i), now)
	}
	if len(s.deleted) != 3 || len(s.order) != 3 {
		t.Errorf("%d deleted pods kept (%d in order), want the cap, 3", len(s.deleted), len(s.order))
	}
	for i, want := range []bool{false, false, true, true, true} {
		if got := s.has("web", fmt.Sprintf("p%d", i)); got != want {
			t.Errorf("p%d selected: %v, want %v", i, got, want)
		}
	}
	// Back under the same name: live again, no longer a deleted one.
	s.add("web/p4")
	if !s.has("web", "p4") || len(s.deleted) != 2 {
		t.Errorf("a pod back after deletion: selected %v, %d deleted kept", s.has("web", "p4"), len(s.deleted))
	}
}

// --selector against a real API server: a deleted pod still matches for
// --deleted-window, then not.
func TestSelectorForgetsDeletedPods(t *testing.T) {
	env := testenv.Start(t)
	cs := kubernetes.NewForConfigOrDie(env.Config())
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "sel"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createPod(t, cs, "sel", "api", "198.18.9.1", nil)
	f := identityFlags{selector: "app=api", deletedWindow: 2 * time.Second, rest: env.Config()}
	set, err := f.selectPods("sel")
	if err != nil {
		t.Fatal(err)
	}
	if !set.has("sel", "api") {
		t.Fatal("the pod the selector matches is not selected")
	}
	if err := cs.CoreV1().Pods("sel").Delete(ctx, "api", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	for {
		set.mu.RLock()
		_, gone := set.deleted["sel/api"]
		set.mu.RUnlock()
		if gone {
			break
		}
		if time.Since(deleted) > 10*time.Second {
			t.Fatal("the watch never delivered the delete")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !set.has("sel", "api") && time.Since(deleted) < time.Second {
		t.Error("a pod deleted just now no longer matches")
	}
	time.Sleep(2500 * time.Millisecond)
	if set.has("sel", "api") {
		t.Error("a pod deleted past --deleted-window still matches")
	}
}

// kdrop_events_total keeps at most max label sets: past that, the one
// updated least recently goes.
func TestEventSeriesBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kdrop_events_total", Help: "test"},
		[]string{"type", "reason", "namespace", "workload"})
	reg.MustRegister(vec)
	c := newEventCounter(vec, 3)
	job := func(i int) eventLabels { return eventLabels{"drop", "NO_SOCKET", "ci", fmt.Sprintf("Job/run-%d", i)} }
	for i := range 3 {
		c.add(job(i), 1)
	}
	c.add(job(0), 1) // run-1 is now the least recently updated
	c.add(job(3), 5)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "workload" {
					got[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	want := map[string]float64{"Job/run-0": 2, "Job/run-2": 1, "Job/run-3": 5}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("series %v, want %v", got, want)
	}
}

// The stream's authorization cache keeps at most authCacheMax decisions,
// expired ones dropped first.
func TestAuthCacheBounded(t *testing.T) {
	a := newAuthorizer(nil, "", nil)
	fresh := authDecision{status: 200, at: time.Now()}
	for i := range authCacheMax + 10 {
		a.remember(sha256.Sum256([]byte(strconv.Itoa(i))), fresh)
	}
	if len(a.cache) != authCacheMax {
		t.Errorf("%d decisions cached, want the cap, %d", len(a.cache), authCacheMax)
	}
	for k := range a.cache {
		d := a.cache[k]
		d.at = time.Now().Add(-authTTL)
		a.cache[k] = d
	}
	a.remember(sha256.Sum256([]byte("new")), fresh)
	if len(a.cache) != 1 {
		t.Errorf("%d decisions cached after the others expired, want 1", len(a.cache))
	}
}

// The every loops end when run returns, before close frees the tracer's
// maps they read (they used to go on until they noticed ctx).
func TestEveryLoopsEndWithRun(t *testing.T) {
	p, err := newPipeline(context.Background(), watchFlags{output: "json", attach: "auto", id: identityFlags{mode: "off"}}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var calls atomic.Int64
	p.every(context.Background(), time.Millisecond, func() { // not ctx: run's return alone must end it
		p.t.Stats() // reads the tracer's stats map
		calls.Add(1)
	})
	if err := p.run(ctx, func(*record) {}); err != nil {
		t.Fatal(err)
	}
	n := calls.Load()
	p.close()
	time.Sleep(50 * time.Millisecond)
	if n == 0 || calls.Load() != n {
		t.Errorf("the loop ran %d times during run, %d after it returned", n, calls.Load()-n)
	}
}

package main

// kdrop tail against two agents, reached the way a cluster reaches them:
// through the real API server's pod proxy, to pod IPs that are addresses of
// a veth this test creates (the proxy refuses loopback). One
// agent restarts mid-test; tail must keep going and say what it missed.

import (
	"bufio"
	"context"
	"fmt"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kdrop/kdrop/cmd/kdrop/sinks/report"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/stream"
	"github.com/kdrop/kdrop/k8s/testenv"
	"github.com/kdrop/kdrop/tracer/nstest"
)

type agentProc struct {
	cmd  *exec.Cmd
	done chan error
}

// startAgent runs kdrop agent for node with metrics and probes on listen,
// the stream on streamListen, in namespace kdrop (as deploy/ sets
// POD_NAMESPACE), and waits until it is ready.
func startAgent(t *testing.T, kubeconfig, node, listen, streamListen, netns string, extra ...string) *agentProc {
	t.Helper()
	cmd := exec.Command(kdropBin, append([]string{"agent", "--kubeconfig", kubeconfig, "--node", node, "--listen", listen,
		"--stream-listen", streamListen, "--netns", "/run/netns/" + netns, "--type", "drop", "--log-format", "console"}, extra...)...)
	cmd.Env = append(os.Environ(), "POD_NAMESPACE=kdrop")
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &agentProc{cmd: cmd, done: make(chan error, 1)}
	go func() { a.done <- cmd.Wait() }()
	t.Cleanup(func() {
		a.stop()
		if t.Failed() {
			t.Logf("agent %s stderr:\n%s", node, stderr.String())
		}
	})
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get("http://" + listen + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return a
			}
		}
		select {
		case err := <-a.done:
			a.done <- err
			t.Fatalf("agent %s exited: %v\n%s", node, err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent %s not ready", node)
		}
	}
}

func (a *agentProc) stop() {
	if a.cmd.ProcessState == nil {
		a.cmd.Process.Kill()
		err := <-a.done
		a.done <- err
	}
}

// viewerRules are ClusterRole kdrop-viewer's rules in deploy/ (less the
// optional nodes): find the agents, reach them through the pod proxy, ask
// for stream tokens of kdrop-stream.
var viewerRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{""}, Resources: []string{"pods/proxy"}, Verbs: []string{"get"}},
	{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, Verbs: []string{"create"}, ResourceNames: []string{stream.DefaultAccount}},
}

// tailViewer creates the namespace kdrop with the stream's service account
// kdrop-stream (bound to nothing, as deploy/ has it), a ClusterRole
// kdrop-viewer with viewerRules plus extra, and a ServiceAccount "viewer"
// bound to it, and writes a kubeconfig that authenticates as the viewer
// with its own token. It returns that token and the kubeconfig's path.
func tailViewer(t *testing.T, env *testenv.Env, cs kubernetes.Interface, extra ...rbacv1.PolicyRule) (token, kubeconfig string) {
	t.Helper()
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kdrop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts("kdrop").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: stream.DefaultAccount}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	token = saToken(t, cs, "kdrop", "viewer")
	rules := append(slices.Clone(viewerRules), extra...)
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "kdrop-viewer"}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "kdrop-viewer"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "kdrop-viewer"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "kdrop", Name: "viewer"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kc, err := clientcmd.LoadFromFile(env.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, ai := range kc.AuthInfos {
		ai.ClientCertificateData, ai.ClientKeyData, ai.Token = nil, nil, token
	}
	kubeconfig = filepath.Join(t.TempDir(), "viewer.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	return token, kubeconfig
}

// streamToken is a stream token for node, asked for as cs.
func streamToken(t *testing.T, cs kubernetes.Interface, node string) string {
	t.Helper()
	tok, _, err := stream.RequestToken(context.Background(), cs, stream.Account{Namespace: "kdrop", Name: stream.DefaultAccount}, node)
	if err != nil {
		t.Fatalf("a stream token for %s: %v", node, err)
	}
	return tok
}

func TestTailMergesAgentsAndSurvivesRestart(t *testing.T) {
	env := testenv.Start(t)
	cs := kubernetes.NewForConfigOrDie(env.Config())
	ctx := context.Background()
	// A viewer with exactly what tail needs, and nodes for record's header.
	_, viewerKC := tailViewer(t, env, cs, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}})

	// Two "nodes": pod IPs on the host end of a veth whose other end is in
	// a namespace of the test; each agent watches its own scenario namespace.
	peer := nstest.New(t, "podnet")
	dev := fmt.Sprintf("kdv%d", rand.Intn(1e6))
	nstest.Run(t, "ip", "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", peer.Name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", dev).Run() })
	peer.IP(t, "link set eth0 up")
	nstest.Run(t, "ip", "addr", "add", "198.18.50.1/32", "dev", dev)
	nstest.Run(t, "ip", "addr", "add", "198.18.50.2/32", "dev", dev)
	nstest.Run(t, "ip", "link", "set", dev, "up")
	type node struct {
		name, pod, ip string
		ns            *nstest.NS
		agent         *agentProc
	}
	nodes := []*node{{name: "node-a", pod: "kdrop-a", ip: "198.18.50.1"}, {name: "node-b", pod: "kdrop-b", ip: "198.18.50.2"}}
	for _, n := range nodes {
		// The Node object, with the kernel that record puts in its header.
		no, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		no.Status.NodeInfo.KernelVersion = "6.18.0-" + n.name
		if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, no, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		n.ns = nstest.New(t, n.name)
		n.ns.Sh(t, "iptables -A INPUT -p udp --dport 9999 -j DROP")
		n.agent = startAgent(t, env.Kubeconfig(), n.name, n.ip+":9965", n.ip+":9966", n.ns.Name, "--heartbeat", "1s")
		p, err := cs.CoreV1().Pods("kdrop").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: n.pod, Labels: map[string]string{"app.kubernetes.io/name": "kdrop"}},
			Spec:       corev1.PodSpec{NodeName: n.name, Containers: []corev1.Container{{Name: "agent", Image: "kdrop"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: n.ip, PodIPs: []corev1.PodIP{{IP: n.ip}}}
		if _, err := cs.CoreV1().Pods("kdrop").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// tail runs as users run it: "kubectl kdrop tail", kubectl finding
	// kubectl-kdrop on PATH as make install puts it there.
	plugins := t.TempDir()
	if err := os.Symlink(kdropBin, filepath.Join(plugins, "kubectl-kdrop")); err != nil {
		t.Fatal(err)
	}
	kubectl := testenv.Bin(t, "kubectl")
	list, err := exec.Command("env", "PATH="+plugins+":/usr/bin:/bin", kubectl, "plugin", "list").CombinedOutput()
	if err != nil || !strings.Contains(string(list), filepath.Join(plugins, "kubectl-kdrop")) {
		t.Fatalf("kubectl plugin list does not find kubectl-kdrop: %v\n%s", err, list)
	}
	help, err := exec.Command("env", "PATH="+plugins+":/usr/bin:/bin", kubectl, "kdrop", "tail", "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(help), "kubectl kdrop tail [flags]") {
		t.Fatalf("kubectl kdrop tail --help: %v\n%s", err, help)
	}
	tail := exec.Command(kubectl, "kdrop", "tail", "--kubeconfig", viewerKC, "-o", "json", "--type", "drop", "--duration", "120s", "--merge-delay", "300ms", "--idle-timeout", "3s")
	tail.Env = append(os.Environ(), "PATH="+plugins+":"+os.Getenv("PATH"))
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
	// The same window recorded for the incident ticket.
	recording := filepath.Join(t.TempDir(), "cluster.jsonl.gz")
	recReady := filepath.Join(t.TempDir(), "ready")
	rec := exec.Command(kdropBin, "record", "--from", "tail", "--kubeconfig", viewerKC, "-o", recording, "--type", "drop", "--merge-delay", "300ms", "--ready-file", recReady)
	var recErr syncBuffer
	rec.Stderr = &recErr
	if err := rec.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		rec.Process.Kill()
		rec.Wait()
		if t.Failed() {
			t.Logf("record stderr:\n%s", recErr.String())
		}
	})
	// --ready-file: every agent found at the start streams to the recorder.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(recReady); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("record --from tail never wrote its --ready-file\n%s", recErr.String())
		}
	}

	var mu sync.Mutex
	var lines []map[string]any
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			m, err := decodeMap(sc.Bytes())
			if err != nil {
				t.Errorf("tail printed a non-JSON line: %s", sc.Text())
				continue
			}
			mu.Lock()
			lines = append(lines, m)
			mu.Unlock()
		}
	}()
	// waitFor sends drops on a node until tail shows one from it after
	// line index from, and returns the index of that line.
	waitFor := func(n *node, from int) int {
		t.Helper()
		for deadline := time.Now().Add(45 * time.Second); time.Now().Before(deadline); {
			n.ns.SendUDP(t, "127.0.0.1", 9999, 1)
			time.Sleep(300 * time.Millisecond)
			mu.Lock()
			for i := from; i < len(lines); i++ {
				if lines[i]["type"] == "drop" && lines[i]["node"] == n.name {
					mu.Unlock()
					return i
				}
			}
			mu.Unlock()
		}
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("tail showed no drop from %s after line %d; lines: %v", n.name, from, lines)
		return 0
	}
	waitFor(nodes[0], 0)
	waitFor(nodes[1], 0)

	// node-a's agent restarts (as when its pod is deleted and recreated).
	nodes[0].agent.stop()
	mu.Lock()
	mark := len(lines)
	mu.Unlock()
	time.Sleep(time.Second)
	nodes[0].agent = startAgent(t, env.Kubeconfig(), "node-a", nodes[0].ip+":9965", nodes[0].ip+":9966", nodes[0].ns.Name, "--heartbeat", "1s")
	// noticeOn waits for tail to say msg about node after line index from;
	// notice, about node-a.
	var noticeOn func(node, msg string, from int) int
	notice := func(msg string, from int) int { return noticeOn("node-a", msg, from) }
	noticeOn = func(node, msg string, from int) int {
		t.Helper()
		for deadline := time.Now().Add(45 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			mu.Lock()
			for i := from; i < len(lines); i++ {
				if m, _ := lines[i]["message"].(string); lines[i]["type"] == "notice" && lines[i]["node"] == node && strings.Contains(m, msg) {
					mu.Unlock()
					return i
				}
			}
			mu.Unlock()
		}
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("tail never said %q after line %d; lines: %v", msg, from, lines)
		return 0
	}
	lostAt := notice("stream from agent kdrop-a on node node-a lost", mark)
	back := notice("connected to agent kdrop-a: events on node node-a between", lostAt)
	mu.Lock()
	gapFrom, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(lines[back]["gap_from"]))
	gapTo, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(lines[back]["gap_to"]))
	mu.Unlock()
	if gapFrom.IsZero() || !gapTo.After(gapFrom) {
		t.Errorf("the reconnect notice should carry the gap, got %v", lines[back])
	}
	waitFor(nodes[0], back) // node-a's events flow again
	waitFor(nodes[1], mark)

	// node-b's agent goes silent without closing its connection (SIGSTOP,
	// as a hung or cut-off node): tail calls it lost within its
	// --idle-timeout, and once it runs again (SIGCONT) a gap notice closes
	// the window and its events flow.
	mu.Lock()
	mark = len(lines)
	mu.Unlock()
	b := nodes[1].agent.cmd.Process
	stopped := time.Now()
	b.Signal(syscall.SIGSTOP)
	t.Cleanup(func() { b.Signal(syscall.SIGCONT) })
	silentAt := noticeOn("node-b", "stream from agent kdrop-b on node node-b lost (no line, not even a heartbeat, for 3s)", mark)
	b.Signal(syscall.SIGCONT)
	backB := noticeOn("node-b", "connected to agent kdrop-b: events on node node-b between", silentAt)
	// The gap starts when the stream last delivered anything (a heartbeat
	// a second at most before the stop), not when tail noticed the silence.
	mu.Lock()
	gapB, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(lines[backB]["gap_from"]))
	mu.Unlock()
	if gapB.IsZero() || gapB.After(stopped.Add(500*time.Millisecond)) || gapB.Before(stopped.Add(-2*time.Second)) {
		t.Errorf("node-b's gap starts at %v; the agent stopped at %v and its last heartbeat came at most 1 s before", gapB, stopped)
	}
	waitFor(nodes[1], backB)

	// Stop the recording as an operator does (Ctrl-C); its report shows
	// both nodes with their kernels, events from both, and node-a's gap.
	rec.Process.Signal(os.Interrupt)
	if err := rec.Wait(); err != nil {
		t.Fatalf("record --from tail: %v\n%s", err, recErr.String())
	}
	f, err := os.Open(recording)
	if err != nil {
		t.Fatal(err)
	}
	r, err := report.Read(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(r.Header.Nodes); r.Header.From != "tail" || got != "[{node-a 6.18.0-node-a} {node-b 6.18.0-node-b}]" {
		t.Errorf("header: from %q, nodes %s", r.Header.From, got)
	}
	perNode := map[string]uint64{}
	for _, fl := range r.Flows {
		perNode[fl.Node] += fl.Count
	}
	if perNode["node-a"] == 0 || perNode["node-b"] == 0 || r.Trailer == nil {
		t.Errorf("recording: occurrences per node %v, trailer %v", perNode, r.Trailer)
	}
	if len(r.Gaps) != 1 || r.Gaps[0].Node != "node-a" || !r.Gaps[0].To.After(r.Gaps[0].From) {
		t.Errorf("recording gaps: %+v, want one on node-a", r.Gaps)
	}
	var md strings.Builder
	if err := report.WriteMarkdown(&md, r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md.String(), "1 gap without an agent stream") || !strings.Contains(md.String(), "node-a from ") {
		t.Errorf("report should name the gap:\n%s", md.String())
	}

	mu.Lock()
	defer mu.Unlock()
	var last time.Time
	for i, m := range lines {
		if m["type"] != "drop" {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, m["time"].(string))
		if err != nil {
			t.Fatal(err)
		}
		if at.Before(last) {
			t.Errorf("line %d out of time order: %v after %v", i, at, last)
		}
		last = at
	}
}

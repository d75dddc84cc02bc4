package e2e

// A NetworkPolicy drop in the real cluster, enforced by a real engine:
// kube-router's firewall, which deploy/cluster runs for this test (a test
// fixture only; `cluster.sh kube-router start`, not for the whole suite:
// see cluster.sh for what it would change for the other incidents).
// In namespace bank a default-deny ingress policy isolates every pod, and
// allow-api lets pods labelled role=api reach the vault on 8080. The
// intruder (no label) keeps dialing the vault, and kube-router REJECTs it;
// the api pod keeps dialing too, and connects. While that traffic runs,
// kdrop tail must name kube-router's rule (the vault's KUBE-POD-FW chain)
// and both views of it: the policies kube-router ran the packet through
// and kdrop's own evaluation of the policies, agreeing; count the drops
// as the rule's counter does; show nothing of the api pod; and post the
// NetworkPolicyDenied Event on the vault with the stream's count.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
)

const bankWorkloads = `
apiVersion: v1
kind: Namespace
metadata: {name: bank}
---
apiVersion: v1
kind: Pod
metadata: {name: vault, namespace: bank, labels: {app: vault}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: vault, image: ` + testappImage + `, imagePullPolicy: Never, args: [serve, -port, "8080"]}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: bank, labels: {role: api}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: api, image: ` + testappImage + `, imagePullPolicy: Never, args: [sleep]}
---
apiVersion: v1
kind: Pod
metadata: {name: intruder, namespace: bank}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: intruder, image: ` + testappImage + `, imagePullPolicy: Never, args: [sleep]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: bank}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-api, namespace: bank}
spec:
  podSelector: {matchLabels: {app: vault}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: api}}}]
    ports: [{port: 8080}]
`

func TestNetworkPolicy(t *testing.T) {
	t.Cleanup(func() {
		kubectlErr("delete", "namespace", "bank", "--wait=false")
		kubectlErr("delete", "-k", "deploy/kustomize", "--ignore-not-found", "--wait=false")
		kubectlErr("delete", "clusterrolebinding", "e2e-np-operator", "--ignore-not-found")
		kubectlErr("-n", "default", "delete", "serviceaccount", "np-operator", "--ignore-not-found")
	})
	dumpOnFailure(t)
	// An agent of an earlier test may still be going away, and its pods:
	// kube-router syncs (renaming its chains) when pods go.
	kubectlErr("wait", "--for=delete", "namespace/kdrop", "namespace/shop", "--timeout=120s")
	if out, err := sh("deploy/cluster/cluster.sh", "kube-router", "start"); err != nil {
		t.Fatalf("cluster.sh kube-router start: %v\n%s\n%s", err, out, kubeRouterLog())
	}
	t.Cleanup(func() {
		if out, err := sh("deploy/cluster/cluster.sh", "kube-router", "stop"); err != nil {
			t.Errorf("cluster.sh kube-router stop: %v\n%s", err, out)
		}
	})
	for deadline := time.Now().Add(60 * time.Second); findAgentPID() != 0; time.Sleep(500 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("an agent of an earlier test is still running")
		}
	}

	applyYAML(t, bankWorkloads)
	kubectl(t, "-n", "bank", "wait", "pod", "--all", "--for=condition=Ready", "--timeout=120s")
	ip := func(pod string) string {
		return strings.TrimSpace(kubectl(t, "-n", "bank", "get", "pod", pod, "-o", "jsonpath={.status.podIP}"))
	}
	vaultIP, apiIP, intruderIP := ip("vault"), ip("api"), ip("intruder")

	kubectl(t, "create", "serviceaccount", "np-operator", "-n", "default")
	kubectl(t, "create", "clusterrolebinding", "e2e-np-operator", "--clusterrole=kdrop-viewer", "--serviceaccount=default:np-operator")
	operator := operatorKubeconfig(t, strings.TrimSpace(kubectl(t, "create", "token", "np-operator", "-n", "default", "--duration=1h")))
	kubectl(t, "apply", "-k", "deploy/kustomize")
	// The kernel here is shared with other tests, whose drop storms in
	// network namespaces of their own would fill the agent's queue of
	// drops waiting for their rule ("too many drops waiting"): the agent
	// traces the cluster's pod range only, as on a noisy node an operator
	// would with --cidr.
	kubectl(t, "-n", "kdrop", "patch", "daemonset", "kdrop", "--type=json",
		"-p", `[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--cidr=10.244.0.0/24"}]`)
	kubectl(t, "-n", "kdrop", "rollout", "status", "daemonset/kdrop", "--timeout=180s")
	tail := startTail(t, operator, "-n", "bank")
	agent := sampleAgent(t)
	defer agent.done("network policy")

	// kube-router's chain for the vault runs both policies, and stays
	// (pods created and the agent deployed: no sync is due while the test
	// counts).
	var chain string
	for deadline, same := time.Now().Add(60*time.Second), 0; same < 4; time.Sleep(500 * time.Millisecond) {
		ch, _, rules := vaultChain(t)
		if ch != "" && ch == chain && slices.ContainsFunc(rules, func(r string) bool { return strings.Contains(r, `"run through nw policy allow-api"`) }) &&
			slices.ContainsFunc(rules, func(r string) bool { return strings.Contains(r, `"run through nw policy default-deny"`) }) {
			same++
		} else {
			same = 0
		}
		chain = ch
		if time.Now().After(deadline) {
			t.Fatalf("kube-router has not built a lasting chain for the vault with both policies in 60 s:\n%s", strings.Join(rules, "\n"))
		}
	}
	isDrop := func(e *event) bool {
		return e.Type == "drop" && e.Reason == "NETFILTER_DROP" && e.Dst == vaultIP && e.Dport == 8080 && (e.Src == intruderIP || e.Summary)
	}
	// One refused dial first: kdrop's first read of the node's rules has
	// no earlier counters to take differences from, so every rule that
	// ever dropped (the harness's guard, from earlier tests) may be the
	// first drop's as well, and kdrop lists them as candidates. The drops
	// counted below come after it, once it is all out.
	kubectl(t, "-n", "bank", "exec", "intruder", "--", "/testapp", "dial", "-n", "1", "-timeout", "2s", vaultIP+":8080")
	tail.waitFor(t, 0, 30*time.Second, "the intruder's first drop", func(evs []event) bool { return sum(evs, isDrop) > 0 })
	time.Sleep(3 * time.Second)
	_, before, _ := vaultChain(t)
	mark := tail.mark()

	// The traffic runs until the end of the checks below.
	var mu sync.Mutex // guards the probes' outputs
	probe := func(pod string) (*exec.Cmd, *bytes.Buffer) {
		cmd := exec.Command(kubectlBin, "--kubeconfig", kubeconfig, "-n", "bank", "exec", pod, "--",
			"/testapp", "probe", "-read", "-every", "250ms", "-timeout", "2s", "-for", "150s", vaultIP+":8080")
		var out bytes.Buffer
		cmd.Stdout = &lockedWriter{mu: &mu, w: &out}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, &out
	}
	intruder, intruderOut := probe("intruder")
	api, apiOut := probe("api")
	stop := func() {
		for pod, cmd := range map[string]*exec.Cmd{"intruder": intruder, "api": api} {
			if cmd.ProcessState == nil {
				cmd.Process.Kill()
				cmd.Wait()
				kubectlErr("-n", "bank", "exec", pod, "--", "/testapp", "pkill", "probe")
			}
		}
	}
	defer stop()

	tail.waitFor(t, mark, 60*time.Second, "the intruder's drops", func(evs []event) bool { return sum(evs, isDrop) >= 10 })

	// While the traffic runs, the stream never counts more than the
	// rule's counter, and catches up with what the counter said.
	for i := 0; i < 4; i++ {
		seen := sum(tail.since(mark), isDrop)
		ch, now, _ := vaultChain(t)
		if ch != chain {
			t.Fatalf("kube-router replaced the vault's chain (%s, now %s), restarting its counter, while the test counted", chain, ch)
		}
		counted := now - before
		if seen > counted {
			t.Errorf("kdrop tail shows %d drops to the vault, more than kube-router's REJECT counted (%d)", seen, counted)
		}
		tail.waitFor(t, mark, 15*time.Second, fmt.Sprintf("the %d drops kube-router's REJECT counted", counted),
			func(evs []event) bool { return sum(evs, isDrop) >= counted })
		time.Sleep(time.Second)
	}

	// Every drop names kube-router's rule and both views of it, agreeing.
	reject := "rule to REJECT traffic destined for POD name:vault namespace: bank"
	wantPolicies := []netfilter.PolicyRef{{Namespace: "bank", Name: "allow-api"}, {Namespace: "bank", Name: "default-deny"}}
	evs := tail.since(mark)
	checked := 0
	for _, e := range evs {
		if !isDrop(&e) || e.Summary {
			continue
		}
		checked++
		r := e.Rule
		if r == nil || r.How != netfilter.HowCounter || r.Table != "filter" || r.Chain != chain || r.Comment != reject ||
			r.Verdict != "REJECT icmp-port-unreachable" {
			t.Errorf("the drop should name kube-router's REJECT in %s (%q), by its counter: %s", chain, reject, e.raw)
			continue
		}
		k := r.K8s
		if k == nil || k.Kind != netfilter.MeaningNetworkPolicy || k.Engine != "kube-router" || k.Pod != "bank/vault" || k.Direction != "ingress" ||
			!slices.Equal(k.NetworkPolicies, wantPolicies) || k.Evaluation != netfilter.EvaluationAgrees || k.Evaluated != nil {
			t.Errorf("rule.k8s should say: network-policy by kube-router for bank/vault, ingress, policies %v, kdrop's evaluation agrees: %s", wantPolicies, e.raw)
			continue
		}
		mustContain(t, "the drop's sentence", k.Text, "NetworkPolicies bank/allow-api, bank/default-deny isolate bank/vault for ingress",
			"none allows TCP 8080 from bank/intruder", "kube-router's rule agrees")
		if e.SrcK8s == nil || e.SrcK8s.Name != "intruder" || e.DstK8s == nil || e.DstK8s.Name != "vault" {
			t.Errorf("the drop should name the intruder and the vault: %s", e.raw)
		}
	}
	if checked == 0 {
		t.Fatalf("no drop of its own line to check; lines:\n%s", tail.tailLog(30))
	}

	// The labelled client connects, and kdrop shows nothing of it.
	stop()
	results := func(out *bytes.Buffer) map[string]int {
		mu.Lock()
		defer mu.Unlock()
		n := map[string]int{}
		for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			var d struct{ Result string }
			if json.Unmarshal([]byte(l), &d) == nil {
				n[d.Result]++
			}
		}
		return n
	}
	ok, refused := results(apiOut), results(intruderOut)
	if ok["connected"] < 20 || len(ok) != 1 {
		t.Errorf("the api pod (role=api) should connect every time: %v", ok)
	}
	if refused["ECONNREFUSED"] == 0 || refused["connected"] > 0 {
		t.Errorf("the intruder should be refused (kube-router's REJECT), never connect: %v", refused)
	}

	// Once the traffic has stopped, the stream's count is the rule's.
	var seen, counted uint64
	for deadline, stable := time.Now().Add(60*time.Second), 0; stable < 3; time.Sleep(2 * time.Second) {
		ch, now, _ := vaultChain(t)
		if ch != chain {
			t.Fatalf("kube-router replaced the vault's chain (%s, now %s), restarting its counter, while the test counted", chain, ch)
		}
		s, c := sum(tail.since(mark), isDrop), now-before
		if s == seen && c == counted && s == c && c > 0 {
			stable++
		} else {
			stable = 0
		}
		seen, counted = s, c
		if time.Now().After(deadline) {
			t.Fatalf("drops to the vault: kube-router's REJECT counted %d, kdrop tail %d; last lines:\n%s", c, s, tail.tailLog(30))
		}
	}
	// Nothing of the api pod's traffic is a NetworkPolicy's (or any
	// netfilter rule's) drop, nor refused. (The kernel may drop a frame
	// of its connections' teardown elsewhere, e.g. one the bridge floods
	// to a pod it is not for: not a policy's doing, and not kdrop's to
	// hide; those are logged.)
	for _, e := range tail.since(mark) {
		if e.Src != apiIP && e.Dst != apiIP || e.Type != "drop" && e.Type != "unreach" {
			continue
		}
		if e.Type == "unreach" || e.Reason == "NETFILTER_DROP" || e.Rule != nil {
			t.Errorf("the allowed client's traffic should not be refused or dropped by a rule: %s", e.raw)
		} else {
			t.Logf("a kernel drop of the allowed client's connections, not a rule's: %s", e.raw)
		}
	}
	fmt.Printf("KDROP-E2E network policy: %d dials of the intruder %v, of the api pod %v; kube-router's REJECT counted %d, kdrop tail %d NETFILTER_DROP, each naming its rule, the policies and kdrop's agreeing evaluation\n",
		refused["ECONNREFUSED"]+refused["timeout"], refused, ok, counted, seen)
	// The Event counts every drop to the vault since the agent started,
	// the first one's too.
	waitK8sEventIn(t, "bank", "Pod", "vault", "NetworkPolicyDenied", sum(tail.since(0), isDrop), 45*time.Second)
}

// vaultChain reads kube-router's firewall chain for the vault pod: its
// name, its REJECT's packet counter and its rules (iptables-save -c).
func vaultChain(t *testing.T) (chain string, rejected uint64, rules []string) {
	t.Helper()
	out, err := exec.Command("iptables-save", "-c", "-t", "filter").Output()
	if err != nil {
		t.Fatalf("iptables-save: %v", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, `"rule to REJECT traffic destined for POD name:vault namespace: bank"`) && strings.Contains(l, "-j REJECT") {
			var bytes uint64
			if _, err := fmt.Sscanf(l, "[%d:%d] -A %s", &rejected, &bytes, &chain); err != nil {
				t.Fatalf("iptables-save -c: %q: %v", l, err)
			}
		}
	}
	if chain == "" {
		return "", 0, nil
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "-A "+chain+" ") {
			rules = append(rules, l)
		}
	}
	return chain, rejected, rules
}

// kubeRouterLog is the tail of the cluster's kube-router log, read after
// a failed start (cluster.sh prints it too, as it was at the failure).
func kubeRouterLog() string {
	p := filepath.Join(clusterDir, "logs", "kube-router.log")
	b, err := os.ReadFile(p)
	if err != nil {
		return fmt.Sprintf("kube-router's log: %v", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return fmt.Sprintf("last lines of %s now:\n%s", p, strings.Join(lines[max(0, len(lines)-25):], "\n"))
}

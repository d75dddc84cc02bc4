package k8s

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// timedLookup runs LookupIP and returns how long it took. A lookup slower
// than max is retried: a lookup that blocked on the API would be slow every
// time, while a one-off is the OS scheduler on a busy 2-core machine.
func timedLookup(t testing.TB, r *Resolver, ip netip.Addr, limit time.Duration) (Endpoint, time.Duration) {
	t.Helper()
	var best time.Duration
	var ep Endpoint
	for try := 0; try < 3; try++ {
		start := time.Now()
		ep = r.LookupIP(ip, 0, time.Time{})
		d := time.Since(start)
		if try == 0 || d < best {
			best = d
		}
		if d < limit {
			return ep, d
		}
	}
	t.Errorf("LookupIP(%s) took %v three times in a row (limit %v)", ip, best, limit)
	return ep, best
}

// lookupLoop hammers LookupIP until stop is closed and records the slowest
// call (after timedLookup's retries).
func lookupLoop(t testing.TB, r *Resolver, ips []netip.Addr, stop chan struct{}) (wait func() (n int64, slowest time.Duration)) {
	var n atomic.Int64
	var slowest atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_, d := timedLookup(t, r, ips[i%len(ips)], time.Millisecond)
			if int64(d) > slowest.Load() {
				slowest.Store(int64(d))
			}
			if n.Add(1)%256 == 0 {
				time.Sleep(100 * time.Microsecond) // leave the CPU to the API server
			}
		}
	})
	return func() (int64, time.Duration) {
		wg.Wait()
		return n.Load(), time.Duration(slowest.Load())
	}
}

func countLogs(logs *observer.ObservedLogs, level zapcore.Level, snippet string) int {
	return logs.FilterLevelExact(level).FilterMessageSnippet(snippet).Len()
}

// TestAPIServerRestart stops the API server under a synced Resolver: lookups
// keep answering at once (Unresolved, with the identities known before), the
// condition is logged once, and after the restart resolution resumes by
// itself — a pod created after the restart resolves — with one recovery log.
func TestAPIServerRestart(t *testing.T) {
	it := startEnv(t)
	log, logs := testLogger(t)
	r := it.resolver(log, "")
	it.sync(r)
	it.namespace("outage")
	it.pod(podSpec{ns: "outage", name: "before", node: "node-a", ips: []string{"10.244.7.1"}, ready: true})
	eventually(t, 10*time.Second, resolvesTo(r, "10.244.7.1", 0, KindPod, "outage", "before"))
	ips := []netip.Addr{netip.MustParseAddr("10.244.7.1"), netip.MustParseAddr("10.244.7.2"), netip.MustParseAddr("10.99.99.99")}

	// Lookups run all along, through the stop and the restart.
	stop := make(chan struct{})
	wait := lookupLoop(t, r, ips, stop)

	stopAt := time.Now()
	it.env.StopAPIServer(t)
	t.Logf("API server stopped in %v", time.Since(stopAt).Round(time.Millisecond))
	detect := eventually(t, 30*time.Second, func() string {
		if st := r.Status(); st.Healthy || st.Condition != ConditionUnreachable {
			return fmt.Sprintf("still healthy: %+v", st)
		}
		return ""
	})
	t.Logf("outage noticed %v after the stop returned; status %+v", detect, r.Status())

	// Down: every lookup answers within 1 ms, with what is known.
	time.Sleep(3 * time.Second) // let the informers retry a few times
	for range 1000 {
		ep, _ := timedLookup(t, r, ips[0], time.Millisecond)
		if ep.Kind != KindPod || ep.Name != "before" || !ep.Unresolved {
			t.Fatalf("while down: %s", describe(ep))
		}
		if ep, _ := timedLookup(t, r, ips[2], time.Millisecond); ep.Kind != "" || !ep.Unresolved {
			t.Fatalf("unknown IP while down: %s", describe(ep))
		}
	}
	if st := r.Status(); st.LastError == "" || st.Synced != true {
		t.Errorf("status while down: %+v", st)
	}

	restartCalled := time.Now()
	it.env.StartAPIServer(t)
	restarted := time.Now()
	recovered := eventually(t, 60*time.Second, func() string {
		if st := r.Status(); !st.Healthy || st.Condition != ConditionOK {
			return fmt.Sprintf("not recovered: %+v", st)
		}
		return ""
	})
	t.Logf("API server restarted and ready in %v; resolver healthy %v after that (%v after the restart began)",
		restarted.Sub(restartCalled).Round(time.Millisecond), recovered.Round(time.Millisecond), time.Since(restartCalled).Round(time.Millisecond))

	// A pod created after the restart resolves.
	it.pod(podSpec{ns: "outage", name: "after", node: "node-a", ips: []string{"10.244.7.2"}, ready: true})
	resolved := eventually(t, 60*time.Second, resolvesTo(r, "10.244.7.2", 0, KindPod, "outage", "after"))
	t.Logf("pod created after the restart resolved %v after its status was set (%v after the restart)",
		resolved.Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond))
	eventually(t, 10*time.Second, resolvesTo(r, "10.244.7.1", 0, KindPod, "outage", "before"))

	close(stop)
	n, slowest := wait()
	t.Logf("%d lookups during the stop and restart, slowest %v", n, slowest)

	if got := countLogs(logs, zapcore.WarnLevel, "unreachable"); got != 1 {
		t.Errorf("%d 'unreachable' warnings, want 1", got)
	}
	if got := logs.FilterLevelExact(zapcore.WarnLevel).Len() + logs.FilterLevelExact(zapcore.ErrorLevel).Len(); got != 1 {
		t.Errorf("%d warnings/errors in all, want 1: %v", got, logs.FilterLevelExact(zapcore.WarnLevel).All())
	}
	if got := countLogs(logs, zapcore.InfoLevel, "recovered"); got != 1 {
		t.Errorf("%d recovery logs, want 1", got)
	}
}

// TestRBAC starts a Resolver as a user with no rights: it starts, lookups are
// Unresolved, Status says forbidden, and that is logged once. Granting the
// required resources makes lookups resolve (workload inferred, since
// ReplicaSets are still denied); granting ClusterRoleRules makes it fully
// healthy, with one recovery log.
func TestRBAC(t *testing.T) {
	it := startEnv(t)
	ctx := t.Context()
	it.namespace("rbac")
	// A Deployment-style pod: the RS name ends in the pod-template-hash.
	it.pod(podSpec{ns: "rbac", name: "api-6c8d5f7b4-q2w3e", node: "node-a", ips: []string{"10.244.8.1"}, ready: true,
		labels: map[string]string{"pod-template-hash": "6c8d5f7b4"},
		owner:  ownerRef("ReplicaSet", "api-6c8d5f7b4", "11111111-2222-4333-8444-555555555555", "apps/v1")})

	const user = "kdrop-agent"
	log, logs := testLogger(t)
	r := it.resolver(log, it.env.UserKubeconfig(user))
	eventually(t, 30*time.Second, func() string {
		if st := r.Status(); !st.Forbidden || st.Condition != ConditionForbidden || st.Healthy {
			return fmt.Sprintf("not forbidden: %+v", st)
		}
		return ""
	})
	time.Sleep(4 * time.Second) // informers retry several times
	ip := netip.MustParseAddr("10.244.8.1")
	if ep, _ := timedLookup(t, r, ip, time.Millisecond); ep.Kind != "" || !ep.Unresolved {
		t.Errorf("lookup while forbidden: %s", describe(ep))
	}
	st := r.Status()
	t.Logf("forbidden: condition %s, last error %q", st.Condition, st.LastError)
	if st.Synced || st.LastError == "" {
		t.Errorf("status while forbidden: %+v", st)
	}
	if got := logs.FilterLevelExact(zapcore.WarnLevel).Len(); got != 1 || countLogs(logs, zapcore.WarnLevel, "forbidden") != 1 {
		t.Errorf("%d warnings while forbidden, want exactly one 'forbidden': %v", got, logs.FilterLevelExact(zapcore.WarnLevel).All())
	}

	grant := func(name string, rules []rbacv1.PolicyRule) {
		t.Helper()
		if _, err := it.admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := it.admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// The required resources only (the first two rules).
	granted := time.Now()
	grant("kdrop-required", ClusterRoleRules()[:2])
	eventually(t, 90*time.Second, func() string {
		ep := r.LookupIP(ip, 0, time.Time{})
		if ep.Kind != KindPod || ep.Unresolved || ep.WorkloadKind != "Deployment" || ep.WorkloadName != "api" {
			return fmt.Sprintf("got %s; status %+v", describe(ep), r.Status())
		}
		return ""
	})
	t.Logf("resolving %v after the required rights were granted", time.Since(granted).Round(time.Millisecond))
	if st := r.Status(); !st.Healthy || !st.Forbidden {
		t.Errorf("required rights only: want healthy and still forbidden (replicasets, jobs): %+v", st)
	}
	if got := countLogs(logs, zapcore.InfoLevel, "recovered"); got != 0 {
		t.Errorf("recovery logged while replicasets are still forbidden")
	}

	// Everything ClusterRoleRules asks for.
	granted = time.Now()
	grant("kdrop", ClusterRoleRules())
	eventually(t, 90*time.Second, func() string {
		if st := r.Status(); st.Condition != ConditionOK || st.Forbidden || !st.Healthy {
			return fmt.Sprintf("status %+v", st)
		}
		return ""
	})
	t.Logf("fully healthy %v after ClusterRoleRules were granted", time.Since(granted).Round(time.Millisecond))
	if got := countLogs(logs, zapcore.InfoLevel, "recovered"); got != 1 {
		t.Errorf("%d recovery logs, want 1", got)
	}
	if got := logs.FilterLevelExact(zapcore.WarnLevel).Len(); got != 1 {
		t.Errorf("%d warnings in all, want 1: %v", got, logs.FilterLevelExact(zapcore.WarnLevel).All())
	}
}

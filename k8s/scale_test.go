package k8s

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

func resourceQuantity(s string) resource.Quantity { return resource.MustParse(s) }

func intOrStr(i int) intstr.IntOrString { return intstr.FromInt(i) }

// BenchmarkCluster10k is the scale benchmark against a real API server:
// 10,000 pods (IPs set through the status subresource, spread over 100
// nodes, owned by 500 Deployment-style ReplicaSets), 2,000 Services with
// ClusterIPs and an EndpointSlice each (5 pod endpoints). It reports how
// long creating them took, then starts a Resolver in a child process (so
// that nothing of the test's own client counts) and reports its sync time,
// heap in use after GC and RSS; then LookupIP ns/op and allocs/op on that
// data, hits and misses.
//
//	go test -run '^$' -bench Cluster10k -benchmem -timeout 30m ./k8s/
//
// It takes minutes (creating the objects is most of it): with -short it is
// skipped, and `go test -bench . ./k8s/` needs a -timeout above the default
// 10 minutes on a busy machine.
// KDROP_SCALE_PODS and KDROP_SCALE_SERVICES change the counts.
func BenchmarkCluster10k(b *testing.B) {
	if testing.Short() {
		b.Skip("-short: creating 10,000 pods takes minutes")
	}
	nPods, nServices := envInt("KDROP_SCALE_PODS", 10000), envInt("KDROP_SCALE_SERVICES", 2000)
	it := startEnv(b)
	podIPs, svcIPs := it.populate(nPods, nServices)

	res := runScaleChild(b, it.env.Kubeconfig())
	// Benchmark logs are not shown for a benchmark with sub-benchmarks:
	// the summary goes to stdout.
	fmt.Printf("resolver (child process): synced %d pods / %d IPs in %.2fs; heap in use %.1f MiB (alloc %.1f MiB, Go sys %.1f MiB); "+
		"RSS %.1f MiB (before Start %.1f, after FreeOSMemory %.1f, peak %.1f); one index rebuild %.1f ms\n",
		res.Pods, res.IPs, res.SyncSeconds, res.HeapInuseMiB, res.HeapAllocMiB, res.SysMiB,
		res.RSSMiB, res.RSSBaseMiB, res.RSSFreedMiB, res.RSSPeakMiB, res.RebuildMillis)
	b.Run("Resolver", func(b *testing.B) {
		b.ReportMetric(res.SyncSeconds, "sync-s")
		b.ReportMetric(res.HeapInuseMiB, "heap-inuse-MiB")
		b.ReportMetric(res.RSSMiB, "rss-MiB")
		b.ReportMetric(res.RSSPeakMiB, "rss-peak-MiB")
		b.ReportMetric(res.RebuildMillis, "rebuild-ms")
	})

	// Lookups on the same data, in this process.
	start := time.Now()
	r := it.resolver(zap.NewNop(), "")
	it.sync(r)
	fmt.Printf("resolver (this process): synced in %v\n", time.Since(start).Round(time.Millisecond))
	// No index rebuild pending: the lookups measure lookups.
	eventually(b, 30*time.Second, func() string {
		if r.changes.Load() != r.built.Load() {
			return "index rebuild pending"
		}
		return ""
	})
	runtime.GC()
	now := time.Now()
	// Random order: each lookup misses the CPU caches, the worst case; a
	// tracer mostly sees a few hot IPs again and again ("hot").
	shuffle := func(ips []netip.Addr) []netip.Addr {
		ips = slices.Clone(ips)
		rand.New(rand.NewPCG(1, 2)).Shuffle(len(ips), func(i, j int) { ips[i], ips[j] = ips[j], ips[i] })
		return ips
	}
	lookups := []struct {
		name string
		ips  []netip.Addr
		kind string
	}{
		{"LookupIP/hit-pod-hot", podIPs[:1], KindPod},
		{"LookupIP/hit-pod-random", shuffle(podIPs), KindPod},
		{"LookupIP/hit-service-random", shuffle(svcIPs), KindService},
		{"LookupIP/miss", missIPs(1000), ""},
	}
	for _, l := range lookups {
		if ep := r.LookupIP(l.ips[0], 80, now); ep.Kind != l.kind || ep.Unresolved {
			b.Fatalf("%s: %s", l.name, describe(ep))
		}
		b.Run(l.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				_ = r.LookupIP(l.ips[i%len(l.ips)], 80, now)
				i++
			}
		})
	}
}

func missIPs(n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range out {
		out[i] = netip.AddrFrom4([4]byte{172, 31, byte(i / 256), byte(i % 256)})
	}
	return out
}

// populate creates the benchmark's objects with 32 concurrent clients and
// returns the pods' and Services' IPs.
func (it *itest) populate(nPods, nServices int) (podIPs, svcIPs []netip.Addr) {
	it.t.Helper()
	ctx := it.t.Context()
	const nNS, nNodes, nRS, workers = 50, 100, 500, 32
	for i := range nNS {
		it.namespace(fmt.Sprintf("scale-%d", i))
	}
	podIPs = make([]netip.Addr, nPods)
	podNames := make([]string, nPods)
	var failed atomic.Value
	run := func(n int, work func(kubernetes.Interface, int) error) time.Duration {
		start := time.Now()
		var next atomic.Int64
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= n || failed.Load() != nil {
						return
					}
					if err := work(it.admin, i); err != nil {
						failed.Store(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if err := failed.Load(); err != nil {
			it.t.Fatal(err)
		}
		return time.Since(start)
	}

	podTook := run(nPods, func(c kubernetes.Interface, i int) error {
		ns := fmt.Sprintf("scale-%d", i%nNS)
		hash := fmt.Sprintf("%09x", 0x5d8f7c6b9+i%nRS)[:9]
		rs := fmt.Sprintf("app-%d-%s", i%nRS, hash)
		name := fmt.Sprintf("%s-%05d", rs, i)
		ip := netip.AddrFrom4([4]byte{10, byte(1 + i/65536), byte(i / 256 % 256), byte(i % 256)})
		node := i % nNodes
		hostIP := fmt.Sprintf("192.168.%d.%d", node/250, node%250+1)
		p, err := c.CoreV1().Pods(ns).Create(ctx, benchPod(name, rs, hash, fmt.Sprintf("node-%d", node)), metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create pod %d: %w", i, err)
		}
		p.Status = corev1.PodStatus{
			Phase:      corev1.PodRunning,
			PodIP:      ip.String(),
			PodIPs:     []corev1.PodIP{{IP: ip.String()}},
			HostIP:     hostIP,
			HostIPs:    []corev1.HostIP{{IP: hostIP}},
			StartTime:  ptr.To(metav1.Now()),
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Ready: true, RestartCount: 0, Image: "example.invalid/app:1.2.3",
				ImageID: "example.invalid/app@sha256:" + strings.Repeat("ab", 32), ContainerID: "containerd://" + strings.Repeat("cd", 32),
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}}},
		}
		if _, err := c.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("pod %d status: %w", i, err)
		}
		podIPs[i], podNames[i] = ip, name
		return nil
	})
	fmt.Printf("created %d pods with status in %v (%.0f pods/s, 2 requests each, %d clients)\n",
		nPods, podTook.Round(time.Millisecond), float64(nPods)/podTook.Seconds(), workers)

	svcIPs = make([]netip.Addr, nServices)
	svcTook := run(nServices, func(c kubernetes.Interface, i int) error {
		ns := fmt.Sprintf("scale-%d", i%nNS)
		name := fmt.Sprintf("svc-%d", i)
		svc, err := c.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create service %d: %w", i, err)
		}
		svcIPs[i] = netip.MustParseAddr(svc.Spec.ClusterIP)
		var eps []discoveryv1.Endpoint
		for j := range 5 {
			k := (i*5 + j) % nPods
			if k%nNS != i%nNS {
				k = k - k%nNS + i%nNS // a pod of the same namespace
				if k >= nPods {
					k -= nNS
				}
			}
			eps = append(eps, discoveryv1.Endpoint{
				Addresses:  []string{podIPs[k].String()},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: podNames[k]},
			})
		}
		_, err = c.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name + "-x7k2p", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   eps,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](80)}},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("endpointslice %d: %w", i, err)
		}
		return nil
	})
	fmt.Printf("created %d services and EndpointSlices in %v\n", nServices, svcTook.Round(time.Millisecond))
	return podIPs, svcIPs
}

// benchPod is a pod of about the size a real one has: labels, annotations,
// two containers with env, resources and mounts (the API server adds
// defaults and managedFields).
func benchPod(name, rs, hash, node string) *corev1.Pod {
	env := func(prefix string) []corev1.EnvVar {
		var out []corev1.EnvVar
		for k := range 6 {
			out = append(out, corev1.EnvVar{Name: fmt.Sprintf("%s_SETTING_%d", prefix, k), Value: strings.Repeat("v", 24)})
		}
		return out
	}
	app := strings.TrimSuffix(rs, "-"+hash)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name,
			Labels: map[string]string{"app.kubernetes.io/name": app, "app.kubernetes.io/part-of": "shop",
				"pod-template-hash": hash, "team": "payments"},
			Annotations: map[string]string{
				"prometheus.io/scrape":                    "true",
				"kubectl.kubernetes.io/default-container": "app",
				"checksum/config":                         strings.Repeat("0123456789abcdef", 4),
			},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs,
				UID: "7d3c1a52-0000-4000-8000-000000000000", Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}},
		},
		Spec: corev1.PodSpec{
			NodeName: node,
			Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{
				ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: app + "-config"}}}}},
			Containers: []corev1.Container{
				{Name: "app", Image: "example.invalid/app:1.2.3", Env: env("APP"),
					Ports:        []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "metrics", ContainerPort: 9090}},
					VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: "/etc/app"}},
					Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
						corev1.ResourceCPU: resourceQuantity("100m"), corev1.ResourceMemory: resourceQuantity("128Mi")}},
					ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intOrStr(8080)}}}},
				{Name: "sidecar", Image: "example.invalid/proxy:2.0", Env: env("PROXY"),
					Ports: []corev1.ContainerPort{{Name: "admin", ContainerPort: 15000}}},
			},
		},
	}
}

// runScaleChild runs scaleChild in a child process against kubeconfig.
func runScaleChild(b *testing.B, kubeconfig string) scaleResult {
	b.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "KDROP_SCALE_KUBECONFIG="+kubeconfig)
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("child: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "KDROP-SCALE-RESULT "); ok {
			var res scaleResult
			if err := json.Unmarshal([]byte(rest), &res); err != nil {
				b.Fatal(err)
			}
			return res
		}
	}
	b.Fatalf("child printed no result:\n%s", out)
	return scaleResult{}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// scaleResult is what the child process measures.
type scaleResult struct {
	SyncSeconds   float64 `json:"sync_s"`
	Pods          int     `json:"pods"`
	IPs           int     `json:"ips"`
	HeapInuseMiB  float64 `json:"heap_inuse_mib"`
	HeapAllocMiB  float64 `json:"heap_alloc_mib"`
	RSSMiB        float64 `json:"rss_mib"`       // after GC, as the scavenger left it
	RSSFreedMiB   float64 `json:"rss_freed_mib"` // after debug.FreeOSMemory
	RSSPeakMiB    float64 `json:"rss_peak_mib"`  // VmHWM
	RSSBaseMiB    float64 `json:"rss_base_mib"`  // before Start
	RSSSyncMiB    float64 `json:"rss_sync_mib"`  // right at sync
	RebuildMillis float64 `json:"rebuild_ms"`    // one index rebuild (median of 5)
	SysMiB        float64 `json:"go_sys_mib"`    // memory obtained from the OS
}

func vmStatus(field string) float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// The test binary becomes the benchmark's child when KDROP_SCALE_KUBECONFIG
// is set: it measures a resolver alone in a process, prints the result and
// exits before any test runs.
func init() {
	if kc := os.Getenv("KDROP_SCALE_KUBECONFIG"); kc != "" {
		if err := scaleChild(kc); err != nil {
			fmt.Fprintln(os.Stderr, "scale child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

func scaleChild(kc string) error {
	runtime.GC()
	base := vmStatus("VmRSS")
	r, err := New(Config{Kubeconfig: kc, Context: "kdrop-test", Node: "node-0"}, zap.NewNop())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	r.Start(ctx)
	if !r.WaitForSync(ctx) {
		return fmt.Errorf("resolver did not sync")
	}
	res := scaleResult{SyncSeconds: time.Since(start).Seconds(), RSSBaseMiB: base, RSSSyncMiB: vmStatus("VmRSS")}
	// Let the scavenger settle after the initial list's garbage, as a
	// long-running agent would.
	time.Sleep(2 * time.Second)
	runtime.GC()
	time.Sleep(3 * time.Second)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.HeapInuseMiB = float64(ms.HeapInuse) / (1 << 20)
	res.HeapAllocMiB = float64(ms.HeapAlloc) / (1 << 20)
	res.SysMiB = float64(ms.Sys) / (1 << 20)
	res.RSSMiB = vmStatus("VmRSS")
	res.RSSPeakMiB = vmStatus("VmHWM")
	debug.FreeOSMemory()
	res.RSSFreedMiB = vmStatus("VmRSS")
	st := r.Status()
	res.Pods, res.IPs = st.Pods, st.IPs
	// Index rebuild time: the median of 5 (the first ones fault in the
	// pages FreeOSMemory gave back).
	var builds []time.Duration
	for range 5 {
		rb := time.Now()
		r.rebuild()
		builds = append(builds, time.Since(rb))
	}
	slices.Sort(builds)
	res.RebuildMillis = float64(builds[2].Microseconds()) / 1000
	out, _ := json.Marshal(res)
	fmt.Printf("KDROP-SCALE-RESULT %s\n", out)
	return nil
}

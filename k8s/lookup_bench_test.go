package k8s

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// Hot-path benchmarks on an index of 10,000 pods and 2,000 Services built
// from plain structs (BenchmarkCluster10k measures the same against a real
// API server). Run: go test -run '^$' -bench Lookup -benchmem ./k8s/

func syntheticInput(pods, services int) buildInput {
	in := buildInput{replicaSets: map[nsName]*ownerInfo{}}
	for i := range pods {
		node := fmt.Sprintf("node-%d", i%100)
		hostIP := fmt.Sprintf("192.168.%d.%d", (i%100)/250, (i%100)%250+1)
		ip := fmt.Sprintf("10.%d.%d.%d", 1+i/65536, (i/256)%256, i%256)
		rs := fmt.Sprintf("app-%d-7c9f8d6b5", i%500)
		p := testPod(fmt.Sprintf("ns-%d", i%50), fmt.Sprintf("app-%d-7c9f8d6b5-%05d", i%500, i), node, []string{ip},
			owned("ReplicaSet", rs), onHost(hostIP))
		in.pods = append(in.pods, p)
		in.replicaSets[nsName{p.Namespace, rs}] = &ownerInfo{ownerKind: "Deployment", ownerName: fmt.Sprintf("app-%d", i%500)}
		if i < 100 {
			in.pods = append(in.pods, testPod("kube-system", fmt.Sprintf("agent-%d", i), node, nil, owned("DaemonSet", "agent"), hostNet(hostIP, 9100, 9101)))
		}
	}
	for i := range services {
		ns := fmt.Sprintf("ns-%d", i%50)
		name := fmt.Sprintf("svc-%d", i)
		in.services = append(in.services, testSvc(ns, name, fmt.Sprintf("10.96.%d.%d", i/256, i%256)))
		var eps []sliceEndpoint
		for j := 0; j < 5; j++ {
			k := (i*5 + j) % pods
			eps = append(eps, sliceEndpoint{addrs: in.pods[k].ips, pod: in.pods[k].Name})
		}
		in.slices = append(in.slices, testSlice(ns, name, eps...))
	}
	return in
}

func benchResolver(b *testing.B) (*Resolver, buildInput) {
	in := syntheticInput(10000, 2000)
	r := newTestResolver(b, in)
	// Some deleted and reused IPs.
	for i := 0; i < 100; i++ {
		p := testPod("gone", fmt.Sprintf("gone-%d", i), "node-1", []string{fmt.Sprintf("10.200.0.%d", i)})
		r.podDeleted(p)
	}
	republish(r, in)
	return r, in
}

func BenchmarkLookupIP(b *testing.B) {
	r, _ := benchResolver(b)
	now := time.Now()
	cases := []struct {
		name string
		ip   string
		port uint16
		kind string
	}{
		{"hit-pod", "10.1.10.7", 8080, KindPod},
		{"hit-service", "10.96.3.7", 80, KindService},
		{"hit-node", "192.168.0.5", 22, KindNode},
		{"hit-hostnetwork-port", "192.168.0.5", 9101, KindPod},
		{"hit-deleted", "10.200.0.5", 80, KindPod},
		{"miss", "172.31.255.1", 80, ""},
		{"miss-ipv6", "2001:db8::1", 80, ""},
	}
	for _, c := range cases {
		ip := netip.MustParseAddr(c.ip)
		if ep := r.LookupIP(ip, c.port, now); ep.Kind != c.kind {
			b.Fatalf("%s: LookupIP(%s) = %+v", c.name, c.ip, ep)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			var sink Endpoint
			for b.Loop() {
				sink = r.LookupIP(ip, c.port, now)
			}
			_ = sink
		})
	}
	// Many distinct IPs (cache misses in the map), as a busy node sees.
	ips := make([]netip.Addr, 0, 10000)
	for i := range 10000 {
		ips = append(ips, netip.MustParseAddr(fmt.Sprintf("10.%d.%d.%d", 1+i/65536, (i/256)%256, i%256)))
	}
	b.Run("hit-pod-10k-distinct", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if r.LookupIP(ips[i%len(ips)], 80, now).Kind != KindPod {
				b.Fatal("miss")
			}
			i++
		}
	})
	// The same IPs in random order: every lookup a cache miss, the worst
	// case (a tracer mostly sees a few hot IPs).
	shuffled := slices.Clone(ips)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	b.Run("hit-pod-10k-random", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if r.LookupIP(shuffled[i%len(shuffled)], 80, now).Kind != KindPod {
				b.Fatal("miss")
			}
			i++
		}
	})
	b.Run("hit-pod-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				_ = r.LookupIP(ips[i%len(ips)], 80, now)
				i++
			}
		})
	})
	// While the index is rebuilt continuously by another goroutine.
	b.Run("hit-pod-during-rebuilds", func(b *testing.B) {
		in := syntheticInput(10000, 2000)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
					republish(r, in)
				}
			}
		})
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			_ = r.LookupIP(ips[i%len(ips)], 80, now)
			i++
		}
		close(stop)
		wg.Wait()
	})
}

// BenchmarkRWMutexMap is the alternative design for comparison: one map
// updated in place under a sync.RWMutex, read under RLock.
func BenchmarkRWMutexMap(b *testing.B) {
	r, _ := benchResolver(b)
	var mu sync.RWMutex
	m := r.snap.Load().ips
	ips := make([]netip.Addr, 0, 10000)
	for i := range 10000 {
		ips = append(ips, netip.MustParseAddr(fmt.Sprintf("10.%d.%d.%d", 1+i/65536, (i/256)%256, i%256)))
	}
	lookup := func(ip netip.Addr) Endpoint {
		mu.RLock()
		e := m[ip]
		var out Endpoint
		if e != nil {
			out = e.ep
		}
		mu.RUnlock()
		return out
	}
	b.Run("hit-pod-10k-distinct", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			_ = lookup(ips[i%len(ips)])
			i++
		}
	})
	b.Run("hit-pod-parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				_ = lookup(ips[i%len(ips)])
				i++
			}
		})
	})
	b.Run("hit-pod-parallel-with-writer", func(b *testing.B) {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
					// An incremental update holds the write lock briefly.
					mu.Lock()
					m[ips[0]] = m[ips[0]]
					mu.Unlock()
				}
			}
		})
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				_ = lookup(ips[i%len(ips)])
				i++
			}
		})
		close(stop)
		wg.Wait()
	})
}

func BenchmarkBuildSnapshot(b *testing.B) {
	in := syntheticInput(10000, 2000)
	b.ReportAllocs()
	for b.Loop() {
		buildSnapshot(in, time.Now())
	}
}

func BenchmarkLookupNetns(b *testing.B) {
	r, _ := benchResolver(b)
	r.netns.scan()
	m := r.netns.cur.Load()
	b.Run("host", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = r.LookupNetns(m.host)
		}
	})
}

// BenchmarkScanProc is one walk of the real /proc (what an unknown netns
// costs the refresher, at most once a second).
func BenchmarkScanProc(b *testing.B) {
	b.ReportAllocs()
	var m *netnsMap
	for b.Loop() {
		m = scanProc("/proc", netnsMaxEntries)
	}
	b.ReportMetric(float64(m.pids), "pids")
}

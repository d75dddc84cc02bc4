package tracer_test

import (
	"testing"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

// BenchmarkDecodeEncode is the userspace cost of one event: ring buffer
// record → tracer.Event → JSON line (package line), on one core. Target:
// ≥ 1M events/s. "identity" adds a node and the pods of both ends and of
// the namespace, as the agent writes them.
func BenchmarkDecodeEncode(b *testing.B) {
	const n = 64 // distinct flows
	decode, recs := tracer.BenchRecords(b, n)
	src := &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "shop", Name: "web-7d9f8c-x2x4q", WorkloadKind: "Deployment", WorkloadName: "web", Node: "node-a", Ready: true}
	dst := &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "shop", Name: "cart-5c8b7-qq9zt", WorkloadKind: "Deployment", WorkloadName: "cart", Node: "node-b", Services: []string{"shop/cart"}, Ready: true, DeletedAgo: 1200 * time.Millisecond}
	for _, c := range []struct {
		name     string
		identity bool
	}{{"bare", false}, {"identity", true}} {
		b.Run(c.name, func(b *testing.B) {
			var ev line.Event
			if c.identity {
				ev.Node, ev.SrcK8s, ev.DstK8s, ev.WhereK8s = "node-a", src, dst, src
			}
			buf := make([]byte, 0, 2048)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				decode(recs[i%n], &ev.Event)
				buf = line.AppendEvent(buf[:0], &ev)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

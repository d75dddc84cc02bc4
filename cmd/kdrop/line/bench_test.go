package line

import (
	"strings"
	"testing"
	"time"

	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

// BenchmarkEncodeIdentity is AppendEvent for a drop between two pods, as
// the agent writes it.
func BenchmarkEncodeIdentity(b *testing.B) {
	src := &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "shop", Name: "web-7d9f8c-x2x4q", WorkloadKind: "Deployment", WorkloadName: "web", Node: "node-a", Ready: true}
	dst := &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "shop", Name: "cart-5c8b7-qq9zt", WorkloadKind: "Deployment", WorkloadName: "cart", Node: "node-b", Services: []string{"shop/cart"}, Ready: true, DeletedAgo: 1200 * time.Millisecond}
	ev := &Event{Event: tracer.Event{Time: time.Unix(1, 0), Type: tracer.Drop, Count: 1, Source: "tp_btf", Netns: 4026531840, Ifindex: 2, Family: 4, Proto: 6, TCPFlags: 2, Reason: "NO_SOCKET", ReasonCode: 3, Location: "tcp_v4_rcv+0x1a4"},
		Node: "node-a", SrcK8s: src, DstK8s: dst, WhereK8s: src}
	buf := make([]byte, 0, 2048)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf = AppendEvent(buf[:0], ev)
	}
}

// BenchmarkDecode is Decoder.Decode of the golden event lines (a report
// reads millions), through the fast path and through encoding/json.
func BenchmarkDecode(b *testing.B) {
	var lines [][]byte
	for _, s := range strings.Split(strings.TrimSpace(string(encodeGolden())), "\n") {
		if strings.Contains(s, `"type":"drop"`) || strings.Contains(s, `"type":"overflow"`) || strings.Contains(s, `"type":"unreach"`) {
			lines = append(lines, []byte(s))
		}
	}
	for _, c := range []struct {
		name string
		slow bool
	}{{"fast", false}, {"json", true}} {
		b.Run(c.name, func(b *testing.B) {
			d := Decoder{slowOnly: c.slow}
			var l Line
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if err := d.Decode(lines[i%len(lines)], &l); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

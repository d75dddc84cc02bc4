package tracer

import (
	"testing"
	"unsafe"
)

// BenchmarkDecodeEncode is the userspace cost of one event: ring buffer
// record → Event → JSON line, on one core. Target: ≥ 1M events/s.
func BenchmarkDecodeEncode(b *testing.B) {
	reasons, err := LoadReasons(nil)
	if err != nil {
		b.Fatal(err)
	}
	sym := NewSymbolizer("")
	if err := sym.Err(); err != nil {
		b.Fatal(err)
	}
	tr := &Tracer{Reasons: reasons, Symbols: sym}
	const n = 64 // distinct flows, as in a drop storm over a few services
	recs := make([][]byte, n)
	for i := range recs {
		r := rawEvent{TsNs: 1e9, Type: uint8(Drop), Family: 4, Proto: 6, Sport: uint16(40000 + i), Dport: 80,
			Reason: 3, Location: sym.addrs[len(sym.addrs)/2] + 0x40, Netns: 4026531840, Ifindex: 2, TcpFlags: 2,
			Saddr: [16]uint8{10, 244, 0, 7}, Daddr: [16]uint8{10, 244, 1, byte(i)}}
		recs[i] = unsafe.Slice((*byte)(unsafe.Pointer(&r)), rawEventSize)
	}
	var ev Event
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rec := recs[i%n]
		tr.decode(rec, &ev)
		buf = ev.AppendJSON(buf[:0])
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

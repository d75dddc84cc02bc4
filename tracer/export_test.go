package tracer

import (
	"testing"
	"unsafe"
)

// BenchRecords returns n ring buffer records of distinct drop flows, as in
// a drop storm over a few services, and the decoder Run uses, for the
// benchmarks of what follows the tracer (package line).
func BenchRecords(tb testing.TB, n int) (decode func([]byte, *Event) bool, recs [][]byte) {
	reasons, err := LoadReasons(nil)
	if err != nil {
		tb.Fatal(err)
	}
	sym := NewSymbolizer("")
	if err := sym.Err(); err != nil {
		tb.Fatal(err)
	}
	tr := &Tracer{Reasons: reasons, Symbols: sym}
	recs = make([][]byte, n)
	for i := range recs {
		r := rawEvent{TsNs: 1e9, Type: uint8(Drop), Family: 4, Proto: 6, Sport: uint16(40000 + i), Dport: 80,
			Reason: 3, Location: sym.addrs[len(sym.addrs)/2] + 0x40, Netns: 4026531840, Ifindex: 2, TcpFlags: 2,
			Saddr: [16]uint8{10, 244, 0, 7}, Daddr: [16]uint8{10, 244, 1, byte(i)}}
		recs[i] = unsafe.Slice((*byte)(unsafe.Pointer(&r)), rawEventSize)
	}
	return tr.decode, recs
}

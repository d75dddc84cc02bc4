package tracer

import (
	"fmt"
	"net/netip"
	"strconv"
	"time"
)

// AppendJSON writes the event as one JSON object (no newline). Written by
// hand: encoding/json's reflection would cap the stream far below what the
// kernel can produce in a drop storm.
func (e *Event) AppendJSON(b []byte) []byte {
	b = append(b, `{"time":"`...)
	b = e.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","type":"`...)
	b = append(b, e.Type.String()...)
	b = append(b, `","count":`...)
	b = strconv.AppendUint(b, e.Count, 10)
	if e.Summary {
		b = append(b, `,"summary":true`...)
	}
	b = appendStr(b, "source", e.Source)
	b = appendStr(b, "coarse", e.Coarse)
	b = append(b, `,"netns":`...)
	b = strconv.AppendUint(b, uint64(e.Netns), 10)
	if e.Ifindex != 0 {
		b = append(b, `,"ifindex":`...)
		b = strconv.AppendUint(b, uint64(e.Ifindex), 10)
	}
	b = appendStr(b, "proto", ProtoName(e.Proto))
	if e.Src.Addr().IsValid() {
		b = append(b, `,"src":"`...)
		b = e.Src.Addr().AppendTo(b)
		b = append(b, `","sport":`...)
		b = strconv.AppendUint(b, uint64(e.Src.Port()), 10)
	}
	if e.Dst.Addr().IsValid() {
		b = append(b, `,"dst":"`...)
		b = e.Dst.Addr().AppendTo(b)
		b = append(b, `","dport":`...)
		b = strconv.AppendUint(b, uint64(e.Dst.Port()), 10)
	}
	if e.TCPFlags != 0 {
		b = appendStr(b, "tcp_flags", TCPFlagString(e.TCPFlags))
	}
	switch e.Type {
	case Drop:
		b = appendStr(b, "reason", e.Reason)
		b = append(b, `,"reason_code":`...)
		b = strconv.AppendUint(b, uint64(e.ReasonCode), 10)
		b = appendStr(b, "location", e.Location)
	case Unreachable:
		b = appendStr(b, "icmp", e.What())
		b = append(b, `,"icmp_type":`...)
		b = strconv.AppendUint(b, uint64(e.ICMPType), 10)
		b = append(b, `,"icmp_code":`...)
		b = strconv.AppendUint(b, uint64(e.ICMPCode), 10)
	case ListenOverflow:
		b = appendStr(b, "queue", e.Queue.String())
		b = append(b, `,"queue_len":`...)
		b = strconv.AppendUint(b, uint64(e.QueueLen), 10)
		b = append(b, `,"queue_max":`...)
		b = strconv.AppendUint(b, uint64(e.QueueMax), 10)
		b = append(b, `,"syn_queue_len":`...)
		b = strconv.AppendUint(b, uint64(e.SynQueueLen), 10)
		if e.Syncookie {
			b = append(b, `,"syncookie":true`...)
		}
		if e.Somaxconn != 0 {
			b = append(b, `,"somaxconn":`...)
			b = strconv.AppendUint(b, uint64(e.Somaxconn), 10)
		}
	}
	return append(b, '}')
}

// appendStr adds ,"key":"value"; empty values are left out. Values are
// kernel symbol and enum names or fixed words: plain ASCII is copied as is,
// anything else goes through the full quoting.
func appendStr(b []byte, key, v string) []byte {
	if v == "" {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, `":`...)
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return strconv.AppendQuote(b, v)
		}
	}
	b = append(b, '"')
	b = append(b, v...)
	return append(b, '"')
}

// TableHeader and TableRow are the human format of `kdrop watch`.
const TableHeader = "TIME          EVENT     COUNT  WHAT                    PROTO  SOURCE                   DESTINATION              QUEUE      NETNS       WHERE"

// TableRow renders one event under TableHeader.
func (e *Event) TableRow() string {
	count := strconv.FormatUint(e.Count, 10)
	if e.Summary {
		count = "+" + count
	}
	queue := ""
	if e.Type == ListenOverflow && e.QueueMax != 0 {
		queue = fmt.Sprintf("%d/%d", e.QueueLen, e.QueueMax)
	}
	dst := addrString(e.Dst)
	if e.Coarse != "" && e.Summary {
		dst = "* (table full)" // the summary spans destinations
	}
	where := e.Location
	if e.Type != Drop || where == "" {
		where = e.Source
	}
	return fmt.Sprintf("%-13s %-9s %5s  %-23s %-6s %-24s %-24s %-10s %-11d %s",
		e.Time.Local().Format("15:04:05.000"), e.Type, count, e.What(), ProtoName(e.Proto),
		addrString(e.Src), dst, queue, e.Netns, where)
}

func addrString(a netip.AddrPort) string {
	if !a.Addr().IsValid() {
		return "-"
	}
	if a.Port() == 0 {
		return a.Addr().String()
	}
	return a.String()
}

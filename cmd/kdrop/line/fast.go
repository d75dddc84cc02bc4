package line

import (
	"encoding/json"
	"net/netip"
	"unicode/utf8"
)

// The fast path of Decode. encoding/json costs 4-10 µs an event line
// (reflection, a validating pre-scan, a string per field; BenchmarkDecode:
// 9.9 µs for the golden lines, the fast path 1.2 µs); a report reads
// millions. fastWire reads the event lines kdrop writes — one flat object
// of known fields, plain strings, whole numbers, booleans and identity
// objects — straight into a wire, as json.Unmarshal would. Anything else
// (escapes, null, a header, a notice, a field it does not know the shape
// of, a number that does not fit, bad syntax) makes it give up, and
// Decode uses encoding/json, which also words every error: the fast path
// never decides what a line means, only how fast a plain one is read.
// FuzzDecode checks both paths agree.

// wireNames are every field name of wire, lower case: a key equal to one
// of them but for case is matched by encoding/json (case-insensitively),
// so the fast path leaves it to encoding/json.
var wireNames = map[string]bool{
	"kdrop_record": true, "kdrop_record_end": true, "started": true, "version": true, "from": true, "cluster": true,
	"nodes": true, "filters": true, "rate_limit": true, "ended": true, "events": true, "error": true, "lost": true,
	"missed": true, "cause": true, "message": true, "gap_from": true, "gap_to": true,
}

// eventNames are the fields fastWire reads (kept in step with its switch
// by TestFastPath).
var eventNames = []string{"time", "type", "count", "summary", "source", "coarse", "node", "netns", "ifindex", "proto",
	"src", "sport", "dst", "dport", "tcp_flags", "reason", "reason_code", "location", "icmp_type", "icmp_code", "icmp_mtu", "icmp_pointer", "icmp_gateway",
	"queue", "queue_len", "queue_max", "syn_queue_len", "syncookie", "somaxconn", "src_k8s", "dst_k8s", "where_k8s", "rule", "route", "conntrack", "probe"}

func init() {
	for _, k := range eventNames {
		wireNames[k] = true
	}
}

// Strings the fast path keeps one copy of (node, reason, source...): a
// few distinct values repeated on millions of lines.
const (
	maxInterned    = 4096
	maxInternedLen = 128
)

type fastReader struct {
	b     []byte
	i     int
	count uint64 // wire.Count points here
}

func (r *fastReader) ws() {
	for r.i < len(r.b) {
		switch r.b[r.i] {
		case ' ', '\t', '\n', '\r':
			r.i++
		default:
			return
		}
	}
}

// str reads a string without escapes; ok is false for anything else.
func (r *fastReader) str() (s []byte, ok bool) {
	if r.i >= len(r.b) || r.b[r.i] != '"' {
		return nil, false
	}
	start := r.i + 1
	ascii := true
	for j := start; j < len(r.b); j++ {
		switch c := r.b[j]; {
		case c == '"':
			r.i = j + 1
			s = r.b[start:j]
			return s, ascii || utf8.Valid(s)
		case c == '\\' || c < 0x20:
			return nil, false
		case c >= 0x80:
			ascii = false
		}
	}
	return nil, false
}

// uint reads a whole number as JSON writes it that fits in bits.
func (r *fastReader) uint(bits uint) (uint64, bool) {
	start := r.i
	var n uint64
	for r.i < len(r.b) && r.b[r.i] >= '0' && r.b[r.i] <= '9' {
		d := uint64(r.b[r.i] - '0')
		if n > (1<<64-1-d)/10 {
			return 0, false
		}
		n = n*10 + d
		r.i++
	}
	switch {
	case r.i == start, r.b[start] == '0' && r.i-start > 1: // none, or a leading zero
		return 0, false
	case bits < 64 && n >= 1<<bits:
		return 0, false
	case r.i < len(r.b) && (r.b[r.i] == '.' || r.b[r.i] == 'e' || r.b[r.i] == 'E'):
		return 0, false
	}
	return n, true
}

// text reads a string field; d, when given, keeps one copy of each value.
func (r *fastReader) text(d *Decoder) (string, bool) {
	s, ok := r.str()
	if !ok {
		return "", false
	}
	if d == nil {
		return string(s), true
	}
	return d.intern(s), true
}

func (r *fastReader) uint32() (uint32, bool) {
	n, ok := r.uint(32)
	return uint32(n), ok
}

// addr reads an IP address as netip.Addr's UnmarshalText does ("" is none).
func (r *fastReader) addr() (netip.Addr, bool) {
	s, ok := r.str()
	if !ok || len(s) == 0 {
		return netip.Addr{}, ok
	}
	a, err := netip.ParseAddr(string(s))
	return a, err == nil
}

func (r *fastReader) boolean() (v, ok bool) {
	switch {
	case hasAt(r.b, r.i, "true"):
		r.i += 4
		return true, true
	case hasAt(r.b, r.i, "false"):
		r.i += 5
		return false, true
	}
	return false, false
}

func hasAt(b []byte, i int, s string) bool { return len(b)-i >= len(s) && string(b[i:i+len(s)]) == s }

// object skips a JSON object and returns it; ok is false when it is not
// one or does not end. Its contents are checked when it is decoded
// (Decoder.endpoint: encoding/json, or an identical object already read).
// objectInto reads an object with encoding/json into v: for the rare,
// nested objects the fast path does not read field by field.
func (r *fastReader) objectInto(v any) bool {
	raw, ok := r.object()
	return ok && json.Unmarshal(raw, v) == nil
}

func (r *fastReader) object() (raw []byte, ok bool) {
	if r.i >= len(r.b) || r.b[r.i] != '{' {
		return nil, false
	}
	start, depth, in := r.i, 0, false
	for ; r.i < len(r.b); r.i++ {
		c := r.b[r.i]
		switch {
		case in && c == '\\':
			r.i++
		case c == '"':
			in = !in
		case in:
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			if depth--; depth == 0 {
				r.i++
				return r.b[start:r.i], c == '}'
			}
		}
	}
	return nil, false
}

// intern returns s as a string, one copy per distinct value.
func (d *Decoder) intern(s []byte) string {
	if v, ok := d.interned[string(s)]; ok {
		return v
	}
	v := string(s)
	if len(s) <= maxInternedLen && len(d.interned) < maxInterned {
		if d.interned == nil {
			d.interned = map[string]string{}
		}
		d.interned[v] = v
	}
	return v
}

// fastWire fills w from b as json.Unmarshal would, or returns false.
func (d *Decoder) fastWire(b []byte, w *wire, r *fastReader) bool {
	*r = fastReader{b: b}
	r.ws()
	if r.i >= len(b) || b[r.i] != '{' {
		return false
	}
	r.i++
	for first := true; ; first = false {
		r.ws()
		if first && r.i < len(b) && b[r.i] == '}' {
			r.i++
			break
		}
		key, ok := r.str()
		if !ok {
			return false
		}
		r.ws()
		if r.i >= len(b) || b[r.i] != ':' {
			return false
		}
		r.i++
		r.ws()
		switch string(key) {
		case "time":
			w.Time, ok = r.text(nil)
		case "type":
			w.Type, ok = r.text(d)
		case "source":
			w.Source, ok = r.text(d)
		case "coarse":
			w.Coarse, ok = r.text(d)
		case "node":
			w.Node, ok = r.text(d)
		case "proto":
			w.Proto, ok = r.text(d)
		case "tcp_flags":
			w.TCPFlags, ok = r.text(d)
		case "reason":
			w.Reason, ok = r.text(d)
		case "location":
			w.Location, ok = r.text(d)
		case "queue":
			w.Queue, ok = r.text(d)
		case "count":
			r.count, ok = r.uint(64)
			w.Count = &r.count
		case "netns":
			w.Netns, ok = r.uint32()
		case "ifindex":
			w.Ifindex, ok = r.uint32()
		case "reason_code":
			w.ReasonCode, ok = r.uint32()
		case "queue_len":
			w.QueueLen, ok = r.uint32()
		case "queue_max":
			w.QueueMax, ok = r.uint32()
		case "syn_queue_len":
			w.SynQueueLen, ok = r.uint32()
		case "somaxconn":
			w.Somaxconn, ok = r.uint32()
		case "sport":
			var n uint64
			n, ok = r.uint(16)
			w.Sport = uint16(n)
		case "dport":
			var n uint64
			n, ok = r.uint(16)
			w.Dport = uint16(n)
		case "icmp_type":
			var n uint64
			n, ok = r.uint(8)
			w.ICMPType = uint8(n)
		case "icmp_code":
			var n uint64
			n, ok = r.uint(8)
			w.ICMPCode = uint8(n)
		case "icmp_mtu":
			w.ICMPMTU, ok = r.uint32()
		case "icmp_pointer":
			w.ICMPPointer, ok = r.uint32()
		case "icmp_gateway":
			w.ICMPGateway, ok = r.addr()
		case "summary":
			w.Summary, ok = r.boolean()
		case "syncookie":
			w.Syncookie, ok = r.boolean()
		case "src":
			w.Src, ok = r.addr()
		case "dst":
			w.Dst, ok = r.addr()
		case "src_k8s":
			w.SrcK8s, ok = r.object()
		case "dst_k8s":
			w.DstK8s, ok = r.object()
		case "where_k8s":
			w.WhereK8s, ok = r.object()
		case "rule": // NETFILTER_DROP lines only: encoding/json for its object
			w.Rule = new(wireRule)
			ok = r.objectInto(w.Rule)
		case "route": // route drops only: encoding/json for its object
			w.Route = new(wireRoute)
			ok = r.objectInto(w.Route)
		case "conntrack": // NETFILTER_DROP lines only: encoding/json for its object
			w.Conntrack = new(wireConntrack)
			ok = r.objectInto(w.Conntrack)
		case "probe": // probe connections only: encoding/json for its object
			w.Probe = new(wireProbe)
			ok = r.objectInto(w.Probe)
		default:
			ok = unknownField(key, r)
		}
		if !ok {
			return false
		}
		r.ws()
		if r.i < len(b) && b[r.i] == ',' {
			r.i++
			continue
		}
		if r.i < len(b) && b[r.i] == '}' {
			r.i++
			break
		}
		return false
	}
	r.ws()
	if r.i != len(b) {
		return false
	}
	// Only event lines: for them Decode decodes the identities, which
	// checks their JSON; for other types it would not look at them.
	switch w.Type {
	case "drop", "overflow", "unreach":
		return true
	}
	return false
}

// unknownField skips the value of a field that is not a wire field, as
// encoding/json ignores it: only plain strings and whole numbers, and
// only names encoding/json would not match to a field case-insensitively.
func unknownField(key []byte, r *fastReader) bool {
	lower := make([]byte, 0, 32)
	for _, c := range key {
		if c >= 0x80 {
			return false
		}
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower = append(lower, c)
	}
	if wireNames[string(lower)] {
		return false
	}
	if _, ok := r.str(); ok {
		return true
	}
	_, ok := r.uint(64)
	return ok
}

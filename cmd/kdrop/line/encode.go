package line

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

// AppendEvent writes e as one JSON object (no newline) and returns the
// extended buffer. Written by hand, without allocating: encoding/json's
// reflection would cap the stream far below what the kernel produces in a
// drop storm. Fields that do not apply, or are empty, are left out; the
// order is fixed (testdata pins it).
func AppendEvent(b []byte, e *Event) []byte {
	b = append(b, `{"time":"`...)
	b = e.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","type":"`...)
	b = append(b, e.Type.String()...)
	b = append(b, `","count":`...)
	b = strconv.AppendUint(b, e.Count, 10)
	if e.Summary {
		b = append(b, `,"summary":true`...)
	}
	b = appendField(b, "source", e.Source)
	b = appendField(b, "coarse", e.Coarse)
	b = append(b, `,"netns":`...)
	b = strconv.AppendUint(b, uint64(e.Netns), 10)
	if e.Ifindex != 0 {
		b = append(b, `,"ifindex":`...)
		b = strconv.AppendUint(b, uint64(e.Ifindex), 10)
	}
	b = appendField(b, "proto", tracer.ProtoName(e.Proto))
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
		b = appendField(b, "tcp_flags", tracer.TCPFlagString(e.TCPFlags))
	}
	switch e.Type {
	case tracer.Drop:
		b = appendField(b, "reason", e.Reason)
		b = append(b, `,"reason_code":`...)
		b = strconv.AppendUint(b, uint64(e.ReasonCode), 10)
		b = appendField(b, "location", e.Location)
		if isICMP(e.Proto) {
			b = appendDroppedICMP(b, &e.Event)
		}
		if e.Rule != nil {
			b = append(b, `,"rule":`...)
			b = appendRule(b, e.Rule)
		}
		if r := e.Route; r != nil {
			b = append(b, `,"route":{"type":`...)
			b = appendString(b, r.Type)
			b = append(b, `,"dst":"`...)
			b = r.Dst.AppendTo(b)
			b = append(b, `","table":`...)
			b = strconv.AppendInt(b, int64(r.Table), 10)
			b = append(b, '}')
		}
		if c := e.Conntrack; c != nil {
			b = append(b, `,"conntrack":{"cause":`...)
			b = appendString(b, c.Cause)
			b = append(b, `,"count":`...)
			b = strconv.AppendUint(b, uint64(c.Count), 10)
			b = append(b, `,"max":`...)
			b = strconv.AppendUint(b, uint64(c.Max), 10)
			b = append(b, '}')
		}
	case tracer.Unreachable:
		b = appendICMP(b, e.Family == 6, e.ICMPType, e.ICMPCode)
		b = append(b, `,"icmp_type":`...)
		b = strconv.AppendUint(b, uint64(e.ICMPType), 10)
		b = append(b, `,"icmp_code":`...)
		b = strconv.AppendUint(b, uint64(e.ICMPCode), 10)
		b = appendICMPInfo(b, &e.Event)
	case tracer.ListenOverflow:
		b = appendField(b, "queue", e.Queue.String())
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
	b = appendField(b, "node", e.Node)
	if e.SrcK8s != nil || e.DstK8s != nil || e.WhereK8s != nil { // identity on
		b = appendEndpoint(b, "src_k8s", e.SrcK8s)
		b = appendEndpoint(b, "dst_k8s", e.DstK8s)
		b = appendEndpoint(b, "where_k8s", e.WhereK8s)
	}
	if p := e.Probe; p != nil {
		b = appendProbe(b, p)
	}
	return append(b, '}')
}

// appendProbe adds ,"probe":{...}: the kind that matters most, the other
// kinds on the same port, port, handler, container, https.
func appendProbe(b []byte, p *k8s.Probe) []byte {
	b = append(b, `,"probe":{"kind":`...)
	primary := p.Kinds.Primary()
	b = appendString(b, primary.Name())
	if rest := p.Kinds &^ primary; rest != 0 {
		b = append(b, `,"also":[`...)
		first := true
		for _, k := range k8s.ProbeOrder {
			if rest&k == 0 {
				continue
			}
			if !first {
				b = append(b, ',')
			}
			first = false
			b = appendString(b, k.Name())
		}
		b = append(b, ']')
	}
	b = append(b, `,"port":`...)
	b = strconv.AppendUint(b, uint64(p.Port), 10)
	b = appendField(b, "handler", p.Handler)
	b = appendField(b, "container", p.Container)
	if p.HTTPS {
		b = append(b, `,"https":true`...)
	}
	return append(b, '}')
}

// AppendNotice writes n as one JSON object (no newline).
func AppendNotice(b []byte, n *Notice) []byte {
	b = append(b, `{"time":"`...)
	b = n.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","type":`...)
	b = appendString(b, n.Type)
	b = append(b, `,"node":`...)
	b = appendString(b, n.Node) // always there: says which stream, even if ""
	switch n.Type {
	case NoticeMessage:
		b = append(b, `,"message":`...)
		b = appendString(b, n.Message)
		if !n.GapFrom.IsZero() {
			b = appendTime(b, "gap_from", n.GapFrom)
			b = appendTime(b, "gap_to", n.GapTo)
		}
	case NoticeLost:
		b = append(b, `,"lost":`...)
		b = strconv.AppendUint(b, n.Lost, 10)
	case NoticeMissed:
		b = append(b, `,"missed":`...)
		b = strconv.AppendUint(b, n.Missed, 10)
		b = appendField(b, "cause", n.Cause)
	}
	return append(b, '}')
}

// AppendHeader writes a recording's header line (no newline). Format is
// set to FormatVersion.
func AppendHeader(b []byte, h Header) []byte {
	h.Format = FormatVersion
	h.Started = h.Started.UTC()
	j, err := json.Marshal(h)
	if err != nil { // a Header holds only strings, numbers and times
		panic("kdrop: encoding a recording header: " + err.Error())
	}
	return append(b, j...)
}

// AppendTrailer writes a recording's trailer line (no newline). Format is
// set to FormatVersion.
func AppendTrailer(b []byte, t Trailer) []byte {
	b = append(b, `{"kdrop_record_end":`...)
	b = strconv.AppendInt(b, FormatVersion, 10)
	b = appendTime(b, "ended", t.Ended)
	b = append(b, `,"events":`...)
	b = strconv.AppendUint(b, t.Events, 10)
	b = append(b, `,"lost":`...)
	b = strconv.AppendUint(b, t.Lost, 10)
	b = append(b, `,"missed":`...)
	b = strconv.AppendUint(b, t.Missed, 10)
	b = appendField(b, "error", t.Error)
	return append(b, '}')
}

// appendICMP adds ,"icmp":NAME as tracer.ICMPName has it, without
// allocating for errors that have no name.
// appendDroppedICMP writes the ICMP type of a dropped ICMP packet (a
// frag-needed dropped on its way is a path MTU black hole), from the
// packet itself: a summary spans the flow's packets and says none.
func appendDroppedICMP(b []byte, e *tracer.Event) []byte {
	if e.Summary {
		return b
	}
	b = appendICMP(b, e.Proto == protoICMPv6, e.ICMPType, e.ICMPCode)
	b = append(b, `,"icmp_type":`...)
	b = strconv.AppendUint(b, uint64(e.ICMPType), 10)
	b = append(b, `,"icmp_code":`...)
	b = strconv.AppendUint(b, uint64(e.ICMPCode), 10)
	return appendICMPInfo(b, e)
}

// appendICMPInfo writes what an ICMP error's second word says, the error
// sent (unreach) or thrown away (a drop): the MTU, pointer or gateway.
func appendICMPInfo(b []byte, e *tracer.Event) []byte {
	if mtu := e.ICMPMTU(); mtu != 0 {
		b = append(b, `,"icmp_mtu":`...)
		b = strconv.AppendUint(b, uint64(mtu), 10)
	}
	if p := e.ICMPPointer(); p != 0 {
		b = append(b, `,"icmp_pointer":`...)
		b = strconv.AppendUint(b, uint64(p), 10)
	}
	if gw := e.ICMPGateway(); gw.IsValid() {
		b = append(b, `,"icmp_gateway":"`...)
		b = gw.AppendTo(b)
		b = append(b, '"')
	}
	return b
}

func appendICMP(b []byte, v6 bool, typ, code uint8) []byte {
	if n := tracer.ICMPKnownName(v6, typ, code); n != "" {
		return appendField(b, "icmp", n)
	}
	b = append(b, `,"icmp":"`...)
	switch {
	case v6 && typ == 1, !v6 && typ == 3:
		b = append(b, "unreachable/"...)
	case v6:
		b = append(b, "icmp6 "...)
		b = append(strconv.AppendUint(b, uint64(typ), 10), '/')
	default:
		b = append(b, "icmp "...)
		b = append(strconv.AppendUint(b, uint64(typ), 10), '/')
	}
	b = strconv.AppendUint(b, uint64(code), 10)
	return append(b, '"')
}

func appendTime(b []byte, key string, t time.Time) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, `":"`...)
	b = t.UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// appendField adds ,"key":"value"; empty values are left out. One
// function for the common case (plain ASCII), as it runs for most fields
// of every event.
func appendField(b []byte, key, v string) []byte {
	if v == "" {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, `":"`...)
	for i := 0; i < len(v); i++ {
		if !plain[v[i]] {
			return appendEscaped(b, v, i)
		}
	}
	b = append(b, v...)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// plain marks the bytes a JSON string holds as they are: printable ASCII
// but the quote and the backslash.
var plain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendString writes s as a JSON string. Kernel symbols, enum names and
// Kubernetes names are plain ASCII and copied as they are; anything else
// is escaped as JSON (RFC 8259) wants; invalid UTF-8 becomes U+FFFD.
func appendString(b []byte, s string) []byte {
	i := 0
	for i < len(s) && plain[s[i]] {
		i++
	}
	b = append(b, '"')
	if i == len(s) { // the common case
		b = append(b, s...)
		return append(b, '"')
	}
	return appendEscaped(b, s, i)
}

// appendEscaped writes the rest of s from i, which is not plain, escaped,
// and the closing quote.
func appendEscaped(b []byte, s string, i int) []byte {
	b = append(b, s[:i]...)
	start := i
	for i < len(s) {
		c := s[i]
		if plain[c] {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, "\uFFFD"...)
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendEndpoint adds ,"key":{...}; an endpoint of which nothing is known
// is left out. With key "" it writes the bare object (an element of
// "previous").
func appendEndpoint(b []byte, key string, e *k8s.Endpoint) []byte {
	if key != "" && (e == nil || (e.Kind == "" && !e.Unresolved)) {
		return b
	}
	if key != "" {
		b = append(b, ',', '"')
		b = append(b, key...)
		b = append(b, `":`...)
	}
	b = append(b, '{')
	first := true
	field := func(k string) {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '"')
		b = append(b, k...)
		b = append(b, `":`...)
	}
	str := func(k, v string) {
		if v != "" {
			field(k)
			b = appendString(b, v)
		}
	}
	flag := func(k string, v bool) {
		if v {
			field(k)
			b = append(b, "true"...)
		}
	}
	str("kind", e.Kind)
	str("namespace", e.Namespace)
	str("name", e.Name)
	str("workload_kind", e.WorkloadKind)
	str("workload_name", e.WorkloadName)
	str("node", e.Node)
	if len(e.Services) > 0 {
		field("services")
		b = append(b, '[')
		for i, s := range e.Services {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, s)
		}
		b = append(b, ']')
	}
	switch e.Kind {
	case k8s.KindPod:
		field("ready")
		b = strconv.AppendBool(b, e.Ready)
	case k8s.KindService:
		if e.ReadyEndpoints < 0 { // unknown: a decoded line that did not say
			break
		}
		field("ready_endpoints")
		b = strconv.AppendInt(b, int64(e.ReadyEndpoints), 10)
	}
	flag("terminating", e.Terminating)
	flag("host_network", e.HostNetwork)
	if e.DeletedAgo != 0 {
		field("deleted_ago_ms")
		b = strconv.AppendInt(b, e.DeletedAgo.Milliseconds(), 10)
	}
	if len(e.Previous) > 0 {
		field("previous")
		b = append(b, '[')
		for i := range e.Previous {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendEndpoint(b, "", &e.Previous[i])
		}
		b = append(b, ']')
	}
	flag("unresolved", e.Unresolved)
	return append(b, '}')
}

// appendRule writes a netfilter rule object: backend, the rule's fields
// (appendRef), how, candidates, unknown; empty fields are left out.
func appendRule(b []byte, r *netfilter.Rule) []byte {
	b = append(b, `{"backend":`...)
	b = appendString(b, r.Backend)
	b = appendRef(b, &r.Ref)
	b = appendField(b, "how", r.How)
	if len(r.Candidates) > 0 {
		b = append(b, `,"candidates":[`...)
		for i := range r.Candidates {
			if i > 0 {
				b = append(b, ',')
			}
			open := len(b)
			b = appendRef(append(b, '{'), &r.Candidates[i])
			if len(b) > open+1 { // drop the first field's comma
				b = append(b[:open+1], b[open+2:]...)
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if r.Unknown != "" {
		b = append(b, `,"unknown":`...)
		b = appendString(b, r.Unknown)
	}
	if m := r.K8s; m != nil {
		b = appendMeaning(append(b, `,"k8s":`...), m)
	}
	return append(b, '}')
}

// appendMeaning writes a rule's Kubernetes meaning, the `k8s` object (and
// kdrop's own evaluation in it, the same kind of object).
func appendMeaning(b []byte, m *netfilter.Meaning) []byte {
	b = append(b, `{"meaning":`...)
	b = appendString(b, m.Kind)
	b = appendField(b, "engine", m.Engine)
	b = appendField(b, "service", m.Service)
	if len(m.NetworkPolicies) > 0 {
		b = append(b, `,"network_policy":[`...)
		for i, p := range m.NetworkPolicies {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"namespace":`...)
			b = appendString(b, p.Namespace)
			b = append(b, `,"name":`...)
			b = appendString(b, p.Name)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	b = appendField(b, "direction", m.Direction)
	b = appendField(b, "pod", m.Pod)
	b = appendField(b, "evaluation", m.Evaluation)
	if m.Evaluated != nil {
		b = appendMeaning(append(b, `,"evaluated":`...), m.Evaluated)
	}
	b = appendField(b, "text", m.Text)
	return append(b, '}')
}

// appendRef writes a rule's fields, each with a leading comma.
func appendRef(b []byte, r *netfilter.Ref) []byte {
	b = appendField(b, "family", r.Family)
	if r.Table != "" {
		b = append(b, `,"table":`...)
		b = appendString(b, r.Table)
		b = append(b, `,"chain":`...)
		b = appendString(b, r.Chain)
	}
	if r.Handle != 0 {
		b = append(b, `,"handle":`...)
		b = strconv.AppendUint(b, r.Handle, 10)
	}
	if r.Position != 0 {
		b = append(b, `,"position":`...)
		b = strconv.AppendInt(b, int64(r.Position), 10)
	}
	if r.Comment != "" {
		b = append(b, `,"comment":`...)
		b = appendString(b, r.Comment)
	}
	b = appendField(b, "verdict", r.Verdict)
	if r.Packets != 0 {
		b = append(b, `,"packets":`...)
		b = strconv.AppendUint(b, r.Packets, 10)
	}
	return b
}

// IP protocol numbers of ICMP and ICMPv6 (IPPROTO_ICMP, IPPROTO_ICMPV6).
const protoICMP, protoICMPv6 = 1, 58

func isICMP(proto uint8) bool { return proto == protoICMP || proto == protoICMPv6 }

package tracer

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// EventType says where the kernel gave up on traffic.
type EventType uint8

// Values of enum kdrop_event_type in bpf/kdrop.h, as bpf2go generates them.
const (
	Drop           = EventType(kdropKdropEventTypeKDROP_EV_DROP)            // a packet freed with a drop reason (kfree_skb)
	ListenOverflow = EventType(kdropKdropEventTypeKDROP_EV_LISTEN_OVERFLOW) // a listener's accept or SYN queue was full
	Unreachable    = EventType(kdropKdropEventTypeKDROP_EV_UNREACH)         // the kernel sent an ICMP error ("unreachable")
	eventTypeMax   = EventType(kdropKdropEventTypeKDROP_EV_MAX)
)

var eventTypeNames = [...]string{Drop: "drop", ListenOverflow: "overflow", Unreachable: "unreach"}

func (t EventType) String() string {
	if t > 0 && t < eventTypeMax {
		return eventTypeNames[t]
	}
	return fmt.Sprintf("type%d", uint8(t))
}

// EventTypes lists every type, in display order.
func EventTypes() []EventType { return []EventType{Drop, ListenOverflow, Unreachable} }

// ParseEventType accepts the names String returns.
func ParseEventType(s string) (EventType, error) {
	for _, t := range EventTypes() {
		if strings.EqualFold(s, t.String()) {
			return t, nil
		}
	}
	return 0, fmt.Errorf("unknown event type %q: use one of drop, overflow, unreach", s)
}

// Queue says which queue of a listener overflowed (enum kdrop_queue).
type Queue uint8

const (
	QueueNone      = Queue(kdropKdropQueueKDROP_Q_NONE)
	QueueAcceptSYN = Queue(kdropKdropQueueKDROP_Q_ACCEPT_SYN) // a SYN was refused because the accept queue was full
	QueueAcceptACK = Queue(kdropKdropQueueKDROP_Q_ACCEPT_ACK) // a handshake's final ACK found the accept queue full
	QueueSYN       = Queue(kdropKdropQueueKDROP_Q_SYN)        // the SYN queue was full
	QueueAccept    = Queue(kdropKdropQueueKDROP_Q_ACCEPT)     // accept queue, seen by sock_diag, which can't tell SYN from ACK
)

func (q Queue) String() string {
	switch q {
	case QueueAcceptSYN, QueueAcceptACK, QueueAccept:
		return "accept"
	case QueueSYN:
		return "syn"
	}
	return ""
}

// ParseQueue is the inverse of Queue.String: "accept" is QueueAccept (the
// name does not tell SYN from ACK), "syn" QueueSYN, others QueueNone.
func ParseQueue(s string) Queue {
	switch s {
	case "accept":
		return QueueAccept
	case "syn":
		return QueueSYN
	}
	return QueueNone
}

// Event is one decoded kernel event. Fields that do not apply to a type are
// zero. The sinks (table, JSON) read it; nothing retains it after emit.
type Event struct {
	Time time.Time
	Type EventType
	// Count is how many occurrences this event stands for: 1 for an event,
	// N for a Summary of the N occurrences of a flow that the rate limit
	// folded (or a full ring buffer lost) in one sweep interval. Summed
	// over a run it equals the kernel's own counters.
	Count   uint64
	Summary bool   // a rate-limit summary of a flow, not one packet
	Source  string // how it was seen: fentry, kprobe, tp_btf, raw_tp, sock_diag
	// Coarse is set when the flow table was full and the rate limit keyed
	// this event more coarsely than its flow: CoarseNetns or CoarseType.
	Coarse string

	Netns    uint32
	Ifindex  uint32
	Family   uint8 // 4, 6, or 0 when the packet was not IP
	Proto    uint8 // IPPROTO_*
	Src, Dst netip.AddrPort
	TCPFlags uint8

	Reason     string // drop: the kernel's drop reason name ("unknown" where it has none)
	ReasonCode uint32
	Location   string // drop: where in the kernel, function+offset
	LocationPC uint64

	// LinkMulti: a drop of a frame that came as link-layer broadcast or
	// multicast (not written in lines; the filter's benign test uses it).
	LinkMulti bool

	ICMPType, ICMPCode uint8 // unreach: the error the kernel sent; drop of ICMP: the packet's
	// ICMPInfo is, for unreach and for a drop of an ICMP packet, the ICMP
	// header's second word (RFC 792, 1191, 4443): use ICMPMTU, ICMPPointer
	// and ICMPGateway. 0 where the hook cannot see it (the icmp_send
	// tracepoint has no such argument).
	ICMPInfo uint32

	Queue       Queue // overflow
	QueueLen    uint32
	QueueMax    uint32
	SynQueueLen uint32
	Syncookie   bool
	Somaxconn   uint32 // net.core.somaxconn of the namespace (0: unknown)
}

// rawEvent is the ring buffer record; bpf2go generates it from bpf/kdrop.h.
type rawEvent = kdropKdropEvent

const rawEventSize = int(unsafe.Sizeof(rawEvent{}))

// modeNames names enum kdrop_mode, the program variant behind an event.
var modeNames = [...]string{
	kdropKdropModeKDROP_MODE_FENTRY: string(ModeFentry),
	kdropKdropModeKDROP_MODE_KPROBE: string(ModeKprobe),
	kdropKdropModeKDROP_MODE_TP_BTF: string(ModeTPBTF),
	kdropKdropModeKDROP_MODE_RAW_TP: string(ModeRawTP),
}

func addrFrom(family uint8, b *[16]byte) netip.Addr {
	switch family {
	case 4:
		return netip.AddrFrom4([4]byte(b[:4]))
	case 6:
		return netip.AddrFrom16(*b)
	}
	return netip.Addr{}
}

// ProtoName names the IP protocols kdrop meets; others print as protoN
// ("" for 0). From a table: no allocation.
func ProtoName(p uint8) string { return protoNames[p] }

var protoNames = func() (t [256]string) {
	for p := 1; p < 256; p++ {
		t[p] = fmt.Sprintf("proto%d", p)
	}
	t[1], t[6], t[17], t[58], t[132] = "icmp", "tcp", "udp", "icmpv6", "sctp"
	return t
}()

// ParseProto is the inverse of ProtoName (numbers accepted too).
func ParseProto(s string) (uint8, error) {
	for p := 1; p < 256; p++ {
		if ProtoName(uint8(p)) == strings.ToLower(s) {
			return uint8(p), nil
		}
	}
	var n uint8
	if _, err := fmt.Sscanf(s, "%d", &n); err == nil && n > 0 {
		return n, nil
	}
	return 0, fmt.Errorf("unknown protocol %q: use tcp, udp, icmp, icmpv6, sctp or a number", s)
}

var tcpFlagNames = [...]string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}

var tcpFlagStrings = func() (t [256]string) {
	for i := range t {
		t[i] = tcpFlagString(uint8(i))
	}
	return t
}()

// TCPFlagString renders flags as SYN|ACK.
func TCPFlagString(f uint8) string { return tcpFlagStrings[f] }

func tcpFlagString(f uint8) string {
	var b strings.Builder
	for i, n := range tcpFlagNames {
		if f&(1<<i) != 0 {
			if b.Len() > 0 {
				b.WriteByte('|')
			}
			b.WriteString(n)
		}
	}
	return b.String()
}

// ICMPName describes an ICMP (v4) or ICMPv6 error as operators know it:
// ICMPKnownName's name, else unreachable/CODE, icmp6 TYPE/CODE or icmp
// TYPE/CODE.
func (e *Event) icmpIs(v6 bool, typ uint8, code int) bool {
	// an unreach event is the error sent; a drop of an ICMP packet may be
	// one thrown away
	proto := uint8(unix.IPPROTO_ICMP)
	if v6 {
		proto = unix.IPPROTO_ICMPV6
	}
	isErr := e.Type == Unreachable && (e.Family == 6) == v6 || e.Type == Drop && e.Proto == proto
	return isErr && e.ICMPType == typ && (code < 0 || int(e.ICMPCode) == code)
}

// ICMPMTU is the next-hop MTU an unreach event told the sender, or a
// dropped ICMP error carried, in bytes: of an IPv4 frag-needed (RFC 1191:
// the low 16 bits) or an ICMPv6 packet-too-big (RFC 4443 3.2); 0 for other
// events or when unseen.
func (e *Event) ICMPMTU() uint32 {
	switch {
	case e.icmpIs(false, 3, 4):
		return e.ICMPInfo & 0xffff
	case e.icmpIs(true, 2, -1):
		return e.ICMPInfo
	}
	return 0
}

// ICMPPointer is the offset of the offending byte in the quoted packet of
// a parameter problem (IPv4 type 12: the first byte; ICMPv6 type 4: the
// whole word), sent (unreach) or dropped; 0 for other events or when unseen.
func (e *Event) ICMPPointer() uint32 {
	switch {
	case e.icmpIs(false, 12, -1):
		return e.ICMPInfo >> 24
	case e.icmpIs(true, 4, -1):
		return e.ICMPInfo
	}
	return 0
}

// ICMPGateway is the gateway an IPv4 redirect (type 5, RFC 792) told the
// sender to use instead of this router, sent (unreach) or dropped; invalid
// for other events or when unseen.
func (e *Event) ICMPGateway() netip.Addr {
	if !e.icmpIs(false, 5, -1) || e.ICMPInfo == 0 {
		return netip.Addr{}
	}
	i := e.ICMPInfo
	return netip.AddrFrom4([4]byte{byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)})
}

// ICMPInfoOf is the ICMP header's second word that ICMPMTU, ICMPPointer
// and ICMPGateway read mtu, pointer and gateway from: their inverse, for
// decoders.
func ICMPInfoOf(v6 bool, typ, code uint8, mtu, pointer uint32, gateway netip.Addr) uint32 {
	e := Event{Type: Unreachable, ICMPType: typ, ICMPCode: code}
	if v6 {
		e.Family = 6
	}
	switch {
	case e.icmpIs(false, 3, 4):
		return mtu & 0xffff
	case e.icmpIs(true, 2, -1):
		return mtu
	case e.icmpIs(false, 12, -1):
		return pointer << 24
	case e.icmpIs(true, 4, -1):
		return pointer
	case e.icmpIs(false, 5, -1) && gateway.Is4():
		b := gateway.As4()
		return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	}
	return 0
}

func ICMPName(v6 bool, typ, code uint8) string {
	if n := ICMPKnownName(v6, typ, code); n != "" {
		return n
	}
	switch {
	case v6 && typ == 1, !v6 && typ == 3:
		return fmt.Sprintf("unreachable/%d", code)
	case v6:
		return fmt.Sprintf("icmp6 %d/%d", typ, code)
	}
	return fmt.Sprintf("icmp %d/%d", typ, code)
}

var (
	icmp6Unreach = [...]string{"no-route", "admin-prohibited", "beyond-scope", "addr-unreachable", "port-unreachable", "failed-policy", "reject-route"}
	icmpUnreach  = [...]string{"net-unreachable", "host-unreachable", "proto-unreachable", "port-unreachable",
		"frag-needed", "srcroute-failed", "net-unknown", "host-unknown", "host-isolated",
		"net-prohibited", "host-prohibited", "net-tos-unreachable", "host-tos-unreachable",
		"admin-prohibited", "precedence-violation", "precedence-cutoff"}
	icmpRedirect = [...]string{"redirect-net", "redirect-host", "redirect-tos-net", "redirect-tos-host"}
)

// ICMPKnownName is the name of an ICMP (v4) or ICMPv6 error kdrop knows
// (RFC 792, 1812, 4443), "" for others.
func ICMPKnownName(v6 bool, typ, code uint8) string {
	if v6 {
		switch typ {
		case 1:
			if int(code) < len(icmp6Unreach) {
				return icmp6Unreach[code]
			}
		case 2:
			return "packet-too-big"
		case 3:
			return "time-exceeded"
		case 4:
			return "param-problem"
		}
		return ""
	}
	switch typ {
	case 3:
		if int(code) < len(icmpUnreach) {
			return icmpUnreach[code]
		}
	case 5:
		if int(code) < len(icmpRedirect) {
			return icmpRedirect[code]
		}
	case 11:
		return "time-exceeded"
	case 12:
		return "param-problem"
	}
	return ""
}

// What returns the event's "why" in one word: the drop reason, the ICMP
// error, or the queue that overflowed.
func (e *Event) What() string {
	switch e.Type {
	case Drop:
		return e.Reason
	case Unreachable:
		s := ICMPName(e.Family == 6, e.ICMPType, e.ICMPCode)
		if mtu := e.ICMPMTU(); mtu != 0 {
			s += " mtu " + strconv.FormatUint(uint64(mtu), 10)
		}
		if p := e.ICMPPointer(); p != 0 {
			s += " pointer " + strconv.FormatUint(uint64(p), 10)
		}
		if gw := e.ICMPGateway(); gw.IsValid() {
			s += " gateway " + gw.String()
		}
		return s
	case ListenOverflow:
		s := e.Queue.String() + "-queue"
		if e.Syncookie {
			s += "+syncookie"
		}
		return s
	}
	return ""
}

// Values of Event.Coarse.
const (
	// CoarseNetns: rate-limited per (type, reason, network namespace);
	// summaries carry no destination.
	CoarseNetns = "netns"
	// CoarseType: both tables full; rate-limited per event type; summaries
	// carry neither reason nor namespace.
	CoarseType = "type"
)

// enum kdrop_flags (kdrop_event.flags, a byte) and enum kdrop_stat (the
// stats map's indexes) in bpf/kdrop.h.
const (
	flagSyncookie   = uint8(kdropKdropFlagsKDROP_F_SYNCOOKIE)
	flagCoarseNetns = uint8(kdropKdropFlagsKDROP_F_COARSE_NETNS)
	flagCoarseType  = uint8(kdropKdropFlagsKDROP_F_COARSE_TYPE)
	flagLinkMulti   = uint8(kdropKdropFlagsKDROP_F_LINK_MULTI)

	statCoarsened = uint32(kdropKdropStatKDROP_STAT_COARSENED)
	statMax       = uint32(kdropKdropStatKDROP_STAT_MAX)
)

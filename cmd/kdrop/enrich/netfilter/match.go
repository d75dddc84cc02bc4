package netfilter

import (
	"bytes"
	"encoding/binary"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/tracer"
)

// verdict of matching a rule's expressions against an event's packet.
type matchResult uint8

const (
	matchMaybe matchResult = iota // some expression is not understood
	matchNo                       // an understood expression fails
	matchYes                      // every expression is understood and holds
)

// matches evaluates the rule's expressions against what the event tells
// of the packet: family, layer 4 protocol, addresses and ports. It
// understands what iptables-nft and nft emit for -p/-s/-d/--sport/--dport
// (meta nfproto/l4proto, payload loads of the IP and transport headers,
// bitwise masks for prefixes, cmp); anything else (sets, conntrack,
// interfaces, xt matches but comment) makes the answer matchMaybe unless an
// understood test already failed.
func matches(ri *ruleInfo, ev *tracer.Event) matchResult {
	if ri.legacy != nil {
		return ri.legacy.match(ev)
	}
	switch nftables.TableFamily(ri.family) {
	case nftables.TableFamilyIPv4:
		if ev.Family != 4 {
			return matchNo
		}
	case nftables.TableFamilyIPv6:
		if ev.Family != 6 {
			return matchNo
		}
	case nftables.TableFamilyINet:
	default:
		return matchMaybe
	}
	regs := map[uint32][]byte{}
	res := matchYes
	for _, e := range ri.exprs {
		switch e := e.(type) {
		case *expr.Meta:
			if e.SourceRegister {
				continue
			}
			var v []byte
			switch e.Key {
			case expr.MetaKeyL4PROTO:
				v = []byte{ev.Proto}
			case expr.MetaKeyNFPROTO:
				v = []byte{unix.NFPROTO_IPV4}
				if ev.Family == 6 {
					v[0] = unix.NFPROTO_IPV6
				}
			}
			regs[e.Register] = v // nil: unknown
		case *expr.Payload:
			if e.OperationType != expr.PayloadLoad {
				res = matchMaybe
				continue
			}
			regs[e.DestRegister] = payload(ev, e)
		case *expr.Bitwise:
			v := regs[e.SourceRegister]
			if v == nil || len(e.Mask) != len(v) || len(e.Xor) != len(v) {
				regs[e.DestRegister] = nil
				continue
			}
			out := make([]byte, len(v))
			for i := range v {
				out[i] = v[i]&e.Mask[i] ^ e.Xor[i]
			}
			regs[e.DestRegister] = out
		case *expr.Cmp:
			v := regs[e.Register]
			if v == nil || len(v) != len(e.Data) {
				res = matchMaybe
				continue
			}
			c := bytes.Compare(v, e.Data) // registers hold network order for what is loaded here
			ok := false
			switch e.Op {
			case expr.CmpOpEq:
				ok = c == 0
			case expr.CmpOpNeq:
				ok = c != 0
			case expr.CmpOpLt:
				ok = c < 0
			case expr.CmpOpLte:
				ok = c <= 0
			case expr.CmpOpGt:
				ok = c > 0
			case expr.CmpOpGte:
				ok = c >= 0
			}
			if !ok {
				return matchNo
			}
		case *expr.Range:
			v := regs[e.Register]
			if v == nil || len(v) != len(e.FromData) || len(v) != len(e.ToData) {
				res = matchMaybe
				continue
			}
			in := bytes.Compare(v, e.FromData) >= 0 && bytes.Compare(v, e.ToData) <= 0
			if in != (e.Op == expr.CmpOpEq) {
				return matchNo
			}
		case *expr.Counter, *expr.Verdict, *expr.Reject, *expr.Target, *expr.Log:
			// no condition
		case *expr.Match:
			if e.Name != "comment" {
				res = matchMaybe
			}
		default:
			res = matchMaybe
		}
	}
	return res
}

// payload is what a payload load reads from the packet, when the event
// has it: IPv4/IPv6 protocol and addresses, transport ports.
func payload(ev *tracer.Event, p *expr.Payload) []byte {
	be16 := func(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
	switch p.Base {
	case expr.PayloadBaseNetworkHeader:
		switch {
		case ev.Family == 4 && p.Offset == 9 && p.Len == 1:
			return []byte{ev.Proto}
		case ev.Family == 4 && p.Offset == 12 && p.Len == 4 && ev.Src.Addr().Is4():
			return ev.Src.Addr().AsSlice()
		case ev.Family == 4 && p.Offset == 16 && p.Len == 4 && ev.Dst.Addr().Is4():
			return ev.Dst.Addr().AsSlice()
		case ev.Family == 6 && p.Offset == 6 && p.Len == 1:
			return []byte{ev.Proto}
		case ev.Family == 6 && p.Offset == 8 && p.Len == 16 && ev.Src.Addr().Is6():
			return ev.Src.Addr().AsSlice()
		case ev.Family == 6 && p.Offset == 24 && p.Len == 16 && ev.Dst.Addr().Is6():
			return ev.Dst.Addr().AsSlice()
		}
	case expr.PayloadBaseTransportHeader:
		switch ev.Proto {
		case unix.IPPROTO_TCP, unix.IPPROTO_UDP, unix.IPPROTO_UDPLITE, unix.IPPROTO_SCTP:
		default:
			return nil
		}
		switch {
		case p.Offset == 0 && p.Len == 2 && ev.Src.IsValid():
			return be16(ev.Src.Port())
		case p.Offset == 2 && p.Len == 2 && ev.Dst.IsValid():
			return be16(ev.Dst.Port())
		case p.Offset == 0 && p.Len == 4 && ev.Src.IsValid() && ev.Dst.IsValid():
			return append(be16(ev.Src.Port()), be16(ev.Dst.Port())...)
		}
	}
	return nil
}

package netfilter

import (
	"bytes"
	"encoding/binary"
	"net/netip"

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
// understood test already failed. Lookups into a set or verdict map whose
// elements were read (ri.sets) are understood too (see lookup).
func matches(ri *ruleInfo, ev *tracer.Event) matchResult {
	res, _ := eval(ri, ev)
	return res
}

// eval is matches, and the verdict map element the packet hit, if any
// (kube-proxy's vmaps name the Service in the element's comment).
func eval(ri *ruleInfo, ev *tracer.Event) (matchResult, *element) {
	if ri.legacy != nil {
		return ri.legacy.match(ev), nil
	}
	if podChainExcludes(ri, ev) {
		return matchNo, nil
	}
	switch nftables.TableFamily(ri.family) {
	case nftables.TableFamilyIPv4:
		if ev.Family != 4 {
			return matchNo, nil
		}
	case nftables.TableFamilyIPv6:
		if ev.Family != 6 {
			return matchNo, nil
		}
	case nftables.TableFamilyINet:
	default:
		return matchMaybe, nil
	}
	regs := registers{}
	res := matchYes
	var hit *element
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
			regs.set(e.Register, v) // nil: unknown
		case *expr.Payload:
			if e.OperationType != expr.PayloadLoad {
				res = matchMaybe
				continue
			}
			regs.set(e.DestRegister, payload(ev, e))
		case *expr.Bitwise:
			v := regs.get(e.SourceRegister)
			if v == nil || len(e.Mask) != len(v) || len(e.Xor) != len(v) {
				regs.set(e.DestRegister, nil)
				continue
			}
			out := make([]byte, len(v))
			for i := range v {
				out[i] = v[i]&e.Mask[i] ^ e.Xor[i]
			}
			regs.set(e.DestRegister, out)
		case *expr.Cmp:
			v := regs.get(e.Register)
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
				return matchNo, nil
			}
		case *expr.Range:
			v := regs.get(e.Register)
			if v == nil || len(v) != len(e.FromData) || len(v) != len(e.ToData) {
				res = matchMaybe
				continue
			}
			in := bytes.Compare(v, e.FromData) >= 0 && bytes.Compare(v, e.ToData) <= 0
			if in != (e.Op == expr.CmpOpEq) {
				return matchNo, nil
			}
		case *expr.Lookup:
			r, el := lookup(ri, &regs, e)
			switch {
			case r == matchNo:
				return matchNo, el
			case r == matchMaybe:
				res = matchMaybe
			}
			if el != nil {
				hit = el
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
	return res, hit
}

// registers models nf_tables' register file in 4-byte units
// (NFT_REG32_00..15 are 8..23; NFT_REG_1..4 are 16 bytes each, the same
// storage as NFT_REG32_00..15): a value loaded into one register spans as
// many as it needs, which is how a concatenation (ip daddr . meta
// l4proto . th dport) lands in consecutive registers, each part padded to
// 4 bytes with zeros.
type registers map[uint32][]byte

func reg32(r uint32) uint32 {
	if r >= 1 && r <= 4 {
		return 8 + (r-1)*4
	}
	return r
}

func (rg registers) set(r uint32, v []byte) { rg[reg32(r)] = v }

func (rg registers) get(r uint32) []byte { return rg[reg32(r)] }

// key reads n bytes from register r on, as a set lookup does: nil when a
// part is unknown or the parts do not add up to n. A set's key is as long
// as its type (inet_service: 2 bytes), a concatenation's parts each padded
// to 4: the last part's padding is not part of the key.
func (rg registers) key(r uint32, n int) []byte {
	var k []byte
	data := 0 // where the last part's bytes end
	for r = reg32(r); len(k) < n; {
		v := rg[r]
		if v == nil {
			return nil
		}
		words := (len(v) + 3) / 4
		k = append(k, v...)
		data = len(k)
		k = append(k, make([]byte, words*4-len(v))...)
		r += uint32(words)
	}
	if n < data || n > len(k) {
		return nil
	}
	return k[:n]
}

// lookup evaluates a set lookup (nft_lookup: `ip daddr @set`, `... vmap
// @map`) against the elements read: matchYes when the key is in the set
// (or, inverted, is not); for a verdict map (the result goes to the
// verdict register), matchYes only when the element's verdict is drop, with
// the element, and matchNo with the element when its verdict is another
// (accept, goto/jump a chain: the rule does not drop the packet itself).
// matchMaybe when the set's elements or the key are not known.
func lookup(ri *ruleInfo, rg *registers, e *expr.Lookup) (matchResult, *element) {
	s := ri.sets[e.SetName]
	if s == nil || s.partial {
		return matchMaybe, nil
	}
	k := rg.key(e.SourceRegister, s.keyLen)
	if k == nil {
		return matchMaybe, nil
	}
	el, ok := s.find(k)
	if e.IsDestRegSet {
		if e.DestRegister != 0 { // a data map: the value goes to a register
			rg.set(e.DestRegister, nil)
			if !ok {
				return matchNo, nil
			}
			return matchMaybe, nil
		}
		if !ok {
			return matchNo, nil
		}
		if el.verdict != "drop" {
			return matchNo, el
		}
		return matchYes, el
	}
	if ok == e.Invert {
		return matchNo, nil
	}
	return matchYes, nil
}

// payload is what a payload load reads from the packet, when the event
// has every byte of it: any part of the IPv4/IPv6 protocol and address
// fields (nft loads only the bytes a prefix needs: `ip daddr 10.96.0.0/16`
// is a 2-byte load), and of the transport ports.
func payload(ev *tracer.Event, p *expr.Payload) []byte {
	var hdr []byte // the header as far as the event knows it
	var known []bool
	put := func(off int, b []byte) {
		for len(hdr) < off+len(b) {
			hdr, known = append(hdr, 0), append(known, false)
		}
		copy(hdr[off:], b)
		for i := range b {
			known[off+i] = true
		}
	}
	switch p.Base {
	case expr.PayloadBaseNetworkHeader:
		// protocol, source and destination offsets (struct iphdr, ipv6hdr)
		proto, src, dst, is := 9, 12, 16, netip.Addr.Is4
		if ev.Family == 6 {
			proto, src, dst, is = 6, 8, 24, netip.Addr.Is6
		} else if ev.Family != 4 {
			return nil
		}
		put(proto, []byte{ev.Proto})
		if is(ev.Src.Addr()) {
			put(src, ev.Src.Addr().AsSlice())
		}
		if is(ev.Dst.Addr()) {
			put(dst, ev.Dst.Addr().AsSlice())
		}
	case expr.PayloadBaseTransportHeader:
		switch ev.Proto {
		case unix.IPPROTO_TCP, unix.IPPROTO_UDP, unix.IPPROTO_UDPLITE, unix.IPPROTO_SCTP:
		default:
			return nil
		}
		if ev.Src.IsValid() {
			put(0, binary.BigEndian.AppendUint16(nil, ev.Src.Port()))
		}
		if ev.Dst.IsValid() {
			put(2, binary.BigEndian.AppendUint16(nil, ev.Dst.Port()))
		}
	}
	off, n := int(p.Offset), int(p.Len)
	if n == 0 || off+n > len(hdr) {
		return nil
	}
	for _, k := range known[off : off+n] {
		if !k {
			return nil
		}
	}
	return bytes.Clone(hdr[off : off+n])
}

// matchesCtState says whether the rule matches on conntrack state: an
// nftables ct state expression, or an xt conntrack or state match
// (iptables' -m conntrack --ctstate, -m state; kept by iptables-nft as
// compat expressions, or in an iptables-legacy entry).
func (ri *ruleInfo) matchesCtState() bool {
	if ri.legacy != nil {
		return ri.legacy.ctState
	}
	for _, e := range ri.exprs {
		switch x := e.(type) {
		case *expr.Ct:
			if x.Key == expr.CtKeySTATE {
				return true
			}
		case *expr.Match:
			if x.Name == "conntrack" || x.Name == "state" {
				return true
			}
		}
	}
	return false
}

package tracer

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
)

// Filter selects events: the one definition of kdrop's filter. The kernel
// side applies it before any work is done (kernel turns it into the
// configuration of pass_filters and skip_reason in bpf/kdrop.bpf.c), Match
// applies the same rules in userspace (the agent's stream clients), and the
// sock_diag fallback passes its events through Match. Zero fields match
// everything; the zero Filter reports everything but BenignReasons.
type Filter struct {
	// Types are the event types to report; nil: all. The kernel side only
	// attaches the hooks of these types (and runs the sock_diag poller only
	// for ListenOverflow).
	Types []EventType
	// Reasons are the drop reasons to report, by name as `kdrop reasons`
	// lists them (with or without SKB_DROP_REASON_, any case); they restrict
	// drops only, not the other event types. nil: every reason but
	// BenignReasons. Subsystem reasons (mac80211, openvswitch...) are
	// reported only when Reasons is nil.
	Reasons []string
	// IncludeBenign, with Reasons nil, reports BenignReasons too.
	IncludeBenign bool
	// CIDRs: either end's address must be inside one of them. Addresses are
	// compared as IPv6, IPv4 as IPv4-mapped (::ffff:a.b.c.d), which is how
	// the kernel's addr_filter trie keys them: an IPv4 prefix also matches
	// the mapped form of its addresses in IPv6 packets, and an IPv6 prefix
	// that covers ::ffff:0:0/96 (::/0) matches IPv4 too. An end the event
	// does not carry (a summary's source, a packet that is not IP) matches
	// nothing.
	CIDRs []netip.Prefix
	// Port: either end's port (TCP and UDP; for an ICMP error, the
	// offending packet's); 0: any.
	Port uint16
	// Proto is the IP protocol (IPPROTO_*); 0: any.
	Proto uint8
	// Netns is the network namespace's inode; 0: any.
	Netns uint32
}

// Match says whether the filter selects e. It mirrors the kernel side:
// skip_reason (drops) and pass_filters in bpf/kdrop.bpf.c, configured by
// Filter.kernel, plus the event types, which the kernel side applies by
// attaching only their hooks. Summaries carry no source, so a port or
// address that only the source had no longer matches them.
func (f *Filter) Match(e *Event) bool {
	if len(f.Types) > 0 && !slices.Contains(f.Types, e.Type) {
		return false
	}
	if e.Type == Drop && (!f.wantsReason(e.ReasonCode, e.Reason) || (f.hidesBenign() && IsBenignPlace(e.Reason, e.Location, e.LinkMulti))) {
		return false
	}
	if f.Netns != 0 && e.Netns != f.Netns {
		return false
	}
	if f.Proto != 0 && e.Proto != f.Proto {
		return false
	}
	if f.Port != 0 && e.Src.Port() != f.Port && e.Dst.Port() != f.Port {
		return false
	}
	if len(f.CIDRs) > 0 && !f.matchAddr(e.Src.Addr()) && !f.matchAddr(e.Dst.Addr()) && !wildcardListener(e) {
		return false
	}
	return true
}

// wildcardListener: an overflow read through sock_diag names no peer and,
// for a listener bound to 0.0.0.0 or :: (or one it could not tell among
// several), no address of its own: it listens on every address of its
// namespace, those a CIDR filter selects too, so it passes any rather than
// be lost. (The kernel side never sees one: its overflows come from the
// packet, with both addresses.)
func wildcardListener(e *Event) bool {
	dst := e.Dst.Addr()
	return e.Type == ListenOverflow && !e.Src.Addr().IsValid() && (!dst.IsValid() || dst.IsUnspecified())
}

// wantsReason says whether a drop with this reason (its value and name) is
// reported: skip_reason in bpf/kdrop.bpf.c, whose bits kernel sets from it.
func (f *Filter) wantsReason(code uint32, name string) bool {
	if code>>subsysShift != 0 {
		return len(f.Reasons) == 0 // cfg_skip_subsys
	}
	if code >= maxCoreReasons {
		return true // beyond cfg_reason_skip: never skipped
	}
	if len(f.Reasons) > 0 {
		return slices.ContainsFunc(f.Reasons, func(r string) bool { return normReason(r) == name })
	}
	return f.IncludeBenign || !IsBenign(name)
}

// hidesBenign: the filter leaves out benign frees (BenignReasons, and
// NOT_SPECIFIED at BenignPlaces): no reasons named, IncludeBenign off.
func (f *Filter) hidesBenign() bool { return len(f.Reasons) == 0 && !f.IncludeBenign }

// matchAddr: a is inside one of the CIDRs, compared as the kernel's
// addr_match does (16 bytes, IPv4 mapped).
func (f *Filter) matchAddr(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	a16 := netip.AddrFrom16(a.As16())
	return slices.ContainsFunc(f.CIDRs, func(p netip.Prefix) bool { return lpmPrefix(p).Contains(a16) })
}

// lpmPrefix is p as the addr_filter trie holds it: 16 bytes, IPv4 as
// ::ffff:a.b.c.d with 96 more bits of prefix.
func lpmPrefix(p netip.Prefix) netip.Prefix {
	p = p.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return netip.PrefixFrom(netip.AddrFrom16(p.Addr().As16()), bits)
}

// kernelFilter is a Filter as bpf/kdrop.bpf.c applies it: the values of its
// cfg_* variables and the keys of its addr_filter trie.
type kernelFilter struct {
	netns      uint32
	port       uint16
	proto      uint8
	addrFilter uint8
	skipSubsys uint8
	reasonSkip [maxCoreReasons / 64]uint64 // bit n: skip drop reason n
	addrKeys   []kdropAddrKey
	// benignPC holds [start, end) text ranges of BenignPlaces, benignN of
	// them; a free with reason placeReason inside one is skipped.
	benignPC    [2 * benignPlaceMax]uint64
	benignN     uint32
	placeReason uint32
	hideMulti   uint8
}

// benignPlaces resolves BenignPlaces into the kernel filter's text
// ranges, when the filter hides benign frees. A function this kernel lacks
// is left out (its frees, if any, are shown).
func (k *kernelFilter) benignPlaces(f *Filter, r *Reasons, syms *Symbolizer) {
	if !f.hidesBenign() {
		return
	}
	if v, ok := r.Lookup("NOT_SPECIFIED"); ok {
		k.placeReason = v
	} else if r.Len() > 0 {
		return
	} // before 5.17 every free has reason 0
	k.hideMulti = 1
	for _, name := range BenignPlaces[:min(len(BenignPlaces), benignPlaceMax)] {
		if start, end, ok := syms.Range(name); ok {
			k.benignPC[2*k.benignN], k.benignPC[2*k.benignN+1] = start, end
			k.benignN++
		}
	}
}

// kernel derives the kernel side's configuration from the filter, with
// the running kernel's reason numbers; an unknown reason name is an error.
func (f *Filter) kernel(r *Reasons) (kernelFilter, error) {
	k := kernelFilter{
		netns: f.Netns, port: f.Port, proto: f.Proto,
		addrFilter: boolByte(len(f.CIDRs) > 0),
		skipSubsys: boolByte(!f.wantsReason(1<<subsysShift, "")),
	}
	for _, n := range f.Reasons {
		if _, err := r.LookupOrSuggest(n); err != nil {
			return k, err
		}
	}
	for v := uint32(0); v < maxCoreReasons; v++ {
		if !f.wantsReason(v, r.Name(v)) {
			k.reasonSkip[v/64] |= 1 << (v % 64)
		}
	}
	for _, p := range f.CIDRs {
		p = lpmPrefix(p)
		k.addrKeys = append(k.addrKeys, kdropAddrKey{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As16()})
	}
	return k, nil
}

// configure writes the filter and rate limit into the object's read-only
// data before load, and returns the filter's kernel side.
func (t *Tracer) configure(spec *ebpf.CollectionSpec) (kernelFilter, error) {
	k, err := t.opts.Filter.kernel(t.Reasons)
	if err != nil {
		return k, err
	}
	k.benignPlaces(&t.opts.Filter, t.Reasons, t.Symbols)
	for name, v := range map[string]any{
		"cfg_netns":           k.netns,
		"cfg_port":            k.port,
		"cfg_proto":           k.proto,
		"cfg_addr_filter":     k.addrFilter,
		"cfg_rate_limit":      t.opts.RateLimit,
		"cfg_skip_subsys":     k.skipSubsys,
		"cfg_reason_skip":     k.reasonSkip,
		"cfg_benign_pc":       k.benignPC,
		"cfg_benign_n":        k.benignN,
		"cfg_place_reason":    k.placeReason,
		"cfg_hide_link_multi": k.hideMulti,
	} {
		vs, ok := spec.Variables[name]
		if !ok {
			return k, fmt.Errorf("BPF object has no variable %s (regenerate it with make generate)", name)
		}
		if err := vs.Set(v); err != nil {
			return k, fmt.Errorf("configuring %s: %w", name, err)
		}
	}
	return k, nil
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// fillAddrFilter loads the CIDR filter's keys into the LPM trie.
func (t *Tracer) fillAddrFilter(keys []kdropAddrKey) error {
	for _, k := range keys {
		if err := t.maps["addr_filter"].Put(k, uint8(1)); err != nil {
			return fmt.Errorf("adding %s/%d to the address filter: %w", netip.AddrFrom16(k.Addr), k.Prefixlen, err)
		}
	}
	return nil
}

// LookupOrSuggest resolves a reason name or says what the kernel has.
func (r *Reasons) LookupOrSuggest(name string) (uint32, error) {
	if v, ok := r.Lookup(name); ok {
		return v, nil
	}
	if r.Len() == 0 {
		return 0, fmt.Errorf("drop reason %q: this kernel has no drop reasons (enum skb_drop_reason is new in 5.17); filter by --type drop instead", name)
	}
	msg := fmt.Sprintf("unknown drop reason %q", name)
	if s := r.Suggest(name); len(s) > 0 {
		msg += "; did you mean " + strings.Join(s, ", ") + "?"
	}
	return 0, fmt.Errorf("%s (kdrop reasons lists all %d this kernel knows)", msg, r.Len())
}

package tracer

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
)

// configure writes the filter and rate limit into the object's read-only
// data before load.
func (t *Tracer) configure(spec *ebpf.CollectionSpec) error {
	f := t.opts.Filter
	skip, skipSubsys, err := t.reasonSkipMask(f)
	if err != nil {
		return err
	}
	set := func(name string, v any) error {
		vs, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("BPF object has no variable %s (regenerate it with make generate)", name)
		}
		return vs.Set(v)
	}
	for name, v := range map[string]any{
		"cfg_netns":       f.Netns,
		"cfg_port":        f.Port,
		"cfg_proto":       f.Proto,
		"cfg_addr_filter": boolByte(len(f.CIDRs) > 0),
		"cfg_rate_limit":  t.opts.RateLimit,
		"cfg_skip_subsys": boolByte(skipSubsys),
		"cfg_reason_skip": skip,
	} {
		if err := set(name, v); err != nil {
			return fmt.Errorf("configuring %s: %w", name, err)
		}
	}
	return nil
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// reasonSkipMask computes which drop reasons the kernel side drops before
// doing any work: all but the asked-for ones, or the benign ones.
func (t *Tracer) reasonSkipMask(f Filter) (mask [16]uint64, skipSubsys bool, err error) {
	r := t.Reasons
	setBit := func(v uint32) {
		if v < maxCoreReasons {
			mask[v/64] |= 1 << (v % 64)
		}
	}
	if len(f.Reasons) > 0 {
		want := map[uint32]bool{}
		for _, n := range f.Reasons {
			v, err := r.LookupOrSuggest(n)
			if err != nil {
				return mask, false, err
			}
			want[v] = true
		}
		for v := uint32(0); v < maxCoreReasons; v++ {
			if !want[v] {
				setBit(v)
			}
		}
		return mask, true, nil
	}
	if !f.IncludeBenign {
		for _, n := range DefaultBenignReasons {
			if v, ok := r.Lookup(n); ok {
				setBit(v)
			}
		}
	}
	return mask, false, nil
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

// fillAddrFilter loads the CIDR filter into the LPM trie, IPv4 as
// IPv4-mapped IPv6 so one trie serves both families.
func (t *Tracer) fillAddrFilter() error {
	for _, p := range t.opts.Filter.CIDRs {
		p = p.Masked()
		k := kdropAddrKey{Prefixlen: uint32(p.Bits())}
		if p.Addr().Is4() {
			k.Prefixlen += 96
		}
		k.Addr = p.Addr().As16() // IPv4 comes out as ::ffff:a.b.c.d
		if err := t.maps["addr_filter"].Put(k, uint8(1)); err != nil {
			return fmt.Errorf("adding %s to the address filter: %w", p, err)
		}
	}
	return nil
}

// Match applies the filter in userspace, for consumers that share one
// tracer but want different views (the agent's stream clients). The
// benign-reason default is left to the kernel side.
func (f *Filter) Match(e *Event) bool {
	if len(f.Types) > 0 && !slices.Contains(f.Types, e.Type) {
		return false
	}
	if len(f.Reasons) > 0 && (e.Type != Drop || !slices.ContainsFunc(f.Reasons, func(r string) bool {
		return strings.EqualFold(shortReason(strings.ToUpper(r)), e.Reason)
	})) {
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
	if len(f.CIDRs) > 0 && !slices.ContainsFunc(f.CIDRs, func(p netip.Prefix) bool {
		return p.Contains(e.Src.Addr()) || p.Contains(e.Dst.Addr())
	}) {
		return false
	}
	return true
}

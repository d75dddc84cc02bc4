package tracer

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/cilium/ebpf/btf"
)

// Reasons names the running kernel's drop reasons. The numbers differ between
// kernels, so they only ever come from its BTF (enum skb_drop_reason, and
// the per-subsystem enums of modules such as mac80211 or openvswitch).
type Reasons struct {
	core   []string // index: reason value; "" for gaps
	byName map[string]uint32

	subsysOnce sync.Once
	subsys     map[uint32]string // full value (subsys<<16 | code) → name
}

const (
	reasonPrefix   = "SKB_DROP_REASON_"
	subsysShift    = 16
	reasonUnknown  = "unknown" // kernels without drop reasons (before 5.17)
	maxCoreReasons = 16 * 64   // cfg_reason_skip's bits in bpf/kdrop.bpf.c
)

// BenignReasons are the drop reasons that do not mean traffic was lost to a
// fault: the one list behind the kernel filter's default (Filter.
// IncludeBenign), `kdrop reasons` and the report's severities. Names the
// running kernel lacks are ignored. By the kernel's own words
// (include/net/dropreason-core.h, and where net/ sets each reason):
//
//   - TCP_OLD_DATA, TCP_OLD_ACK, TCP_TOO_OLD_ACK, TCP_OLD_SEQUENCE,
//     TCP_INVALID_SEQUENCE: segments that are old or out of window, mostly
//     retransmissions of what the receiver already has.
//   - QUEUE_PURGE: a queue flushed because its socket or device is closing.
//   - OTHERHOST: "packet don't belong to current host (interface is in
//     promisc mode)": a frame for another host's MAC address that a
//     promiscuous interface (a bridge, a capture) saw; its real destination
//     got its own copy.
//   - TCP_CLOSE: "TCP socket in CLOSE state": a segment for a socket that is
//     already closed (tcp_rcv_state_process); no connection is there to lose
//     it.
//   - TCP_RESET: "Invalid RST packet": a reset the kernel refused, out of
//     window (answered with a challenge ACK, RFC 5961) or sent to a
//     listener; the connection it aimed at goes on.
//
// The last three are the union with the list the report used to keep: each
// drops a packet no connection of this host was owed, which is what benign
// means here. --include-benign, or naming a reason in Filter.Reasons, shows
// them.
//
// NOT_SPECIFIED is not among them: most such frees on current kernels are
// real drops at sites that have no reason yet (ip_error: traffic routed
// into a blackhole, unreachable or prohibit route). Only those at
// BenignPlaces are benign.
var BenignReasons = []string{
	"TCP_OLD_DATA", "TCP_OLD_ACK", "TCP_TOO_OLD_ACK",
	"TCP_OLD_SEQUENCE", "TCP_INVALID_SEQUENCE", "QUEUE_PURGE",
	"OTHERHOST", "TCP_CLOSE", "TCP_RESET",
}

// BenignPlaces are the kernel functions whose NOT_SPECIFIED frees (on
// kernels before 5.17, which name no reasons: every free there) are normal,
// benign by place: the kernel filter tests a free's location against their
// text ranges, resolved from kallsyms at load time. Measured on 6.18 under
// test traffic (every NOT_SPECIFIED free by location, bpftrace), by the
// kernel's own code:
//
//   - ip6_mc_input: an IPv6 multicast packet for a group this host has
//     not joined (every link carries such: neighbour discovery, MLD); the
//     IPv6 counterpart of OTHERHOST.
//   - virtio_transport_recv_pkt: vsock (host to VM channels), not IP.
var BenignPlaces = []string{"ip6_mc_input", "virtio_transport_recv_pkt"}

// benignPlaceMax bounds BenignPlaces (cfg_benign_pc in bpf/kdrop.bpf.c).
const benignPlaceMax = 8

// IsBenignPlace says whether a drop with this reason at this location
// ("func+0xoff") is a benign free by place: NOT_SPECIFIED (or "unknown",
// before 5.17) in one of BenignPlaces, or of a frame that came as
// link-layer broadcast or multicast (linkMulti: mDNS, SSDP, DHCP, subnet
// broadcasts nobody on this host listens to; OTHERHOST's kin).
func IsBenignPlace(reason, location string, linkMulti bool) bool {
	if r := normReason(reason); r != "NOT_SPECIFIED" && r != strings.ToUpper(reasonUnknown) {
		return false
	}
	fn, _, _ := strings.Cut(location, "+")
	return linkMulti || slices.Contains(BenignPlaces, fn)
}

// IsBenign says whether a drop reason (a name, with or without the
// SKB_DROP_REASON_ prefix, in any case) is one of BenignReasons.
func IsBenign(name string) bool {
	return slices.Contains(BenignReasons, normReason(name))
}

// LoadReasons reads the drop reasons from kernel BTF (nil: the running
// kernel's). A kernel without the enum (before 5.17) gives an empty table;
// every drop then has reason "unknown" and is told apart by its location.
func LoadReasons(spec *btf.Spec) (*Reasons, error) {
	if spec == nil {
		var err error
		if spec, err = btf.LoadKernelSpec(); err != nil {
			return nil, fmt.Errorf("reading kernel BTF: %w (kdrop needs CONFIG_DEBUG_INFO_BTF=y)", err)
		}
	}
	r := &Reasons{byName: map[string]uint32{}}
	var enum *btf.Enum
	err := spec.TypeByName("skb_drop_reason", &enum)
	if errors.Is(err, btf.ErrNotFound) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading enum skb_drop_reason from BTF: %w", err)
	}
	for _, v := range enum.Values {
		// SKB_DROP_REASON_MAX and _SUBSYS_MASK are markers, not reasons
		if v.Value >= 1<<subsysShift || v.Name == reasonPrefix+"MAX" {
			continue
		}
		name := shortReason(v.Name)
		for uint64(len(r.core)) <= v.Value {
			r.core = append(r.core, "")
		}
		r.core[v.Value] = name
		r.byName[name] = uint32(v.Value)
	}
	return r, nil
}

func shortReason(n string) string {
	n = strings.TrimPrefix(n, reasonPrefix)
	return strings.TrimPrefix(n, "SKB_")
}

// normReason spells a reason name given by a user as Reasons names it.
func normReason(name string) string {
	return shortReason(strings.ToUpper(strings.TrimSpace(name)))
}

// Len is the number of reasons the kernel defines (0 before 5.17).
func (r *Reasons) Len() int { return len(r.byName) }

// Name returns a reason's name, as the kernel spells it without the
// SKB_DROP_REASON_ prefix.
func (r *Reasons) Name(v uint32) string {
	if len(r.core) == 0 {
		return reasonUnknown
	}
	if v < uint32(len(r.core)) && r.core[v] != "" {
		return r.core[v]
	}
	if v>>subsysShift != 0 {
		r.subsysOnce.Do(r.loadSubsystems)
		if n, ok := r.subsys[v]; ok {
			return n
		}
	}
	return fmt.Sprintf("reason#%d", v)
}

// Lookup finds a reason by name, with or without the SKB_DROP_REASON_
// prefix, in any case.
func (r *Reasons) Lookup(name string) (uint32, bool) {
	v, ok := r.byName[normReason(name)]
	return v, ok
}

// Names lists all reason names in value order.
func (r *Reasons) Names() []string {
	var out []string
	for _, n := range r.core {
		if n != "" {
			out = append(out, n)
		}
	}
	return out
}

// Suggest returns up to three known names close to a mistyped one.
func (r *Reasons) Suggest(name string) []string {
	want := normReason(name)
	type cand struct {
		n string
		d int
	}
	var cs []cand
	for n := range r.byName {
		d := editDistance(want, n)
		if strings.Contains(n, want) || strings.Contains(want, n) {
			d = min(d, 2)
		}
		if d <= max(2, len(want)/3) {
			cs = append(cs, cand{n, d})
		}
	}
	sort.Slice(cs, func(i, j int) bool {
		if cs[i].d != cs[j].d {
			return cs[i].d < cs[j].d
		}
		return cs[i].n < cs[j].n
	})
	var out []string
	for i := 0; i < len(cs) && i < 3; i++ {
		out = append(out, cs[i].n)
	}
	return out
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// loadSubsystems reads drop-reason enums of loaded modules (mac80211,
// openvswitch...): their values carry the subsystem in the high bits. Done
// once, the first time such a value shows up, since it reads many files.
func (r *Reasons) loadSubsystems() {
	r.subsys = map[uint32]string{}
	base, err := btf.LoadKernelSpec()
	if err != nil {
		return
	}
	entries, _ := os.ReadDir("/sys/kernel/btf")
	for _, e := range entries {
		if e.Name() == "vmlinux" {
			continue
		}
		f, err := os.Open("/sys/kernel/btf/" + e.Name())
		if err != nil {
			continue
		}
		spec, err := btf.LoadSplitSpecFromReader(f, base)
		f.Close()
		if err != nil {
			continue
		}
		for typ, err := range spec.All() {
			if err != nil {
				break
			}
			en, ok := typ.(*btf.Enum)
			if !ok || !strings.HasSuffix(en.Name, "_drop_reason") {
				continue
			}
			for _, v := range en.Values {
				if v.Value>>subsysShift != 0 {
					r.subsys[uint32(v.Value)] = v.Name
				}
			}
		}
	}
}

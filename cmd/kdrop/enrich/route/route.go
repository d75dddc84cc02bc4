// Package route names the route behind a route drop: a packet the kernel
// routed into a blackhole, unreachable or prohibit route (what a CNI
// leaves for a deleted pod's IP or a dead CIDR), which IPv4 frees at
// ip_error without a drop reason and IPv6 at ip6_pkt_drop
// (IP_INNOROUTES, IP_OUTNOROUTES), or, for a blackhole route, at the
// route's own dst_discard / dst_discard_out. It reads the routes of the drop's
// network namespace over rtnetlink, at most once a second per namespace,
// and finds the longest such route containing the destination.
package route

import (
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/tracer"
)

// Route is the route that dropped a packet: the `route` object of a line.
type Route struct {
	// Type is "blackhole", "unreachable", "prohibit" or "throw" (RTN_*).
	Type string
	// Dst is the route's destination prefix.
	Dst netip.Prefix
	// Table is the routing table (254: main).
	Table int
}

// String is "blackhole 198.19.131.0/24" (with "table N" outside main).
func (r *Route) String() string {
	s := r.Type + " " + r.Dst.String()
	if r.Table != unix.RT_TABLE_MAIN && r.Table != 0 {
		s += " table " + strconv.Itoa(r.Table)
	}
	return s
}

// Wants says whether ev is a route drop kdrop looks the route up for.
func Wants(ev *tracer.Event) bool {
	if ev.Type != tracer.Drop || !ev.Dst.Addr().IsValid() {
		return false
	}
	switch ev.Reason {
	case "IP_INNOROUTES", "IP_OUTNOROUTES":
		return true
	case "NOT_SPECIFIED", "unknown":
		for _, at := range []string{"ip_error+", "ip6_pkt_drop+", "dst_discard_out+", "dst_discard+"} {
			if strings.HasPrefix(ev.Location, at) {
				return true
			}
		}
	}
	return false
}

// Finder looks routes up, caching each namespace's drop routes for TTL.
type Finder struct {
	// NetnsPaths lists namespaces by inode; default tracer.NetnsPaths.
	NetnsPaths func() map[uint32]string
	// TTL is how long a namespace's routes are reused; default 1 s.
	TTL time.Duration

	mu    sync.Mutex
	cache map[uint32]entry
}

type entry struct {
	at     time.Time
	routes []Route
}

// maxCached bounds the namespaces whose routes are held.
const maxCached = 1024

// Lookup returns the longest blackhole, unreachable, prohibit or throw
// route of namespace netns containing dst, or nil when there is none (the
// packet had no route at all) or the routes cannot be read.
func (f *Finder) Lookup(netnsIno uint32, dst netip.Addr) *Route {
	routes := f.routes(netnsIno)
	var best *Route
	dst = dst.Unmap()
	for i := range routes {
		r := &routes[i]
		if r.Dst.Contains(dst) && (best == nil || r.Dst.Bits() > best.Dst.Bits()) {
			best = r
		}
	}
	if best == nil {
		return nil
	}
	c := *best
	return &c
}

func (f *Finder) routes(ino uint32) []Route {
	ttl := f.TTL
	if ttl <= 0 {
		ttl = time.Second
	}
	f.mu.Lock()
	if f.cache == nil {
		f.cache = map[uint32]entry{}
	}
	e, ok := f.cache[ino]
	f.mu.Unlock()
	if ok && time.Since(e.at) < ttl {
		return e.routes
	}
	paths := f.NetnsPaths
	if paths == nil {
		paths = tracer.NetnsPaths
	}
	rs, _ := read(paths()[ino])
	f.mu.Lock()
	if len(f.cache) >= maxCached {
		clear(f.cache)
	}
	f.cache[ino] = entry{time.Now(), rs}
	f.mu.Unlock()
	return rs
}

// read lists the drop routes of every table of the namespace at path.
func read(path string) ([]Route, error) {
	if path == "" {
		return nil, nil
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var out []Route
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		list, err := h.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return out, err
		}
		for _, r := range list {
			typ := map[int]string{unix.RTN_BLACKHOLE: "blackhole", unix.RTN_UNREACHABLE: "unreachable",
				unix.RTN_PROHIBIT: "prohibit", unix.RTN_THROW: "throw"}[r.Type]
			if typ == "" {
				continue
			}
			p := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if fam == netlink.FAMILY_V6 {
				p = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
			if r.Dst != nil {
				a, ok := netip.AddrFromSlice(r.Dst.IP)
				ones, _ := r.Dst.Mask.Size()
				if !ok {
					continue
				}
				p = netip.PrefixFrom(a.Unmap(), ones)
			}
			out = append(out, Route{Type: typ, Dst: p, Table: r.Table})
		}
	}
	return out, nil
}

package route

import (
	"net/netip"
	"testing"

	"github.com/kdrop/kdrop/tracer/nstest"
)

// Routes read from a namespace the test makes: the longest drop route
// containing the address, of each kind, IPv4 and IPv6, in main and another
// table; none for an address only a normal route covers.
func TestLookupInNamespace(t *testing.T) {
	ns := nstest.New(t, "rte")
	for _, r := range []string{
		"route add blackhole 198.19.131.0/24", "route add unreachable 198.19.132.0/24", "route add prohibit 198.19.133.0/24",
		"route add blackhole 198.19.0.0/16", "route add unreachable 198.19.134.0/24 table 100",
		"-6 route add blackhole fd00:19:131::/64", "-6 route add prohibit fd00:19:133::/64",
	} {
		ns.IP(t, r)
	}
	ns.IP(t, "link set lo up")
	ns.IP(t, "addr add 198.18.5.1/24 dev lo")
	f := &Finder{}
	for addr, want := range map[string]string{
		"198.19.131.5": "blackhole 198.19.131.0/24", "198.19.132.5": "unreachable 198.19.132.0/24",
		"198.19.133.5": "prohibit 198.19.133.0/24", "198.19.200.1": "blackhole 198.19.0.0/16",
		"198.19.134.9":        "unreachable 198.19.134.0/24 table 100",
		"fd00:19:131::7":      "blackhole fd00:19:131::/64",
		"fd00:19:133::7":      "prohibit fd00:19:133::/64",
		"::ffff:198.19.131.5": "blackhole 198.19.131.0/24",
		"198.18.5.9":          "",
	} {
		got := f.Lookup(ns.Inode, netip.MustParseAddr(addr))
		s := ""
		if got != nil {
			s = got.String()
		}
		if s != want {
			t.Errorf("Lookup(%s) = %q, want %q", addr, s, want)
		}
	}
	if r := f.Lookup(1, netip.MustParseAddr("198.19.131.5")); r != nil {
		t.Errorf("a namespace that does not exist: %v", r)
	}
}

package tracer

import (
	"bytes"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/tracer/nstest"
)

// A path MTU black hole's first half: a router whose link toward the server
// has MTU 1280 answers 1400-byte packets that may not be fragmented (IPv4
// DF, and every IPv6 packet) with frag-needed / packet-too-big. Each error
// the router sent (its own counters, under the default ICMP rate limits) is
// one unreach event that carries the MTU it advertised, where the hook
// sees the ICMP header (not the icmp_send tracepoint).
func TestPMTUErrorsCarryTheMTU(t *testing.T) {
	r := nstest.NewRouted(t)
	r.Router.IP(t, "link set dev "+r.RouterToServer+" mtu 1280")
	// a rate limit of 5: the rest come in summaries, which carry the MTU too
	c := startTracer(t, Options{Filter: Filter{Netns: r.Router.Inode, Types: []EventType{Unreachable}}, RateLimit: 5})
	type family struct {
		counter, name, dst string
		hook               HookStatus
	}
	var fams []family
	var checks []loadCheck
	for _, tc := range []struct {
		counter, name, dst, hook string
	}{
		{"IcmpOutDestUnreachs", "frag-needed", nstest.ServerIP, "icmp_send"},
		{"Icmp6OutPktTooBigs", "packet-too-big", nstest.ServerIP6, "icmp6_send"},
	} {
		h := c.hook(tc.hook)
		if h.Mode == "" {
			t.Logf("%s not hookable here: %v", tc.name, h.Failed)
			continue
		}
		fams = append(fams, family{tc.counter, tc.name, tc.dst, h})
		checks = append(checks, loadCheck{what: tc.name + " (" + tc.counter + ")", counter: counters(t, r.Router, tc.counter),
			keep: func(e *Event) bool {
				return e.Type == Unreachable && ICMPName(e.Family == 6, e.ICMPType, e.ICMPCode) == tc.name && e.Dst.Addr().String() == tc.dst
			}})
	}
	if len(checks) == 0 {
		t.Fatal("neither icmp_send nor icmp6_send hooked")
	}
	// 4 of each every 100 ms (the kernel never rate-limits frag-needed nor
	// packet-too-big: path MTU discovery needs them): 8 errors per 200 ms
	// sweep, above kdrop's 5.
	send := func() func() {
		return nstest.Paced(t, 100*time.Millisecond, func() {
			r.Client.SendDF(t, nstest.ServerIP, 9, 1400, 4)
			r.Client.SendDF(t, nstest.ServerIP6, 9, 1400, 4)
		})
	}
	all, counts := underLoadEach(t, c, 3*time.Second, 2*time.Second, send, checks...)
	for i, tc := range fams {
		h := tc.hook
		_, evs := sum(all, checks[i].keep)
		for _, e := range evs {
			want := uint32(1280)
			if h.Target == "icmp_send" { // the tracepoint has no MTU
				want = 0
			}
			if e.ICMPMTU() != want || !e.Summary && e.Src.Addr().String() != nstest.ClientIP && e.Src.Addr().String() != nstest.ClientIP6 {
				t.Errorf("%s via %s: MTU %d, want %d; source %v\n%s", tc.name, h, e.ICMPMTU(), want, e.Src, dump([]Event{e}))
			}
		}
		summaries, _ := sum(evs, func(e *Event) bool { return e.Summary })
		if summaries == 0 {
			t.Errorf("%s: no summary (rate limit 5, %d errors)", tc.name, counts[i])
		}
		t.Logf("%s: %d events (%d in summaries), MTU %d (hook %s)", tc.name, counts[i], summaries, evs[0].ICMPMTU(), h)
	}
}

// A path MTU black hole's second half, the router beyond sight (beyond the
// node): the client's firewall drops the frag-needed and packet-too-big
// errors the router sends. Each drop says the MTU its error carried, from
// the router that sent it, counted as the rules count them while the
// traffic runs.
func TestDroppedPMTUErrorsCarryTheMTU(t *testing.T) {
	r := nstest.NewRouted(t)
	r.Router.IP(t, "link set dev "+r.RouterToServer+" mtu 1280")
	r.Client.Sh(t, "iptables -A INPUT -p icmp --icmp-type fragmentation-needed -j DROP")
	r.Client.Sh(t, "ip6tables -A INPUT -p icmpv6 --icmpv6-type packet-too-big -j DROP")
	c := startTracer(t, Options{Filter: Filter{Netns: r.Client.Inode, Types: []EventType{Drop}}, RateLimit: 100})
	// the rules' drops (not, say, neighbour discovery freed elsewhere)
	byRule := isDrop("NETFILTER_DROP", "nf_hook_slow", c.tr.Reasons)
	isICMP := func(e *Event) bool {
		return byRule(e) && (e.Proto == unix.IPPROTO_ICMP || e.Proto == unix.IPPROTO_ICMPV6)
	}
	rules := func() uint64 {
		return r.Client.IptablesPackets(t, "iptables", "INPUT", "DROP", "") + r.Client.IptablesPackets(t, "ip6tables", "INPUT", "DROP", "")
	}
	evs, n := underLoad(t, c, "dropped too-big errors", 3*time.Second, 2*time.Second, func() func() {
		return nstest.Paced(t, 50*time.Millisecond, func() {
			r.Client.SendDF(t, nstest.ServerIP, 9, 1400, 1)
			r.Client.SendDF(t, nstest.ServerIP6, 9, 1400, 1)
		})
	}, isICMP, rules)
	_, drops := sum(evs, isICMP)
	lines := 0
	for _, e := range drops {
		if e.Summary {
			continue
		}
		lines++
		router := "198.18.1.1"
		if e.Family == 6 {
			router = "fd00:18:1::1"
		}
		name := ICMPKnownName(e.Family == 6, e.ICMPType, e.ICMPCode)
		if e.ICMPMTU() != 1280 || e.Src.Addr().String() != router || (name != "frag-needed" && name != "packet-too-big") {
			t.Errorf("a dropped too-big error: %s from %v with MTU %d, want frag-needed or packet-too-big from %s with MTU 1280\n%s",
				name, e.Src.Addr(), e.ICMPMTU(), router, dump([]Event{e}))
		}
	}
	if lines == 0 {
		t.Fatalf("none of the %d dropped errors came as a line", n)
	}
}

// An error the kernel sends through a bridge (a node answering a pod on
// a CNI bridge) is queued twice, on the bridge and then on its port: it
// is one event, counted where it leaves (the port), as the kernel counts
// it once.
func TestICMPErrorThroughBridgeOnce(t *testing.T) {
	node, pod := nstest.New(t, "nod"), nstest.New(t, "pod")
	nodeDev, _ := nstest.Veth(t, node, "198.18.9.9/32", "", pod, "198.18.7.2/24", "")
	node.IP(t, "addr del 198.18.9.9/32 dev "+nodeDev)
	node.IP(t, "link add kdbr0 type bridge")
	node.IP(t, "link set "+nodeDev+" master kdbr0")
	node.IP(t, "addr add 198.18.7.1/24 dev kdbr0")
	node.IP(t, "link set kdbr0 up")
	c := startTracer(t, Options{Filter: Filter{Netns: node.Inode, Types: []EventType{Unreachable}}})
	h := c.hook("icmp_send")
	send := func() func() {
		return nstest.Paced(t, 50*time.Millisecond, func() { pod.SendUDP(t, "198.18.7.1", 9, 1) })
	}
	_, got := underLoad(t, c, "IcmpOutDestUnreachs through the bridge ("+string(h.Mode)+")", 3*time.Second, 2*time.Second, send,
		func(e *Event) bool { return e.Type == Unreachable && e.Dst.Port() == 9 }, counters(t, node, "IcmpOutDestUnreachs"))
	t.Logf("%d errors through the bridge (hook %s)", got, h)
}

// An error that waits for neighbour resolution leaves after the shared
// per-CPU ICMP socket went back to the initial namespace: it is still the
// server's error, in the server's namespace (the device's), once each.
func TestICMPErrorWhileResolvingNeighbour(t *testing.T) {
	r := nstest.NewRouted(t)
	c := startTracer(t, Options{Filter: Filter{Types: []EventType{Unreachable}, Port: 7}})
	before := r.Server.Counters(t)
	for i := 0; i < 3; i++ {
		r.Server.IP(t, "neigh flush all")
		r.Server.IP(t, "-6 neigh flush all")
		r.Client.SendUDP(t, nstest.ServerIP, 7, 1)
		r.Client.SendUDP(t, nstest.ServerIP6, 7, 1)
		time.Sleep(300 * time.Millisecond)
	}
	evs := c.stop(t)
	after := r.Server.Counters(t)
	want := after["IcmpOutDestUnreachs"] - before["IcmpOutDestUnreachs"] + after["Icmp6OutDestUnreachs"] - before["Icmp6OutDestUnreachs"]
	got, _ := sum(evs, func(e *Event) bool { return e.Netns == r.Server.Inode })
	elsewhere, other := sum(evs, func(e *Event) bool { return e.Netns != r.Server.Inode })
	if got != want || want < 6 || elsewhere != 0 {
		t.Fatalf("errors sent %d, events in the server's namespace %d, elsewhere %d\n%s", want, got, elsewhere, dump(other))
	}
}

// A tunnel's outer packet keeps the inner packet's socket: an ICMP error
// sent through VXLAN is one event (at the VXLAN device), not a second one
// for the outer UDP packet, and echo replies are none.
func TestICMPErrorThroughVXLANOnce(t *testing.T) {
	a, b := vxlanPair(t)
	c := startTracer(t, Options{Filter: Filter{Types: []EventType{Unreachable}, Netns: b.Inode}})
	send := func() func() {
		return nstest.Paced(t, 50*time.Millisecond, func() { a.SendUDP(t, "198.18.21.2", 7, 1) })
	}
	// every event: the outer packet's would be a second one
	underLoad(t, c, "IcmpOutDestUnreachs through VXLAN", 3*time.Second, 2*time.Second, send,
		func(e *Event) bool { return true }, counters(t, b, "IcmpOutDestUnreachs"))
}

// An ICMP error passes every device stacked on the one that sends it (a
// macvlan or ipvlan on its lower device, a VRF on its port): one error is
// one event, in the namespace of the device it left by first (a pod's
// macvlan or ipvlan), whichever device the hook saw it on. The hook is
// forced to the transmit path (net_dev_queue) where that is the question.
func TestICMPErrorThroughStackedDevicesOnce(t *testing.T) {
	for _, tc := range []struct {
		name, add string // add: the stacked device kdst0 on lower
		inPod     bool   // moved into the pod's namespace, the address with it
	}{
		{"macvlan in another namespace", "link add kdst0 link LOWER type macvlan mode bridge", true},
		{"ipvlan in another namespace", "link add kdst0 link LOWER type ipvlan mode l2", true},
		{"vrf", "link add kdst0 type vrf table 10", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host, pod, client := nstest.New(t, "sth"), nstest.New(t, "stp"), nstest.New(t, "stc")
			lower, _ := nstest.Veth(t, host, "198.18.9.9/32", "", client, "198.18.7.2/24", "")
			host.IP(t, "addr del 198.18.9.9/32 dev "+lower)
			stack(t, host, strings.ReplaceAll(tc.add, "LOWER", lower))
			sender := host
			if tc.inPod {
				host.IP(t, "link set kdst0 netns "+pod.Name)
				pod.IP(t, "addr add 198.18.7.1/24 dev kdst0")
				pod.IP(t, "link set kdst0 up")
				sender = pod
			} else { // a VRF: its port keeps the address
				host.IP(t, "link set kdst0 up")
				host.IP(t, "link set "+lower+" master kdst0")
				host.IP(t, "addr add 198.18.7.1/24 dev "+lower)
			}
			modes := testModes(t)
			if modes == nil {
				modes = []Mode{ModeTPBTF, ModeRawTP, ModeSockDiag}
			}
			c := startTracer(t, Options{Modes: modes, Filter: Filter{Types: []EventType{Unreachable}, Port: 9}})
			h := c.hook("icmp_send")
			send := func() func() {
				return nstest.Paced(t, 50*time.Millisecond, func() { client.SendUDP(t, "198.18.7.1", 9, 1) })
			}
			evs, got := underLoad(t, c, "IcmpOutDestUnreachs in the sender's namespace ("+string(h.Mode)+")", 3*time.Second, 2*time.Second, send,
				func(e *Event) bool { return e.Netns == sender.Inode }, counters(t, sender, "IcmpOutDestUnreachs"))
			if elsewhere, other := sum(evs, func(e *Event) bool { return e.Netns != sender.Inode }); elsewhere != 0 {
				t.Fatalf("hook %s: %d events outside the sender's namespace\n%s", h, elsewhere, dump(other))
			}
			t.Logf("%d errors (hook %s)", got, h)
		})
	}
}

// stack adds a stacked device, or skips when this kernel has no driver for
// it (then the case cannot arise here).
func stack(t *testing.T, ns *nstest.NS, cmdline string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", ns.Name}, strings.Fields(cmdline)...)...).CombinedOutput(); err != nil {
		t.Skipf("this kernel cannot stack the device (ip %s: %v: %s)", cmdline, err, bytes.TrimSpace(out))
	}
}

// A router that forwards a packet out the interface it came in on, to a
// gateway on the sender's own link, tells the sender so with an ICMP
// redirect (ip_rt_send_redirect: at most 9, then it backs off). Each one
// sent is an event carrying the gateway, as many as IcmpOutRedirects.
func TestICMPRedirectsCarryTheGateway(t *testing.T) {
	client, router := nstest.New(t, "rdc"), nstest.New(t, "rdr")
	nstest.Veth(t, client, "198.18.60.1/24", "", router, "198.18.60.2/24", "")
	router.Sysctl(t, "net.ipv4.ip_forward", "1")
	router.IP(t, "route add 198.18.61.0/24 via 198.18.60.9") // a gateway on the client's link
	client.IP(t, "route add 198.18.61.0/24 via 198.18.60.2")
	c := startTracer(t, Options{Filter: Filter{Netns: router.Inode, Types: []EventType{Unreachable}}})
	h := c.hook("icmp_send")
	isRedirect := func(e *Event) bool { return e.ICMPType == 5 }
	send := func() func() {
		return nstest.Paced(t, 20*time.Millisecond, func() { client.SendUDP(t, "198.18.61.5", 9, 1) })
	}
	evs, got := underLoad(t, c, "IcmpOutRedirects ("+string(h.Mode)+")", 3*time.Second, 2*time.Second, send, isRedirect, counters(t, router, "IcmpOutRedirects"))
	_, all := sum(evs, isRedirect)
	gw := netip.MustParseAddr("198.18.60.9")
	for _, e := range all {
		if e.Summary {
			continue
		}
		if mode := Mode(e.Source); mode != ModeTPBTF && mode != ModeRawTP && mode != ModeFentry && mode != ModeKprobe {
			continue // the icmp_send tracepoint has no second word
		}
		if e.ICMPGateway() != gw || e.What() != "redirect-host gateway 198.18.60.9" || e.Dst.Port() != 9 {
			t.Fatalf("want a host redirect to gateway %s for port 9:\n%s", gw, dump([]Event{e}))
		}
	}
	t.Logf("%d redirect events, gateway %s (hook %s)", got, gw, h)
}

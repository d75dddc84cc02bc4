package report

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
)

// Findings for drops whose cause lies in the node's own setup, each with
// the fix an operator applies there: a path MTU black hole, route drops,
// strict reverse-path filtering, PAWS, receive buffers that overflow.

// claim gathers the drops no finding explained yet that keep accepts,
// grouped by key, and marks them explained.
func (a *analysis) claim(keep func(*Flow) bool, key func(*Flow) string) *groups {
	var gs groups
	for _, f := range a.rec.Flows {
		if f.Type != "drop" || a.used[f] || !keep(f) {
			continue
		}
		gs.get(key(f)).add(f)
		a.used[f] = true
	}
	return &gs
}

// place names where the kernel acted (actor), "an unknown place" when
// nothing says.
func place(f *Flow) string {
	if w := actor(f); w != "unknown" {
		return w
	}
	return "an unknown place"
}

// dropper says what dropped a group's packets: the rule or the route kdrop
// named, else the reason.
func dropper(f *Flow) string {
	switch {
	case f.Rule != "":
		return "by rule " + f.Rule
	case f.Route != "":
		return "by route " + f.Route
	}
	return "(" + f.Reason + ")"
}

func isReason(f *Flow, reasons ...string) bool {
	for _, r := range reasons {
		if f.Reason == r {
			return true
		}
	}
	return false
}

// icmpBase is an unreach event's ICMP error without its MTU.
func icmpBase(icmp string) string {
	for _, extra := range []string{" mtu ", " pointer ", " gateway "} {
		icmp, _, _ = strings.Cut(icmp, extra)
	}
	return icmp
}

func isTooBig(icmp string) bool {
	b := icmpBase(icmp)
	return b == "frag-needed" || b == "packet-too-big"
}

func (a *analysis) hintFindings() {
	a.pmtuFindings()
	a.routeFindings()
	a.rpFilterFindings()
	a.pawsFindings()
	a.rcvbufFindings()
}

// ---------------------------------------------------------------------------
// Path MTU black holes: an ICMP frag-needed / packet-too-big dropped on its
// way to the host that sent the packet too big. That host never learns
// the path MTU and keeps sending packets the path drops.

func (a *analysis) pmtuFindings() {
	// what routers told each sender, from their unreach events
	type told struct {
		by, mtu counter
		count   uint64
		flows   []*Flow
	}
	tolds := map[netip.Addr]*told{}
	for _, f := range a.rec.Flows {
		if f.Type != "unreach" || !isTooBig(f.ICMP) || !f.Src.IsValid() {
			continue
		}
		t := tolds[f.Src]
		if t == nil {
			t = &told{by: counter{}, mtu: counter{}}
			tolds[f.Src] = t
		}
		t.by.add(place(f), f.Count)
		if f.ICMPMTU != 0 {
			t.mtu.add(fmt.Sprint(f.ICMPMTU), f.Count)
		}
		t.count += f.Count
		t.flows = append(t.flows, f)
	}
	// The errors a drop names: its ICMP type says so. Summary lines of
	// the same kernel flow (same place, destination and reason) do not
	// say the type; they join, and so do untyped ICMP drops to a host a
	// router told the MTU.
	type kflow struct {
		node   string
		netns  uint64
		dst    netip.Addr
		reason string
	}
	typed := map[kflow]bool{}
	for _, f := range a.rec.Flows {
		if f.Type == "drop" && isTooBig(f.ICMP) {
			typed[kflow{f.Node, f.Netns, f.Dst, f.Reason}] = true
		}
	}
	untyped := map[*group]uint64{}
	gs := a.claim(func(f *Flow) bool {
		if f.Proto != "icmp" && f.Proto != "icmpv6" {
			return false
		}
		return isTooBig(f.ICMP) || f.ICMP == "" && (typed[kflow{f.Node, f.Netns, f.Dst, f.Reason}] || tolds[f.Dst] != nil)
	}, func(f *Flow) string {
		return place(f) + "|" + f.Dst.String() + "|" + f.Reason + "|" + f.Rule
	})
	for _, g := range gs.order {
		for _, f := range g.flows {
			if f.ICMP == "" {
				untyped[g] += f.Count
			}
		}
	}
	for _, g := range gs.order {
		f0 := g.flows[0]
		host, where := f0.Dst.String(), place(f0)
		if known(f0.DstK8s) {
			host = pod(f0.DstK8s, f0.Dst)
		}
		fd := Finding{Severity: SevCritical, Kind: "pmtu-black-hole", Count: g.count, First: g.first, Last: g.last}
		t := tolds[f0.Dst]
		// the MTU the routers told: from their own unreach events where
		// recorded, else from the errors that were dropped (a router
		// beyond the cluster); the dropped errors' sources are the routers
		carried := counter{}
		for _, f := range g.flows {
			if f.ICMPMTU != 0 {
				carried.add(fmt.Sprint(f.ICMPMTU), f.Count)
			}
		}
		mtu := "the path MTU"
		switch {
		case t != nil && len(t.mtu) > 0:
			mtu = "the path MTU is " + t.mtu.names(2)
		case len(carried) > 0:
			mtu = "the path MTU is " + carried.names(2)
		}
		// who told: the routers' own errors, else the dropped errors' sources
		by := ""
		switch {
		case t != nil:
			by = t.by.names(2)
		case len(carried) > 0:
			by = g.sources.names(2)
		}
		if by != "" {
			fd.Title = fmt.Sprintf("Path MTU black hole: %s told %s %s, but %s dropped the ICMP error %s: %s lost",
				by, host, mtu, where, dropper(f0), plural(g.count, "error", "errors"))
		} else {
			fd.Title = fmt.Sprintf("Path MTU black hole: %s to %s dropped at %s %s",
				plural(g.count, "ICMP too-big error", "ICMP too-big errors"), host, where, dropper(f0))
		}
		var d strings.Builder
		fmt.Fprintf(&d, "%s, %s (ICMP frag-needed or packet-too-big, from %s) on their way to %s were dropped at %s %s. ",
			capital(span(g.first, g.last)), plural(g.count, "error", "errors"), g.sources.list(3), host, where, dropper(f0))
		switch {
		case t != nil:
			fmt.Fprintf(&d, "They answer packets %s sent too big for the next link: %s sent %s (%s). ",
				host, t.by.names(2), plural(t.count, "such error", "such errors"), mtu)
			for _, f := range t.flows { // the same errors, told here
				a.used[f] = true
			}
		case len(carried) > 0:
			fmt.Fprintf(&d, "They answer packets %s sent too big for the next link, and say %s. ", host, mtu)
		}
		if n := untyped[g]; n > 0 {
			fmt.Fprintf(&d, "%s of them come from summary lines (or an older recording), which do not say the ICMP type: ICMP to %s dropped at the same place for the same reason. ", num(n), host)
		}
		d.WriteString("Path MTU discovery lives on these errors: without them the sender never lowers its packet size, so every packet above the path MTU is lost while small ones pass. Connections open, then hang once they send full-size packets (TLS handshakes with certificates, large responses, uploads): a black hole.")
		fd.Detail = d.String()
		allow := "Let ICMP frag-needed (IPv4 type 3 code 4) and packet-too-big (ICMPv6 type 2) through"
		if f0.Rule != "" {
			allow += " before rule " + f0.Rule
		}
		let := allow + ": `iptables -I INPUT -p icmp --icmp-type fragmentation-needed -j ACCEPT` and `ip6tables -I INPUT -p icmpv6 --icmpv6-type packet-too-big -j ACCEPT` (FORWARD too on a router or node that forwards pod traffic); a stateful firewall also accepts them as RELATED (`-m conntrack --ctstate RELATED`). Never drop all ICMP."
		if cmd := nftAllowTooBig(f0.NamedRule); cmd != "" {
			// an accept in iptables' chains does not undo a drop in
			// another nftables base chain: the accept goes before the rule
			let = allow + ", in the rule's own chain (an ACCEPT in iptables' chains does not override a drop in another nftables table): `" + cmd +
				"`; a stateful firewall also accepts them as related (`ct state related accept`). Never drop all ICMP."
		}
		fd.Fix = strings.Join([]string{
			let,
			"Or make the packets fit: give the pods and interfaces on this path the path's MTU (the CNI's MTU setting: the node MTU minus the overlay's overhead, VXLAN 50 bytes), or clamp TCP's MSS where the MTU shrinks: `iptables -t mangle -A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu`.",
			"On Linux senders, `net.ipv4.tcp_mtu_probing=1` lets TCP find the path MTU without ICMP (RFC 4821); UDP and other protocols still need the errors.",
		}, "\n")
		a.add(fd)
	}
}

// nftAllowTooBig is the nft command that lets ICMP too-big errors through
// before rule r, when r is a native nftables rule (not in a table
// iptables-nft writes) with names a shell takes as they are; "" otherwise.
func nftAllowTooBig(r *RuleRef) string {
	if r == nil || r.Table == "" || r.Backend != netfilter.BackendNftables || r.Handle == 0 ||
		((r.Family == "ip" || r.Family == "ip6") && iptablesTables[r.Table]) ||
		!nftIdentRE.MatchString(r.Table) || !nftIdentRE.MatchString(r.Chain) {
		return ""
	}
	match := map[string]string{
		"ip":   "icmp type destination-unreachable icmp code frag-needed",
		"ip6":  "icmpv6 type packet-too-big",
		"inet": "icmp type destination-unreachable icmp code frag-needed accept; nft insert rule inet %[1]s %[2]s position %[3]d icmpv6 type packet-too-big",
	}[r.Family]
	if match == "" {
		return ""
	}
	cmd := "nft insert rule " + r.Family + " %[1]s %[2]s position %[3]d " + match + " accept"
	return fmt.Sprintf(cmd, r.Table, r.Chain, r.Handle)
}

// ---------------------------------------------------------------------------
// Route drops: traffic routed into a blackhole, unreachable or prohibit
// route (named with the route), or with no route (ip_error without one).

func (a *analysis) routeFindings() {
	gs := a.claim(func(f *Flow) bool {
		return f.Route != "" || isReason(f, "NOT_SPECIFIED", "unknown") && strings.HasPrefix(f.Location, "ip_error+")
	}, func(f *Flow) string { return place(f) + "|" + f.Route })
	for _, g := range gs.order {
		f0 := g.flows[0]
		dsts := counter{}
		for _, f := range g.flows {
			dsts.add(onPort(f.DstK8s, f.Dst, f.Dport), f.Count)
		}
		where := place(f0)
		fd := Finding{Severity: SevWarning, Kind: "route", Count: g.count, First: g.first, Last: g.last}
		var d strings.Builder
		fmt.Fprintf(&d, "%s, %s on %s to %s, from %s, were dropped by the routing table",
			capital(span(g.first, g.last)), plural(g.count, "packet", "packets"), where, dsts.list(3), g.sources.list(3))
		var fix []string
		if f0.Route != "" {
			kind, dst, _ := strings.Cut(f0.Route, " ")
			table := ""
			if i := strings.Index(dst, " table "); i > 0 {
				dst, table = dst[:i], dst[i:]
			}
			if kind != "blackhole" && kind != "unreachable" && kind != "prohibit" && kind != "throw" {
				kind, dst = "TYPE", "PREFIX" // marked: not for a command line
			}
			fd.Title = fmt.Sprintf("Route %s on %s dropped %s", f0.Route, where, plural(g.count, "packet", "packets"))
			fmt.Fprintf(&d, ": the route that holds their destination is %s. ", f0.Route)
			switch kind {
			case "blackhole":
				d.WriteString("A blackhole route drops silently: senders time out. ")
			case "unreachable":
				d.WriteString("An unreachable route drops and answers ICMP host-unreachable: senders get \"No route to host\". ")
			case "prohibit":
				d.WriteString("A prohibit route drops and answers ICMP admin-prohibited: senders get \"Permission denied\" or \"No route to host\". ")
			}
			d.WriteString("Such routes are what a CNI leaves for a deleted pod's IP or a node's old pod CIDR, or an operator's route for a network that is gone; some CNIs install blackholes on purpose (Calico, for its own IPAM blocks: traffic to addresses no pod holds).")
			fix = []string{
				fmt.Sprintf("Look at it on that node: `ip route show%s type %s` and `ip route get %s` (for the destinations above).", table, kind, f0.Dst),
				fmt.Sprintf("If it is left over from a pod or node that is gone, delete it (`ip route del %s %s%s`) and find out why the CNI did not (its logs, its IPAM state); if the CNI owns it on purpose, the destination is an address no pod holds: check who still sends there (a stale Service endpoint, a cached DNS answer).", kind, dst, table),
				"If the destination should be reachable, a more specific route is missing: compare with the pod CIDRs (`kubectl get nodes -o custom-columns=NAME:.metadata.name,CIDR:.spec.podCIDR`) and the CNI's health on both nodes.",
			}
		} else {
			fd.Title = fmt.Sprintf("No usable route on %s: %s dropped at ip_error", where, plural(g.count, "packet", "packets"))
			d.WriteString(": the kernel had no route for them, or one of type blackhole, unreachable or prohibit that kdrop could not read (another table, or gone by the time it read the routes). ")
			d.WriteString("In a cluster that is a missing route (a node's pod CIDR not routed, the CNI down on a node), or a route left for a deleted pod.")
			fix = []string{
				"Ask the node: `ip route get DST` for the destinations above, and `ip route show type blackhole`, `type unreachable`, `type prohibit` (in every table: `ip route show table all`).",
				"Compare with the pod CIDRs (`kubectl get nodes -o custom-columns=NAME:.metadata.name,CIDR:.spec.podCIDR`) and check the CNI's health on this node.",
			}
		}
		fd.Detail = d.String()
		fd.Fix = strings.Join(fix, "\n")
		a.add(fd)
	}
}

// ---------------------------------------------------------------------------
// Strict reverse-path filtering (rp_filter=1) on a multi-homed node.

func (a *analysis) rpFilterFindings() {
	gs := a.claim(func(f *Flow) bool { return f.Reason == "IP_RPFILTER" }, place)
	for _, g := range gs.order {
		where := place(g.flows[0])
		fd := Finding{
			Severity: SevWarning, Kind: "rp-filter", Count: g.count, First: g.first, Last: g.last,
			Title: fmt.Sprintf("Strict reverse-path filter on %s dropped %s from %s (IP_RPFILTER)", where, plural(g.count, "packet", "packets"), g.sources.names(3)),
			Detail: fmt.Sprintf("%s, %s arrived on %s from %s and were dropped by the reverse-path filter: with net.ipv4.conf.*.rp_filter=1 (strict) the kernel drops a packet when the route back to its source leaves by another interface than the one it came in on. "+
				"That is normal for a multi-homed node (two NICs or networks, a VPN, policy routing by the CNI, a load balancer answering with the client's address): traffic arrives one way and is routed back another. The node counts them as IPReversePathFilter (`nstat -az TcpExtIPReversePathFilter`).",
				capital(span(g.first, g.last)), plural(g.count, "packet", "packets"), where, g.sources.list(3)),
			Fix: strings.Join([]string{
				"See the route back: `ip route get SOURCE` on the node (and `ip route get SOURCE from DESTINATION iif IFACE` for the interface the packet came in on); if it names another interface, routing is asymmetric.",
				"Make it symmetric: a route for the source's network via the interface its packets arrive on, or policy routing per interface (`ip rule add from ADDRESS table N` with a default route in table N).",
				"Or use loose mode, which only asks that some route back exists: `sysctl -w net.ipv4.conf.all.rp_filter=2` and the same for the interface (the kernel applies the larger of conf.all and conf.IFACE), persisted in /etc/sysctl.d; several CNIs (Calico, Cilium) document the rp_filter value they need.",
			}, "\n"),
			Example: "# /etc/sysctl.d/90-rp-filter.conf on the node\nnet.ipv4.conf.all.rp_filter = 2\nnet.ipv4.conf.default.rp_filter = 2",
		}
		a.add(fd)
	}
}

// ---------------------------------------------------------------------------
// PAWS: TCP segments whose timestamp went backwards.

func (a *analysis) pawsFindings() {
	gs := a.claim(func(f *Flow) bool { return isReason(f, "TCP_RFC7323_PAWS", "TCP_RFC7323_TW_PAWS") },
		func(f *Flow) string { return place(f) + "|" + f.Dst.String() + "|" + fmt.Sprint(f.Dport) })
	for _, g := range gs.order {
		f0 := g.flows[0]
		var tw uint64
		for _, f := range g.flows {
			if f.Reason == "TCP_RFC7323_TW_PAWS" {
				tw += f.Count
			}
		}
		dst := onPort(f0.DstK8s, f0.Dst, f0.Dport)
		fd := Finding{
			Severity: SevWarning, Kind: "paws", Count: g.count, First: g.first, Last: g.last,
			Title: fmt.Sprintf("TCP timestamps went backwards (PAWS): %s to %s rejected", plural(g.count, "segment", "segments"), dst),
		}
		var d strings.Builder
		fmt.Fprintf(&d, "%s, the kernel at %s rejected %s to %s from %s: their TCP timestamp (RFC 7323) was older than the last one it had seen from that address and port (PAWS, protection against wrapped sequence numbers). ",
			capital(span(g.first, g.last)), place(f0), plural(g.count, "segment", "segments"), dst, g.sources.list(3))
		if tw > 0 {
			fmt.Fprintf(&d, "%s hit a connection in TIME_WAIT: a new connection reusing the ports of one the server had just closed, its SYN refused; the client retries and connects slowly or times out (counted as PAWSTimewait, PAWSEstab on older kernels). ", capital(plural(tw, "of them", "of them")))
		}
		d.WriteString("Timestamps go backwards when several clients share one address with different clocks: clients behind a NAT (the node's SNAT or masquerade, a cloud NAT gateway, a load balancer that rewrites the source), whose connections look to the server like one client whose clock jumps.")
		fd.Detail = d.String()
		fd.Fix = strings.Join([]string{
			"Look at the NAT in front of the server: which clients share this source address, and whether the NAT reuses a source port for a new client soon after another client's connection closed; `--random-fully` on MASQUERADE/SNAT rules, more NAT addresses or ports, or preserving client addresses (externalTrafficPolicy: Local, no SNAT between pods) make that rarer.",
			"net.ipv4.tcp_tw_recycle, the usual suspect in older runbooks, is gone since Linux 4.12 (it broke exactly this); net.ipv4.tcp_tw_reuse only applies to outgoing connections and does not help a server.",
			"As a last resort, turn TCP timestamps off on the clients behind the NAT (`net.ipv4.tcp_timestamps=0`): it loses PAWS protection and precise RTT measurement.",
		}, "\n")
		a.add(fd)
	}
}

// ---------------------------------------------------------------------------
// Receive buffers that overflow: the socket's reader is too slow.

func (a *analysis) rcvbufFindings() {
	gs := a.claim(func(f *Flow) bool { return f.Reason == "SOCKET_RCVBUFF" },
		func(f *Flow) string {
			return place(f) + "|" + f.Proto + "|" + f.Dst.String() + "|" + fmt.Sprint(f.Dport)
		})
	for _, g := range gs.order {
		f0 := g.flows[0]
		proto := strings.ToUpper(f0.Proto)
		unit := "packet"
		nstatHint := ""
		switch f0.Proto {
		case "udp":
			unit = "datagram"
			nstatHint = " The node counts them as UdpRcvbufErrors (Udp6RcvbufErrors for IPv6): `nstat -az UdpRcvbufErrors Udp6RcvbufErrors`."
		case "tcp":
			unit = "segment"
		}
		dst := portWords(proto, f0.Dport) + " " + inside(f0.DstK8s, f0.Dst)
		fd := Finding{
			Severity: SevWarning, Kind: "receive-buffer", Count: g.count, First: g.first, Last: g.last,
			Title: fmt.Sprintf("Receive buffer full on %s: %s dropped (SOCKET_RCVBUFF)", dst, plural(g.count, unit, unit+"s")),
			Detail: fmt.Sprintf("%s, %s for %s from %s found the socket's receive buffer full and were dropped: the kernel queues them there until the app reads them, and the app read more slowly than they arrived, in bursts or all along.%s Common for UDP servers: DNS, metrics and log collectors (statsd, syslog), media.",
				capital(span(g.first, g.last)), plural(g.count, unit, unit+"s"), dst, g.sources.list(3), nstatHint),
			Fix: strings.Join([]string{
				"The socket's reader is too slow: read faster: more reader threads or goroutines, SO_REUSEPORT with one socket per core, less work between reads (hand datagrams to a queue); check the pod's CPU limit and throttling (`container_cpu_cfs_throttled_periods_total`).",
				"Give bursts room: raise the socket's receive buffer in the app (`setsockopt(SO_RCVBUF)`, e.g. 8 MiB; many servers have a setting for it), and `net.core.rmem_max`, which caps what SO_RCVBUF may ask for, on the node (`sysctl -w net.core.rmem_max=16777216`); `net.core.rmem_default` sets it for apps that do not ask.",
				"Check with `ss -uamn` in the pod: the receive queue (Recv-Q) at its limit (rb in skmem) and the drop count (d) rising.",
			}, "\n"),
		}
		a.add(fd)
	}
}

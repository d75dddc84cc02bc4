package main

import (
	"strings"
	"testing"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/conntrack"
	"github.com/kdrop/kdrop/tracer/nstest"
)

// kdrop watch names conntrack's own drop: a router masquerades to two
// ports only, and new connections keep losing the race to enter its
// conntrack table; their SYNs come out as NETFILTER_DROP with conntrack
// cause insert-failed and no rule, in JSON and in the RULE column, while
// the connections keep coming.
func TestWatchNamesConntrack(t *testing.T) {
	r := nstest.NewRouted(t)
	nstest.Run(t, "ip", "netns", "exec", r.Router.Name, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", r.RouterToServer,
		"-p", "tcp", "-j", "MASQUERADE", "--to-ports", "40000-40001")
	r.Server.ListenNoAccept(t, nstest.ServerIP, 80, 128)
	// new connections keep coming while the line is read
	ev, raw := watchFirst(t, r.Router, func() { r.Client.ConnectMany(t, nstest.ServerIP, 80, 3) }, 300*time.Millisecond, "--reason", "NETFILTER_DROP")
	if ev.Conntrack == nil || ev.Conntrack.Cause != conntrack.CauseInsertFailed || ev.Conntrack.Max == 0 || ev.Rule != nil {
		t.Fatalf("want a drop named conntrack insert-failed, with the table's limit and no rule:\n%s", raw)
	}
	if !strings.Contains(raw, `"conntrack":{"cause":"insert-failed","count":`) {
		t.Errorf("JSON: %s", raw)
	}
	if row := ev.TableRow(); !strings.HasSuffix(row, " conntrack: insert failed (NAT port clash)") {
		t.Errorf("RULE column: %s", row)
	}
}

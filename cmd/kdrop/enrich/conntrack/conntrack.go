// Package conntrack tells a NETFILTER_DROP that conntrack caused from a
// rule's: it reads a network namespace's conntrack statistics over
// ctnetlink (ti-mo/conntrack; what `conntrack -S` and
// /proc/net/stat/nf_conntrack print, summed over CPUs) and the table's
// count and limit, and keeps what moved between two reads (Windows), so
// that each drop can take its cause from the statistics that moved around
// it, never more drops per cause than the statistic moved.
//
// What the kernel counts (net/netfilter/nf_conntrack_core.c):
//
//   - insert_failed (and drop): a new connection lost the race to enter
//     the table (__nf_conntrack_confirm, nf_ct_resolve_clash): two
//     connections that NAT mapped to one tuple (the SNAT port race, 1 s
//     connect delays), or parallel UDP packets of one flow (A and AAAA DNS
//     queries through a DNAT) where the kernel cannot resolve the clash.
//     Conntrack returns NF_DROP; nf_hook_slow frees the packet.
//   - drop alone: nf_conntrack_in could not make an entry: the table is
//     full ("nf_conntrack: table full, dropping packet": count reached
//     nf_conntrack_max and no unassured entry could be evicted, else
//     early_drop moves instead) or memory ran out; or a protocol tracker
//     said drop (then invalid moves too).
//   - invalid: the packet fits no state (a TCP segment with impossible
//     flags, out of window…). Conntrack lets it through untracked; a
//     rule matching ctstate INVALID (kube-proxy's KUBE-FORWARD) drops it,
//     and that rule's counter moves too.
package conntrack

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
)

// Causes of a conntrack drop (Drop.Cause).
const (
	// CauseInsertFailed: the connection lost the race to enter the table
	// (insert_failed), typically a NAT port clash.
	CauseInsertFailed = "insert-failed"
	// CauseTableFull: no entry could be made while the table was full
	// (drop, with count at the limit or early_drop moving).
	CauseTableFull = "table-full"
	// CauseDrop: conntrack dropped the packet (drop) while the table was
	// not seen full: out of memory, or its protocol tracker said drop.
	CauseDrop = "drop"
	// CauseInvalid: conntrack called the packet INVALID (invalid) and a
	// rule matching that state dropped it: the rule is named as well.
	CauseInvalid = "invalid"
)

// Stats is one read of a namespace's conntrack statistics, each summed
// over CPUs (ctnetlink's IPCTNL_MSG_CT_GET_STATS_CPU), and the table's
// entries and limit (IPCTNL_MSG_CT_GET_STATS).
type Stats struct {
	InsertFailed, Drop, EarlyDrop, Invalid uint64
	// Count is the namespace's entries; Max is nf_conntrack_max (global:
	// every namespace's count is held against it). 0 on kernels before
	// 4.18, which do not say.
	Count, Max uint32
}

// ErrNotLoaded: the kernel has no conntrack (nf_conntrack is not loaded),
// so no drop is conntrack's. Read does not load it.
var ErrNotLoaded = errors.New("nf_conntrack not loaded: no drop is conntrack's")

// loadedPath exists while nf_conntrack is loaded (its sysctls).
const loadedPath = "/proc/sys/net/netfilter/nf_conntrack_max"

// Read reads the conntrack statistics of the network namespace at path
// (a /proc/PID/ns/net or /run/netns file). It needs CAP_NET_ADMIN in that
// namespace. An error says what failed: ErrNotLoaded when the kernel has
// no conntrack (nothing to read, and Read does not make ctnetlink load
// it); the namespace cannot be opened; or ctnetlink does not answer
// (nf_conntrack_netlink not loadable: modprobe nf_conntrack_netlink).
func Read(path string) (Stats, error) {
	if _, err := os.Stat(loadedPath); errors.Is(err, os.ErrNotExist) {
		return Stats{}, ErrNotLoaded
	}
	f, err := os.Open(path)
	if err != nil {
		return Stats{}, fmt.Errorf("conntrack statistics: open network namespace: %w", err)
	}
	defer f.Close()
	c, err := ct.Dial(&netlink.Config{NetNS: int(f.Fd())})
	if err != nil {
		return Stats{}, fmt.Errorf("conntrack statistics: ctnetlink socket in %s: %w", path, err)
	}
	defer c.Close()
	cpus, err := c.Stats()
	if err != nil {
		return Stats{}, fmt.Errorf("conntrack statistics of %s (is nf_conntrack_netlink loadable? modprobe nf_conntrack_netlink): %w", path, err)
	}
	var s Stats
	for _, p := range cpus {
		s.InsertFailed += uint64(p.InsertFailed)
		s.Drop += uint64(p.Drop)
		s.EarlyDrop += uint64(p.EarlyDrop)
		s.Invalid += uint64(p.Invalid)
	}
	g, err := c.StatsGlobal()
	if err != nil {
		return s, fmt.Errorf("conntrack table count of %s: %w", path, err)
	}
	s.Count, s.Max = g.Entries, g.MaxEntries
	return s, nil
}

// Drop is what conntrack had to do with one drop: the `conntrack` object
// of a line.
type Drop struct {
	Cause string // one of the Cause* constants
	// Count and Max are the namespace's table entries and its limit
	// (nf_conntrack_max), as read after the drop; 0/0 when not read.
	Count, Max uint32
}

// String is the RULE column's text: "conntrack: insert failed (NAT port
// clash)", "conntrack: table full 64/64", "conntrack: invalid state",
// "conntrack: dropped".
func (d *Drop) String() string {
	if d == nil {
		return ""
	}
	switch d.Cause {
	case CauseInsertFailed:
		return "conntrack: insert failed (NAT port clash)"
	case CauseTableFull:
		return "conntrack: table full " + strconv.FormatUint(uint64(d.Count), 10) + "/" + strconv.FormatUint(uint64(d.Max), 10)
	case CauseInvalid:
		return "conntrack: invalid state"
	case CauseDrop:
		return "conntrack: dropped"
	}
	return "conntrack: " + d.Cause
}

// Windows is what moved in one namespace's statistics between successive
// reads, as budgets that drops take their cause from. Not safe for
// concurrent use.
type Windows struct {
	last   *Stats
	lastAt time.Time // when the last read started
	ws     []window
}

type window struct {
	from, to time.Time
	// budgets left: drops conntrack made itself (insert failures, others),
	// and packets it called invalid
	insertFailed, otherDrop, invalid uint64
	full                             bool // the table was at its limit, or evicted entries
	count, max                       uint32
}

// Add records a read that started at start and ended at end. The first
// read of a namespace has no predecessor: its window starts at the zero
// time and holds everything the namespace counted so far.
func (w *Windows) Add(s Stats, start, end time.Time) {
	var prev Stats
	var from time.Time
	if w.last != nil {
		prev, from = *w.last, w.lastAt
	}
	d := func(now, then uint64) uint64 {
		if now < then { // a per-CPU counter wrapped or the namespace is new: start over
			return now
		}
		return now - then
	}
	ifail, drop := d(s.InsertFailed, prev.InsertFailed), d(s.Drop, prev.Drop)
	win := window{from: from, to: end, insertFailed: ifail, invalid: d(s.Invalid, prev.Invalid),
		count: s.Count, max: s.Max}
	if drop > ifail {
		win.otherDrop = drop - ifail
	}
	win.full = d(s.EarlyDrop, prev.EarlyDrop) > 0 || (s.Max > 0 && s.Count >= s.Max) || (prev.Max > 0 && prev.Count >= prev.Max)
	if win.full && prev.Count > s.Count { // full at the window's start: say how full
		win.count = prev.Count
	}
	w.ws = append(w.ws, win)
	if len(w.ws) > maxWindows {
		w.ws = w.ws[len(w.ws)-maxWindows:]
	}
	c := s
	w.last, w.lastAt = &c, start
}

// maxWindows bounds the windows kept (10 s of reads every 200 ms is 50).
const maxWindows = 128

// Baseline is w without its windows: its last read only, the baseline of
// the next one (what a namespace quiet for a while keeps).
func (w *Windows) Baseline() Windows {
	return Windows{last: w.last, lastAt: w.lastAt}
}

// ReadAfter says whether a read started after t: only then can a drop at t
// be told.
func (w *Windows) ReadAfter(t time.Time) bool {
	return w.last != nil && w.lastAt.After(t)
}

// Prune forgets windows that ended before horizon.
func (w *Windows) Prune(horizon time.Time) {
	i := 0
	for i < len(w.ws)-1 && w.ws[i].to.Before(horizon) {
		i++
	}
	w.ws = w.ws[i:]
}

// Take names the conntrack cause of n drops that happened in [from, to]
// and takes them from the budgets of the windows covering that span,
// oldest first; nil when no cause has n left. own: the packet may have
// been dropped by conntrack's own verdict (freed at nf_hook_slow, not by
// a rule in nft_do_chain); stateRule: a rule that matches conntrack state
// dropped it, so an INVALID packet explains it. A stateRule drop is
// INVALID first; else conntrack's own insert failures first, then its
// other drops.
func (w *Windows) Take(from, to time.Time, n uint64, own, stateRule bool) *Drop {
	if n == 0 {
		n = 1
	}
	var cover []*window
	for i := range w.ws {
		x := &w.ws[i]
		if x.from.Before(to) && !x.to.Before(from) {
			cover = append(cover, x)
		}
	}
	try := func(budget func(*window) *uint64, cause func(*window) string) *Drop {
		var sum uint64
		for _, x := range cover {
			sum += *budget(x)
		}
		if sum < n {
			return nil
		}
		left := n
		var last *window
		for _, x := range cover {
			b := budget(x)
			t := min(*b, left)
			if t == 0 {
				continue
			}
			*b -= t
			left -= t
			last = x
			if left == 0 {
				break
			}
		}
		return &Drop{Cause: cause(last), Count: last.count, Max: last.max}
	}
	insertFailed := func(x *window) *uint64 { return &x.insertFailed }
	otherDrop := func(x *window) *uint64 { return &x.otherDrop }
	invalid := func(x *window) *uint64 { return &x.invalid }
	named := func(c string) func(*window) string { return func(*window) string { return c } }
	full := func(x *window) string {
		if x.full {
			return CauseTableFull
		}
		return CauseDrop
	}
	if stateRule {
		if d := try(invalid, named(CauseInvalid)); d != nil {
			return d
		}
	}
	if own {
		if d := try(insertFailed, named(CauseInsertFailed)); d != nil {
			return d
		}
		if d := try(otherDrop, full); d != nil {
			return d
		}
	}
	return nil
}

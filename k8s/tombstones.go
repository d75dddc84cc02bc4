package k8s

import (
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Deleted pods.
//
// When the pod informer delivers a delete, the pod's identity (as the last
// snapshot had it, with its workload and Services) is kept for DeletedWindow
// under each of its IPs and under its UID, so that an event aimed at a freed
// IP, or coming from a netns being torn down, still names the pod. A
// terminating pod whose IPs leave its status before the delete (its sandbox
// went first: the runtime reports no IP for a closed netns) is kept under
// those IPs from that update on, as deleted then.
//
// Deletion time. The time recorded is when this process saw the delete (its
// own clock, the one the tracer's event times use, so no API-server clock
// skew enters DeletedAgo), unless the delete was seen late. The API server
// sets metadata.deletionTimestamp to the time of the delete request plus the
// grace period — the deadline by which the kubelet kills the pod, so it
// already includes the grace — with one-second precision. A pod that stops
// within its grace period is removed from the API (and seen deleted) before
// that deadline; a force delete (grace 0) sets it to the request time,
// truncated to the second. In both cases the observed time is the more
// precise one. The deletionTimestamp is used instead when the delete was seen
// late and the pod had been seen terminating: the relist after a watch outage
// found it gone (cache.DeletedFinalStateUnknown), or the delete event came
// more than lateDelete after the deadline. It then bounds when the pod went.
// A pod deleted during an outage that was never seen terminating gets the
// time the relist noticed it, an upper bound.
type tombstones struct {
	mu       sync.Mutex
	window   time.Duration
	max      int // total bound
	maxPerIP int

	byIP  map[netip.Addr][]tomb // newest first; slices are replaced, never written in place
	byUID map[string]*tomb
	fifo  []tombRef // insertion order, for expiry and for eviction at max
	count int       // entries in byIP lists plus byUID
}

type tombRef struct {
	ip  netip.Addr // invalid for a pod with no IP
	uid string
	at  time.Time
}

const (
	defaultMaxTombstones = 16384
	defaultMaxPerIP      = 8
)

func newTombstones(window time.Duration) *tombstones {
	return &tombstones{
		window:   window,
		max:      defaultMaxTombstones,
		maxPerIP: defaultMaxPerIP,
		byIP:     map[netip.Addr][]tomb{},
		byUID:    map[string]*tomb{},
	}
}

// lateDelete: a delete seen this long after the pod's deletionTimestamp was
// seen late.
const lateDelete = 10 * time.Second

// deletedAt implements the choice documented on tombstones; late is set for
// a delete found by a relist.
func deletedAt(p *podInfo, observed time.Time, late bool) time.Time {
	if p.DeletionTimestamp == nil {
		return observed
	}
	dt := p.DeletionTimestamp.Time
	if (late && dt.Before(observed)) || observed.Sub(dt) > lateDelete {
		return dt
	}
	return observed
}

// add records a deleted pod. ep is its identity; ips the IPs it owned
// (none for a hostNetwork pod: those were the node's); uid, if set, keeps
// it for netns lookups too. An IP already recorded for the same pod (ep.UID:
// released while it was terminating) keeps its first time.
func (t *tombstones) add(ep Endpoint, uid string, ips []netip.Addr, at time.Time) {
	ep.Previous = nil
	ep.DeletedAgo = 0
	ep.Unresolved = false
	t.mu.Lock()
	defer t.mu.Unlock()
	tb := tomb{ep: ep, at: at}
	if uid != "" {
		if t.byUID[uid] == nil {
			t.count++
		}
		t.byUID[uid] = &tomb{ep: ep, at: at}
		t.fifo = append(t.fifo, tombRef{uid: uid, at: at})
	}
	for _, ip := range ips {
		old := t.byIP[ip]
		if ep.UID != "" && slices.ContainsFunc(old, func(x tomb) bool { return x.ep.UID == ep.UID }) {
			continue
		}
		i, _ := slices.BinarySearchFunc(old, at, func(x tomb, at time.Time) int { return at.Compare(x.at) })
		list := make([]tomb, 0, len(old)+1)
		list = append(list, old[:i]...)
		list = append(list, tb)
		list = append(list, old[i:]...)
		if len(list) > t.maxPerIP {
			t.count -= len(list) - t.maxPerIP
			list = list[:t.maxPerIP]
		}
		t.byIP[ip] = list
		t.count++
		t.fifo = append(t.fifo, tombRef{ip: ip, at: at})
	}
	for t.count > t.max && len(t.fifo) > 0 {
		t.evictLocked(t.fifo[0])
		t.fifo = t.fifo[1:]
	}
}

// prune forgets what was deleted more than the window before now. It reports
// whether anything was removed.
func (t *tombstones) prune(now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for n < len(t.fifo) && now.Sub(t.fifo[n].at) > t.window {
		t.evictLocked(t.fifo[n])
		n++
	}
	if n == 0 {
		return false
	}
	t.fifo = slices.Clone(t.fifo[n:]) // let the old array go
	return true
}

// evictLocked removes the entry ref points at (and any older one of the same
// IP), if still there.
func (t *tombstones) evictLocked(ref tombRef) {
	if ref.uid != "" {
		if tb := t.byUID[ref.uid]; tb != nil && !tb.at.After(ref.at) {
			delete(t.byUID, ref.uid)
			t.count--
		}
		return
	}
	list := t.byIP[ref.ip]
	keep := len(list)
	for keep > 0 && !list[keep-1].at.After(ref.at) {
		keep--
	}
	if keep == len(list) {
		return
	}
	t.count -= len(list) - keep
	if keep == 0 {
		delete(t.byIP, ref.ip)
		return
	}
	t.byIP[ref.ip] = slices.Clone(list[:keep])
}

// snapshot returns copies of the maps; the per-IP slices are shared, which
// is safe because they are never modified once stored.
func (t *tombstones) snapshot() (map[netip.Addr][]tomb, map[string]*tomb) {
	t.mu.Lock()
	defer t.mu.Unlock()
	byIP := make(map[netip.Addr][]tomb, len(t.byIP))
	for k, v := range t.byIP {
		byIP[k] = v
	}
	byUID := make(map[string]*tomb, len(t.byUID))
	for k, v := range t.byUID {
		byUID[k] = v
	}
	return byIP, byUID
}

func (t *tombstones) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.count
}

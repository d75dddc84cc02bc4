package k8s

import (
	"sort"
	"sync"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/client-go/tools/cache"
)

// policyHistory mirrors the NetworkPolicy informer and remembers, for a
// while, the lists that were in force before each change: a drop is
// evaluated against the policies of its own moment, not those of the
// moment it is enriched (a policy deleted or replaced right after the
// drop).
type policyHistory struct {
	mu      sync.Mutex
	reg     cache.ResourceEventHandlerRegistration
	current map[string]*networkingv1.NetworkPolicy // namespace/name
	gen     uint64                                 // of current: one per add, update, delete
	eras    []policyEra                            // before current, oldest first
	keep    time.Duration
}

// policyEra is a list of policies and when it stopped being in force.
type policyEra struct {
	until time.Time
	gen   uint64
	list  []*networkingv1.NetworkPolicy
}

// maxPolicyEras bounds the lists kept: a drop older than the oldest is
// evaluated against it.
const maxPolicyEras = 64

func newPolicyHistory(keep time.Duration) *policyHistory {
	return &policyHistory{current: map[string]*networkingv1.NetworkPolicy{}, keep: keep}
}

func policyKey(np *networkingv1.NetworkPolicy) string { return np.Namespace + "/" + np.Name }

// handler keeps the mirror. The informer's initial list builds it
// without history (nothing was in force before for kdrop to know).
func (h *policyHistory) handler() cache.ResourceEventHandler {
	change := func(np *networkingv1.NetworkPolicy, del, initial bool) {
		h.mu.Lock()
		defer h.mu.Unlock()
		if !initial {
			now := time.Now()
			h.eras = append(h.eras, policyEra{until: now, gen: h.gen, list: h.listLocked()})
			for len(h.eras) > 1 && (len(h.eras) > maxPolicyEras || now.Sub(h.eras[0].until) > h.keep) {
				h.eras = h.eras[1:]
			}
		}
		h.gen++
		if del {
			delete(h.current, policyKey(np))
		} else {
			h.current[policyKey(np)] = np
		}
	}
	policy := func(o any) *networkingv1.NetworkPolicy {
		if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
			o = t.Obj
		}
		np, _ := o.(*networkingv1.NetworkPolicy)
		return np
	}
	return cache.ResourceEventHandlerDetailedFuncs{
		AddFunc: func(o any, initial bool) {
			if np := policy(o); np != nil {
				change(np, false, initial)
			}
		},
		UpdateFunc: func(_, o any) {
			if np := policy(o); np != nil {
				change(np, false, false)
			}
		},
		DeleteFunc: func(o any) {
			if np := policy(o); np != nil {
				change(np, true, false)
			}
		},
	}
}

// listLocked is the current list, sorted by namespace/name (h.mu held).
func (h *policyHistory) listLocked() []*networkingv1.NetworkPolicy {
	list := make([]*networkingv1.NetworkPolicy, 0, len(h.current))
	for _, np := range h.current {
		list = append(list, np)
	}
	sort.Slice(list, func(i, j int) bool { return policyKey(list[i]) < policyKey(list[j]) })
	return list
}

// at returns the list in force at t (when withList) and its generation:
// the current one when t is zero or after the last change. synced is
// false until the informer's first list has reached the mirror.
func (h *policyHistory) at(t time.Time, withList bool) (list []*networkingv1.NetworkPolicy, gen uint64, synced bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	synced = h.reg != nil && h.reg.HasSynced()
	if !t.IsZero() {
		for _, e := range h.eras {
			if t.Before(e.until) {
				return e.list, e.gen, synced
			}
		}
	}
	if withList {
		list = h.listLocked()
	}
	return list, h.gen, synced
}

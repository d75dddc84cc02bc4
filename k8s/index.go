package k8s

import (
	"net/netip"
	"slices"
	"strings"
	"time"
)

// snapshot is an immutable index from IP (and pod UID) to identity. The
// resolver publishes a new one through an atomic.Pointer after each rebuild;
// lookups load the pointer and read maps that no one writes any more, so the
// hot path takes no lock and never waits for a writer.
type snapshot struct {
	ips  map[netip.Addr]*ipEntry
	uids map[string]*Endpoint // pod UID, and static pods' config hash → identity
	svcs map[nsName]*Endpoint // every Service (headless and ExternalName too) by namespace and name
	dead map[string]*tomb     // UIDs of recently deleted pods (netns lookups)

	built    time.Time
	duration time.Duration // time the build took
	pods     int
	services int
	slices   int
}

var emptySnapshot = &snapshot{}

// ipEntry is what one IP resolves to.
type ipEntry struct {
	ep    Endpoint   // the current owner; Kind "" when only deleted pods had this IP
	ports []hostPort // on a node IP: hostNetwork pods by containerPort, sorted by port
	dead  []tomb     // recently deleted pods that had this IP, newest first
}

type hostPort struct {
	port uint16
	ep   *Endpoint
}

// tomb is a deleted pod's identity and when it was deleted.
type tomb struct {
	ep Endpoint // as last known
	at time.Time
}

// nsName keys objects by namespace and name without building strings.
type nsName struct{ ns, name string }

// buildInput is what a rebuild reads: the informers' current contents and the
// tombstones. Rebuilds only read these (the objects are immutable once
// stored), so buildSnapshot is a pure function.
type buildInput struct {
	pods        []*podInfo
	services    []*svcInfo
	slices      []*sliceInfo
	replicaSets map[nsName]*ownerInfo
	jobs        map[nsName]*ownerInfo
	tombs       map[netip.Addr][]tomb
	deadUIDs    map[string]*tomb
}

// Pod ranks when several pods claim one IP (a Completed pod keeps its IPs in
// its status after the IP was freed and may have been handed to a new pod).
const (
	rankTerminal    = iota // Succeeded or Failed: the sandbox and its IP are gone
	rankTerminating        // deletionTimestamp set: still holds the IP until it stops
	rankLive
)

func podRank(p *podInfo) int {
	switch {
	case p.phase == "Succeeded" || p.phase == "Failed":
		return rankTerminal
	case p.DeletionTimestamp != nil:
		return rankTerminating
	default:
		return rankLive
	}
}

// workload resolves a pod's controller to the workload a user knows:
// ReplicaSet → Deployment (or whatever else controls the ReplicaSet), Job →
// CronJob; StatefulSet, DaemonSet and others directly.
//
// A ReplicaSet's owner comes from the ReplicaSet informer. When the
// ReplicaSet is not (yet) in it — informer still syncing, RBAC denies
// replicasets, or the pod's event arrived before its ReplicaSet's — the
// Deployment is inferred without any API call: the Deployment controller
// names a ReplicaSet "<deployment>-<pod-template-hash>" and labels its pods
// with that hash, so an RS name ending in "-"+hash names its Deployment.
func workload(p *podInfo, rss, jobs map[nsName]*ownerInfo) (kind, name string) {
	switch p.ownerKind {
	case "":
		return "", ""
	case "ReplicaSet":
		if rs := rss[nsName{p.Namespace, p.ownerName}]; rs != nil {
			if rs.ownerKind != "" {
				return rs.ownerKind, rs.ownerName
			}
			return "ReplicaSet", p.ownerName
		}
		if h := p.templateHash; h != "" && len(p.ownerName) > len(h)+1 &&
			strings.HasSuffix(p.ownerName, h) && p.ownerName[len(p.ownerName)-len(h)-1] == '-' {
			return "Deployment", p.ownerName[:len(p.ownerName)-len(h)-1]
		}
		return "ReplicaSet", p.ownerName
	case "Job":
		if j := jobs[nsName{p.Namespace, p.ownerName}]; j != nil && j.ownerKind != "" {
			return j.ownerKind, j.ownerName
		}
		return "Job", p.ownerName
	default:
		return p.ownerKind, p.ownerName
	}
}

// podEndpoint is a pod's identity without Services.
func podEndpoint(p *podInfo, rss, jobs map[nsName]*ownerInfo) Endpoint {
	ep := Endpoint{
		Kind:        KindPod,
		Namespace:   p.Namespace,
		Name:        p.Name,
		UID:         string(p.UID),
		Node:        p.node,
		Ready:       p.ready,
		Terminating: p.DeletionTimestamp != nil,
		HostNetwork: p.hostNetwork,
		Labels:      p.labels,
		NamedPorts:  p.namedPorts,
		Probes:      p.probes,
	}
	ep.WorkloadKind, ep.WorkloadName = workload(p, rss, jobs)
	return ep
}

// serviceIndex maps endpoint addresses and target pods to "ns/name" service
// keys, each list sorted and unique.
type serviceIndex struct {
	byIP  map[netip.Addr][]string
	byPod map[nsName][]string
	ready map[nsName]int // ready endpoints per service
}

func buildServiceIndex(in []*sliceInfo) serviceIndex {
	idx := serviceIndex{byIP: map[netip.Addr][]string{}, byPod: map[nsName][]string{}, ready: map[nsName]int{}}
	keys := map[nsName]string{} // one string per service, shared by every list
	for _, s := range in {
		if s.service == "" {
			continue
		}
		k := nsName{s.Namespace, s.service}
		key, ok := keys[k]
		if !ok {
			key = s.Namespace + "/" + s.service
			keys[k] = key
		}
		for _, e := range s.endpoints {
			if e.ready {
				idx.ready[k]++
			}
			for _, a := range e.addrs {
				idx.byIP[a] = addUnique(idx.byIP[a], key)
			}
			if e.pod != "" {
				pk := nsName{s.Namespace, e.pod}
				idx.byPod[pk] = addUnique(idx.byPod[pk], key)
			}
		}
	}
	return idx
}

// addUnique adds s to the sorted list unless present.
func addUnique(list []string, s string) []string {
	i, found := slices.BinarySearch(list, s)
	if found {
		return list
	}
	return slices.Insert(list, i, s)
}

// mergeSorted returns the sorted union of sorted lists a and b, reusing one of
// them when the other adds nothing.
func mergeSorted(a, b []string) []string {
	if len(b) == 0 {
		return a
	}
	if len(a) == 0 {
		return b
	}
	out := slices.Clone(a)
	for _, s := range b {
		out = addUnique(out, s)
	}
	if len(out) == len(a) {
		return a
	}
	return out
}

// buildSnapshot indexes everything a lookup can answer.
//
// Precedence for one IP: a pod that owns it (not hostNetwork) > a Service
// ClusterIP, external or load-balancer IP > a node IP. A node IP never
// resolves to one of the hostNetwork pods that share it, unless the lookup's
// port is one of that pod's containerPorts.
//
// Endpoints and entries are allocated in slabs (one allocation each) and the
// maps presized: at 10,000 pods the build is dominated by map inserts.
func buildSnapshot(in buildInput, now time.Time) *snapshot {
	start := time.Now()
	svcIdx := buildServiceIndex(in.slices)
	nIPs := 0
	for _, p := range in.pods {
		nIPs += len(p.ips)
	}
	for _, svc := range in.services {
		nIPs += len(svc.ips)
	}
	s := &snapshot{
		ips:      make(map[netip.Addr]*ipEntry, nIPs+len(in.tombs)),
		uids:     make(map[string]*Endpoint, len(in.pods)),
		svcs:     make(map[nsName]*Endpoint, len(in.services)),
		dead:     in.deadUIDs,
		built:    now,
		pods:     len(in.pods),
		services: len(in.services),
		slices:   len(in.slices),
	}
	eps := make([]Endpoint, len(in.pods))
	ents := make([]ipEntry, 0, nIPs) // never grows past nIPs: pointers into it stay valid
	newEntry := func(ep Endpoint) *ipEntry {
		if len(ents) == cap(ents) {
			return &ipEntry{ep: ep}
		}
		ents = append(ents, ipEntry{ep: ep})
		return &ents[len(ents)-1]
	}
	// Which pod owns each IP so far, to arbitrate between claimants.
	ownerOf := make(map[*ipEntry]*podInfo, nIPs)
	nodeIPs := map[netip.Addr]string{}
	var hostNet []int // indexes of hostNetwork pods

	for i, p := range in.pods {
		ep := &eps[i]
		*ep = podEndpoint(p, in.replicaSets, in.jobs)
		services := svcIdx.byPod[nsName{p.Namespace, p.Name}]
		if !p.hostNetwork {
			for _, ip := range p.ips {
				services = mergeSorted(services, svcIdx.byIP[ip])
			}
		}
		ep.Services = services
		if p.UID != "" {
			s.uids[string(p.UID)] = ep
		}
		if p.mirrorHash != "" {
			s.uids[p.mirrorHash] = ep
		}
		if p.node != "" {
			for _, ip := range p.hostIPs {
				nodeIPs[ip] = p.node
			}
		}
		if p.hostNetwork {
			// Its IPs are the node's: they index the node, and the pod
			// only by port.
			if p.node != "" {
				for _, ip := range p.ips {
					nodeIPs[ip] = p.node
				}
			}
			hostNet = append(hostNet, i)
			continue
		}
		for _, ip := range p.ips {
			e := s.ips[ip]
			if e == nil {
				e = newEntry(*ep)
				s.ips[ip] = e
				ownerOf[e] = p
				continue
			}
			// Several pods claim the IP: keep the live one; between
			// equals, a stable choice.
			o := ownerOf[e]
			if ro, rp := podRank(o), podRank(p); ro > rp || (ro == rp && (o.Namespace > p.Namespace || o.Namespace == p.Namespace && o.Name > p.Name)) {
				continue
			}
			e.ep = *ep
			ownerOf[e] = p
		}
	}

	svcEps := make([]Endpoint, len(in.services))
	for i, svc := range in.services {
		k := nsName{svc.Namespace, svc.Name}
		svcEps[i] = Endpoint{Kind: KindService, Namespace: svc.Namespace, Name: svc.Name, UID: string(svc.UID), ReadyEndpoints: svcIdx.ready[k]}
		s.svcs[k] = &svcEps[i]
		for _, ip := range svc.ips {
			if _, taken := s.ips[ip]; taken {
				continue
			}
			s.ips[ip] = newEntry(svcEps[i])
		}
	}

	for ip, node := range nodeIPs {
		if _, taken := s.ips[ip]; taken {
			continue
		}
		s.ips[ip] = newEntry(Endpoint{Kind: KindNode, Name: node, Node: node, Services: svcIdx.byIP[ip]})
	}
	for _, i := range hostNet {
		p := in.pods[i]
		if p.node == "" {
			continue
		}
		addrs := p.hostIPs
		if len(addrs) == 0 {
			addrs = p.ips
		}
		for _, ip := range addrs {
			e := s.ips[ip]
			if e == nil || e.ep.Kind != KindNode || e.ep.Name != p.node {
				continue
			}
			for _, port := range p.ports {
				e.ports = append(e.ports, hostPort{port, &eps[i]})
			}
		}
	}
	for _, i := range hostNet {
		for _, ip := range in.pods[i].hostIPs {
			if e := s.ips[ip]; e != nil && len(e.ports) > 1 {
				// Sorted by port; for a port two pods declare, the live
				// one first.
				slices.SortStableFunc(e.ports, func(a, b hostPort) int {
					if a.port != b.port {
						return int(a.port) - int(b.port)
					}
					return boolInt(a.ep.Terminating) - boolInt(b.ep.Terminating)
				})
			}
		}
	}

	for ip, dead := range in.tombs {
		if len(dead) == 0 {
			continue
		}
		if e := s.ips[ip]; e != nil {
			if e.ep.Kind == KindPod {
				// Not the owner itself: a terminating pod whose
				// status got the IP back after releasing it.
				self := func(t tomb) bool { return t.ep.UID == e.ep.UID }
				e.dead = dead
				if slices.ContainsFunc(dead, self) {
					e.dead = slices.DeleteFunc(slices.Clone(dead), self)
				}
				if len(e.dead) == 0 {
					e.dead = nil
				}
			}
			continue // a Service or node IP: a pod cannot have had it
		}
		s.ips[ip] = &ipEntry{dead: dead}
	}
	s.duration = time.Since(start)
	return s
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// portEndpoint returns the hostNetwork pod declaring port on this node IP.
func (e *ipEntry) portEndpoint(port uint16) *Endpoint {
	for i := range e.ports {
		if e.ports[i].port == port {
			return e.ports[i].ep
		}
		if e.ports[i].port > port {
			break
		}
	}
	return nil
}

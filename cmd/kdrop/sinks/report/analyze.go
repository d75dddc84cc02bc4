package report

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/conntrack"
	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/tracer"
)

// Severities of a Finding, most urgent first.
const (
	SevCritical = "critical" // traffic was lost and users notice
	SevWarning  = "warning"  // traffic was lost, or the report is incomplete
	SevInfo     = "info"     // worth knowing, usually harmless
)

func sevRank(s string) int {
	switch s {
	case SevCritical:
		return 0
	case SevWarning:
		return 1
	}
	return 2
}

// Finding is one thing the recording shows, explained for the person on
// call: what happened, to whom, how often, and what to change.
type Finding struct {
	Severity string // SevCritical, SevWarning or SevInfo
	// Kind is a stable name of the rule that found it: somaxconn, backlog,
	// listen-queue, syncookies, stale-endpoint, no-endpoints, no-socket,
	// closed-connection, netfilter-rule (a named rule, or its
	// candidates), netfilter, drop-reason, icmp, missed, lost,
	// truncated, gap, unresolved; and the kinds of a rule's Kubernetes
	// meaning: no-local-endpoints, invalid-conntrack, martian-localhost,
	// source-range, network-policy; probe (a kubelet probe's connection);
	// and conntrack's causes of a drop: conntrack-insert-failed,
	// conntrack-table-full, conntrack-drop, conntrack-invalid.
	Kind   string
	Title  string // one line, with the workload and the numbers
	Detail string // what happened, in plain words
	// Fix is what to do, one step per line.
	Fix string
	// Example is an optional snippet (YAML or shell) that goes with Fix.
	Example     string
	Count       uint64 // occurrences it covers
	First, Last time.Time
}

// Findings analyses the recording: the most severe and most frequent first.
func (rec *Incident) Findings() []Finding { return analyze(rec).findings }

// analysis is everything the writers show, computed once.
type analysis struct {
	rec *Incident
	// findingsLeft counts the findings past MaxFindings, not shown.
	findingsLeft int
	start, end   time.Time
	total        uint64
	byType       map[string]uint64
	findings     []Finding
	listeners    []listenerRow
	unreach      []unreachRow
	reasons      []reasonRow
	locations    []locationRow
	dstWork      []topRow
	dstPods      []topRow
	sources      []topRow
	backing      map[string]counter // "ns/service" → workloads whose pods back it
	used         map[*Flow]bool     // flows a specific finding explained
}

type listenerRow struct {
	Listener, Pod, Workload, Node, Queues, Limit string
	QueueMax, MaxLen, Somaxconn                  uint32
	Syncookies, Count                            uint64
}

type unreachRow struct {
	Dest, Proto, ICMP, SentBy, Owner, Deleted, Sources string
	Count                                              uint64
}

type reasonRow struct {
	Reason, Share, Locations, Meaning string
	Count                             uint64
}

type locationRow struct {
	Location, Reasons string
	Count             uint64
}

type topRow struct {
	Name, Port, What string
	Pods             int
	Count            uint64
}

// MaxFindings is how many findings a report shows, the most severe and
// largest first.
const MaxFindings = 30

func analyze(rec *Incident) *analysis {
	a := &analysis{rec: rec, byType: map[string]uint64{}, backing: map[string]counter{}, used: map[*Flow]bool{}}
	a.start, a.end = rec.Window()
	for _, f := range rec.Flows {
		a.total += f.Count
		a.byType[f.Type] += f.Count
		for _, k := range []*K8s{f.SrcK8s, f.DstK8s, f.WhereK8s} {
			a.noteBacking(k)
		}
	}
	a.tables()
	a.overflowFindings()
	a.probeFindings()
	a.staleFindings()
	a.noEndpointFindings()
	a.conntrackFindings()
	a.meaningFindings()
	a.hintFindings()
	a.noSocketFindings()
	a.ruleFindings()
	a.netfilterFindings()
	a.otherDropFindings()
	a.otherICMPFindings()
	a.recordingFindings()
	a.keepBest()
	return a
}

// keepBest sorts the findings, the most severe and largest first, and
// keeps the first MaxFindings: a report is read by a person, and the rest
// are smaller ones of the same kinds, counted in the tables. add calls it
// as findings pile up, so that a port scan's 20,000 findings do not all
// stay in memory; the sort is stable, so the findings kept are the same.
func (a *analysis) keepBest() {
	sort.SliceStable(a.findings, func(i, j int) bool {
		fi, fj := a.findings[i], a.findings[j]
		if sevRank(fi.Severity) != sevRank(fj.Severity) {
			return sevRank(fi.Severity) < sevRank(fj.Severity)
		}
		// short counts frame every other finding: first among its severity
		if (fi.Kind == "missed") != (fj.Kind == "missed") {
			return fi.Kind == "missed"
		}
		if fi.Count != fj.Count {
			return fi.Count > fj.Count
		}
		return fi.Title < fj.Title
	})
	if n := len(a.findings); n > MaxFindings {
		clear(a.findings[MaxFindings:])
		a.findings = a.findings[:MaxFindings]
		a.findingsLeft += n - MaxFindings
	}
}

func (a *analysis) noteBacking(k *K8s) {
	if !known(k) || k.Kind == "service" || k.Kind == "node" {
		return
	}
	for _, s := range k.Services {
		if a.backing[s] == nil {
			a.backing[s] = counter{}
		}
		a.backing[s].add(workload(k, netip.Addr{}), 1)
	}
	for i := range k.Previous {
		a.noteBacking(&k.Previous[i])
	}
}

// group gathers what a finding says about a set of flows.
type group struct {
	key         string
	flows       []*Flow
	count       uint64
	first, last time.Time
	pods        counter // destination pods (bare names or addresses)
	sources     counter // who sent
	senders     counter // where the kernel acted
	what        counter
	rules       counter // the netfilter rules named, when any (nil until one is)
}

func newGroup(key string) *group {
	return &group{key: key, pods: counter{}, sources: counter{}, senders: counter{}, what: counter{}}
}

func (g *group) add(f *Flow) {
	g.flows = append(g.flows, f)
	g.count += f.Count
	if g.first.IsZero() || f.First.Before(g.first) {
		g.first = f.First
	}
	if f.Last.After(g.last) {
		g.last = f.Last
	}
	g.sources.add(workload(f.SrcK8s, f.Src), f.Count)
	g.senders.add(actor(f), f.Count)
	g.what.add(f.series, f.Count)
	if f.NamedRule != nil && f.NamedRule.Table != "" {
		if g.rules == nil {
			g.rules = counter{}
		}
		g.rules.add(f.NamedRule.Ref.String(), f.Count)
	}
}

// ruleSentence names the netfilter rules behind a group's drops, when the
// recording names any: " Rule: ip filter/KUBE-SERVICES#23 REJECT …".
func (g *group) ruleSentence() string {
	switch len(g.rules) {
	case 0:
		return ""
	case 1:
		return " Rule: " + g.rules.names(1) + "."
	}
	return " Rules: " + g.rules.list(3) + "."
}

// groups keeps groups in order of first creation.
type groups struct {
	m     map[string]*group
	order []*group
}

func (gs *groups) get(key string) *group {
	if gs.m == nil {
		gs.m = map[string]*group{}
	}
	g := gs.m[key]
	if g == nil {
		g = newGroup(key)
		gs.m[key] = g
		gs.order = append(gs.order, g)
	}
	return g
}

// actor names where the kernel acted: the pod or node owning the network
// namespace, else the node.
func actor(f *Flow) string {
	if known(f.WhereK8s) {
		return pod(f.WhereK8s, netip.Addr{})
	}
	if f.Node != "" {
		return "node " + f.Node
	}
	if f.Netns != 0 { // watch's recordings name no node: the namespace then
		return "network namespace " + strconv.FormatUint(f.Netns, 10)
	}
	return "unknown"
}

// at names a destination for "on port 80 of X" phrases: the workload when
// known, else the address with the port.
func onPort(k *K8s, ip netip.Addr, port uint16) string {
	if known(k) {
		if port == 0 {
			return workload(k, ip)
		}
		return fmt.Sprintf("port %d of %s", port, workload(k, ip))
	}
	return addr(ip, port)
}

func (a *analysis) add(f Finding) {
	a.findings = append(a.findings, f)
	if len(a.findings) >= 4*MaxFindings {
		a.keepBest()
	}
}

// ---------------------------------------------------------------------------
// Listen queue overflows

func limitClass(f *Flow) string {
	switch {
	case f.Somaxconn == 0, f.QueueMax == 0: // the limit not known (sock_diag's SYN-queue counts)
		return "unknown"
	case f.QueueMax >= f.Somaxconn:
		return "somaxconn"
	}
	return "backlog"
}

// backlogOwner guesses which server uses a backlog of this size by default.
func backlogOwner(n uint32) string {
	switch n {
	case 50:
		return "the default of Java's ServerSocket"
	case 100:
		return "Tomcat's default acceptCount (Spring Boot server.tomcat.accept-count)"
	case 128:
		return "the kernel's default somaxconn before Linux 5.4, which many servers copy as their backlog"
	case 511:
		return "the default backlog of nginx, Node.js, Redis and Apache httpd"
	case 1024:
		return "a common default backlog (e.g. Envoy, Netty-based servers configured for it)"
	case 2048:
		return "the default of gunicorn and uvicorn"
	case 4096:
		return "the kernel's default somaxconn since Linux 5.4"
	}
	return ""
}

const backlogSettings = "nginx `listen 8080 backlog=4096;` (default 511); Node.js `server.listen({port, backlog})` (511); " +
	"Java: the ServerSocket backlog argument (50), Tomcat `acceptCount` / Spring Boot `server.tomcat.accept-count` (100); " +
	"gunicorn/uvicorn `--backlog` (2048); Redis `tcp-backlog` (511); Apache `ListenBacklog` (511); " +
	"Go's net.Listen already asks for the full somaxconn"

// suggest picks a queue size to propose: 4096, or four times the current
// limit when that is already 4096 or more.
func suggest(limit uint32) uint32 {
	if limit < 4096 {
		return 4096
	}
	s := uint32(4096)
	for s < 4*limit && s < 65535 {
		s *= 2
	}
	return min(s, 65535)
}

func (a *analysis) overflowFindings() {
	var gs groups
	type extra struct {
		queues                    counter
		qmax, qmin, maxLen, somax uint32
		cookies                   uint64
		example                   *Flow
	}
	ex := map[*group]*extra{}
	for _, f := range a.rec.Flows {
		if f.Type != "overflow" {
			continue
		}
		class := limitClass(f)
		g := gs.get(workload(f.DstK8s, f.Dst) + "|" + fmt.Sprint(f.Dport) + "|" + class)
		g.add(f)
		g.pods.add(shortPod(f.DstK8s, f.Dst), f.Count)
		e := ex[g]
		if e == nil {
			e = &extra{queues: counter{}, qmin: f.QueueMax, example: f}
			ex[g] = e
		}
		e.queues.add(f.Queue, f.Count)
		e.qmax, e.qmin = max(e.qmax, f.QueueMax), min(e.qmin, f.QueueMax)
		e.maxLen = max(e.maxLen, f.MaxQueueLen, f.MaxSynQueueLen)
		e.somax = max(e.somax, f.Somaxconn)
		// A cookie answers a full SYN queue; a full accept queue drops the
		// SYN whatever the cookies. Older recordings flagged
		// some accept-queue overflows with syncookie: not believed.
		if f.Queue == "syn" {
			e.cookies += f.Syncookies
		}
	}
	for _, g := range gs.order {
		e := ex[g]
		f0 := e.example
		class := limitClass(f0)
		where := onPort(f0.DstK8s, f0.Dst, f0.Dport)
		queue := "Accept queue"
		switch {
		case len(e.queues) > 1:
			queue = "Listen queue"
		case e.queues["syn"] > 0:
			queue = "SYN queue"
		}
		limit := num(e.qmax)
		if e.qmin != e.qmax {
			limit = num(e.qmin) + "–" + num(e.qmax)
		}
		if e.qmax == 0 {
			limit = "not known"
		}
		onlyCookies := e.cookies == g.count
		outcome := fmt.Sprintf("%s refused", plural(g.count, "connection attempt", "connection attempts"))
		if onlyCookies {
			outcome = fmt.Sprintf("%s answered with SYN cookies", plural(g.count, "SYN", "SYNs"))
		}
		var cause string
		switch class {
		case "somaxconn":
			cause = fmt.Sprintf("limit %s = net.core.somaxconn", limit)
		case "backlog":
			cause = fmt.Sprintf("limit %s = the server's listen backlog", limit)
		default:
			cause = "limit " + limit
		}
		fd := Finding{
			Severity: SevCritical,
			Title:    fmt.Sprintf("%s full on %s: %s (%s)", queue, where, outcome, cause),
			Count:    g.count, First: g.first, Last: g.last,
		}
		if onlyCookies {
			fd.Severity = SevWarning
		}
		var d strings.Builder
		pods := ""
		if known(f0.DstK8s) {
			pods = fmt.Sprintf(" in %s (%s)", plural(len(g.pods), "pod", "pods"), g.pods.names(4))
		}
		if e.qmax == 0 { // counted by the namespace's counters: no queue length or limit
			fmt.Fprintf(&d, "%s the %s of port %d%s overflowed %s (the kernel's counters told it, without the queue's length or limit). ",
				capital(span(g.first, g.last)), strings.ToLower(queue), f0.Dport, pods, plural(g.count, "time", "times"))
		} else {
			fmt.Fprintf(&d, "%s the %s of port %d%s overflowed %s: up to %s connections were waiting while the limit is %s. ",
				capital(span(g.first, g.last)), strings.ToLower(queue), f0.Dport, pods, plural(g.count, "time", "times"), num(e.maxLen), limit)
		}
		if onlyCookies {
			d.WriteString("The kernel fell back to SYN cookies (net.ipv4.tcp_syncookies), so these connections could still complete, but a SYN cookie is its last resort when the queue is full, and it cannot keep every TCP option of the handshake. ")
		} else {
			d.WriteString("When the queue is full the kernel drops the SYN or the handshake's last ACK: clients retry after 1 s, then 3 s, 7 s… and see slow connects or timeouts. ")
			if e.cookies > 0 {
				fmt.Fprintf(&d, "For %s of them the kernel answered with SYN cookies instead (net.ipv4.tcp_syncookies), a sign the SYN queue was full too. ", num(e.cookies))
			}
		}
		switch class {
		case "somaxconn":
			fd.Kind = "somaxconn"
			fmt.Fprintf(&d, "The limit %s is net.core.somaxconn of the pod's network namespace, not your server's backlog: the kernel caps every listen() backlog at somaxconn, so the effective limit is min(backlog, somaxconn)", limit)
			if o := backlogOwner(e.qmax); o != "" && e.qmax != 4096 && e.qmax != 128 {
				fmt.Fprintf(&d, " (%s is also %s)", limit, o)
			} else if o != "" {
				fmt.Fprintf(&d, " (%s is %s)", limit, o)
			}
			d.WriteString(". ")
		case "backlog":
			fd.Kind = "backlog"
			fmt.Fprintf(&d, "The limit %s is below net.core.somaxconn (%s) of the pod's network namespace, so it is the backlog the server passed to listen() that caps the queue; raising somaxconn alone changes nothing. ", limit, num(e.somax))
			if o := backlogOwner(e.qmax); o != "" {
				fmt.Fprintf(&d, "%s is %s. ", limit, o)
			}
		default:
			fd.Kind = "listen-queue"
			fmt.Fprintf(&d, "The limit is min(the server's listen() backlog, net.core.somaxconn of the pod's network namespace); kdrop could not read somaxconn there, so check which one it is: `cat /proc/sys/net/core/somaxconn` in the pod")
			if o := backlogOwner(e.qmax); o != "" {
				fmt.Fprintf(&d, " (%s is %s)", limit, o)
			}
			d.WriteString(". ")
		}
		d.WriteString("A queue that fills up also means the server accepts connections more slowly than they arrive.")
		if len(g.sources) > 0 {
			fmt.Fprintf(&d, " Clients: %s.", g.sources.list(3))
		}
		fd.Detail = d.String()

		target := suggest(e.qmax)
		raiseSomax := fmt.Sprintf("Raise net.core.somaxconn in the pod's network namespace (to %s, say) with the pod's `securityContext.sysctls` (example below). Kubernetes counts net.core.somaxconn as an unsafe sysctl unless your version lists it as safe: the kubelet must then allow it (`--allowed-unsafe-sysctls=net.core.somaxconn`, or `allowedUnsafeSysctls` in its config file), else the pod is rejected with SysctlForbidden.", num(target))
		alt := "Other ways to set it: an initContainer that runs `sysctl -w net.core.somaxconn=" + fmt.Sprint(target) + "` (it needs `privileged: true`; it shares the pod's network namespace), or the tuning CNI plugin chained in the node's CNI config, which sets it when each pod's network is created."
		raiseBacklog := "Raise the server's own listen() backlog as well, since the effective limit is min(backlog, somaxconn): " + backlogSettings + "."
		restart := "The limit is read when the server calls listen(): roll the pods out after the change, then check with `ss -ltn` in a pod (for a listener, Send-Q is its queue limit and Recv-Q the connections waiting)."
		slow := "If the queue still fills, the server is too slow to accept: look at CPU throttling and worker/thread pool sizes, or add replicas."
		switch class {
		case "somaxconn":
			fd.Fix = strings.Join([]string{raiseSomax, alt, raiseBacklog, restart, slow}, "\n")
		case "backlog":
			fd.Fix = strings.Join([]string{
				"Raise the server's listen() backlog: " + backlogSettings + ".",
				fmt.Sprintf("somaxconn is %s in this namespace, so a backlog up to %s takes effect as is; for more, raise net.core.somaxconn too (pod `securityContext.sysctls`, example below).", num(e.somax), num(e.somax)),
				restart, slow}, "\n")
		default:
			fd.Fix = strings.Join([]string{raiseSomax, raiseBacklog, restart, slow}, "\n")
		}
		if onlyCookies {
			fd.Kind = "syncookies"
			fd.Fix += "\nIf this is a SYN flood rather than your own clients, SYN cookies are doing their job: find the source before raising limits."
		}
		if class != "backlog" || e.somax < target {
			fd.Example = sysctlExample(f0.DstK8s, target)
		}
		for _, f := range g.flows {
			a.used[f] = true
		}
		a.add(fd)
	}
}

func capital(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func sysctlExample(k *K8s, target uint32) string {
	head := "# in the pod template (spec.template.spec) of the workload"
	if known(k) && k.WorkloadName != "" {
		head = fmt.Sprintf("# %s %s: spec.template.spec", k.WorkloadKind, nsName(k.Namespace, k.WorkloadName))
	}
	return head + fmt.Sprintf(`
securityContext:
  sysctls:
  - name: net.core.somaxconn
    value: "%d"`, target)
}

// ---------------------------------------------------------------------------
// Traffic to pods that were already gone

func isHostUnreach(icmp string) bool {
	switch icmp {
	case "host-unreachable", "addr-unreachable", "net-unreachable", "no-route", "host-unknown":
		return true
	}
	return false
}

func (a *analysis) staleFindings() {
	var gs groups
	type extra struct {
		ago    minmax
		ips    counter
		ports  counter
		sample *K8s
	}
	ex := map[*group]*extra{}
	for _, f := range a.rec.Flows {
		k := f.DstK8s
		if k == nil || k.DeletedAgo <= 0 || a.used[f] {
			continue
		}
		if !(f.Type == "unreach" && isHostUnreach(f.ICMP)) && !(f.Type == "drop" && strings.HasPrefix(f.Reason, "NEIGH_")) {
			continue
		}
		g := gs.get(workload(k, f.Dst))
		g.add(f)
		e := ex[g]
		if e == nil {
			e = &extra{ips: counter{}, ports: counter{}, sample: k}
			ex[g] = e
		}
		name := f.Dst.String()
		if k.Name != "" {
			name = k.Name + " (" + f.Dst.String() + ")"
		}
		g.pods.add(name, f.Count)
		e.ago.add(k.DeletedAgo)
		if f.Dport != 0 {
			e.ports.add(fmt.Sprint(f.Dport), f.Count)
		}
		a.used[f] = true
	}
	for _, g := range gs.order {
		e := ex[g]
		k := e.sample
		subject := g.key
		who := subject
		if known(k) && k.WorkloadName == "" {
			who = "pod " + nsName(k.Namespace, k.Name)
		}
		var how []string
		for _, w := range g.what.top(0) {
			if strings.HasPrefix(w.Name, "ICMP ") {
				how = append(how, fmt.Sprintf("the kernel answered %s with ICMP %s (\"No route to host\")", plural(w.Count, "time", "times"), strings.TrimPrefix(w.Name, "ICMP ")))
			} else {
				how = append(how, fmt.Sprintf("%s dropped because nothing answered ARP for the address (%s)", plural(w.Count, "packet was", "packets were"), w.Name))
			}
		}
		fd := Finding{
			Severity: SevCritical, Kind: "stale-endpoint", Count: g.count, First: g.first, Last: g.last,
			Title: fmt.Sprintf("Clients kept sending to pods of %s after they were deleted: %s to stale pod IPs", who, plural(g.count, "packet", "packets")),
		}
		if known(k) && k.WorkloadName == "" {
			fd.Title = fmt.Sprintf("Clients kept sending to %s after it was deleted: %s to its stale IP", who, plural(g.count, "packet", "packets"))
		}
		var d strings.Builder
		fmt.Fprintf(&d, "%s, traffic went to the IP of a pod deleted %s before: %s. %s. ",
			capital(span(g.first, g.last)), e.ago, g.pods.names(4), capital(join(how)))
		fmt.Fprintf(&d, "Senders: %s", g.sources.list(3))
		if len(e.ports) > 0 {
			fmt.Fprintf(&d, "; destination port %s", e.ports.names(3))
		}
		d.WriteString(". Clients kept sending to a pod IP after the pod was gone: stale endpoints during a rolling update (or a scale-down). The pod exited before every client, kube-proxy rule and load balancer had dropped its address from the Service's endpoints, and connections already open or pooled kept using it.")
		fd.Detail = d.String()
		fd.Fix = strings.Join([]string{
			fmt.Sprintf("Give %s a preStop hook that sleeps 5–15 s: the pod keeps serving while its endpoint is removed everywhere, and only then gets SIGTERM.", who),
			"Make sure it has a readinessProbe, and that the app drains on SIGTERM: stop accepting, finish requests in flight, close idle keep-alive connections.",
			"Set terminationGracePeriodSeconds above the preStop sleep plus the drain time (the default is 30 s).",
			"Clients that pool connections (HTTP keep-alive, gRPC) should retry idempotent requests on connection errors.",
		}, "\n")
		port := "8080"
		if p := e.ports.top(1); len(p) == 1 {
			port = p[0].Name
		}
		head := "# in the pod template (spec.template.spec)"
		if known(k) && k.WorkloadName != "" {
			head = fmt.Sprintf("# %s %s: spec.template.spec", k.WorkloadKind, nsName(k.Namespace, k.WorkloadName))
		}
		fd.Example = head + fmt.Sprintf(`
terminationGracePeriodSeconds: 45
containers:
- name: app            # your container
  lifecycle:
    preStop:
      sleep:
        seconds: 10    # Kubernetes 1.30+; older: exec: {command: ["sleep", "10"]}
  readinessProbe:
    tcpSocket:
      port: %s`, port)
		a.add(fd)
	}
}

// ---------------------------------------------------------------------------
// Services without ready endpoints

func (a *analysis) noEndpointFindings() {
	var gs groups
	byRule := map[*group]bool{} // kube-proxy's rule said so
	for _, f := range a.rec.Flows {
		k := f.DstK8s
		svc := ""
		switch {
		case a.used[f]:
			continue
		case f.Meaning.Kind == netfilter.MeaningNoEndpoints && f.Meaning.Service != "":
			svc = f.Meaning.Service
		case !known(k) || k.Kind != "service" || k.ReadyEndpoints != 0:
			continue
		case !(f.Type == "unreach" && (f.ICMP == "port-unreachable" || isHostUnreach(f.ICMP) || strings.Contains(f.ICMP, "prohibited"))) &&
			!(f.Type == "drop" && f.Reason == "NETFILTER_DROP"):
			continue
		default:
			svc = nsName(k.Namespace, k.Name)
		}
		g := gs.get(svc)
		byRule[g] = byRule[g] || f.Meaning.Kind == netfilter.MeaningNoEndpoints
		g.add(f)
		if f.Dport != 0 {
			g.pods.add(fmt.Sprint(f.Dport), f.Count) // ports, here
		}
		a.used[f] = true
	}
	for _, g := range gs.order {
		svc := g.key
		ns, name, valid := splitService(svc)
		ports := ""
		if len(g.pods) > 0 {
			ports = " to port " + g.pods.names(3)
		}
		backers := a.backing[svc]
		fd := Finding{
			Severity: SevCritical, Kind: "no-endpoints", Count: g.count, First: g.first, Last: g.last,
			Title: fmt.Sprintf("Service %s has no ready endpoints: %s%s rejected", svc, plural(g.count, "connection", "connections"), ports),
		}
		var d strings.Builder
		fmt.Fprintf(&d, "%s, %s%s of Service %s were refused: kube-proxy REJECTs traffic to a Service without ready endpoints, so the client gets an ICMP error (\"Connection refused\" or \"No route to host\") at once. ",
			capital(span(g.first, g.last)), plural(g.count, "connection attempt", "connection attempts"), ports, svc)
		fmt.Fprintf(&d, "Clients: %s. Rejected by: %s.", g.sources.list(3), g.senders.names(3))
		if byRule[g] {
			d.WriteString(" kube-proxy's own rule for this Service (its \"has no endpoints\" REJECT, named by kdrop) dropped them.")
		}
		d.WriteString(g.ruleSentence())
		if len(backers) > 0 {
			fmt.Fprintf(&d, " Pods of %s back this Service (seen in this recording).", backers.names(2))
		}
		fd.Detail = d.String()
		who := "the Deployment behind it"
		if len(backers) > 0 {
			who = backers.names(2)
		}
		var fix []string
		if !valid {
			fix = append(fix, fmt.Sprintf("The Service's name in this recording, %s, is not a valid Kubernetes name: the commands below say NAMESPACE and NAME for it.", svc))
		}
		fd.Fix = strings.Join(append(fix,
			fmt.Sprintf("See what the Service selects: `kubectl get endpointslices -n %s -l kubernetes.io/service-name=%s` (no endpoints, or all not ready).", ns, name),
			fmt.Sprintf("If pods exist but are not Ready, their readinessProbe fails: `kubectl describe pod` on the pods of %s shows why.", who),
			fmt.Sprintf("If no pod matches, compare the selector (`kubectl get svc %s -n %s -o jsonpath='{.spec.selector}'`) with the pod labels (`kubectl get pods -n %s --show-labels`).", name, ns, ns),
			fmt.Sprintf("Check that %s is scaled above 0 and its rollout is not stuck (`kubectl rollout status`), and that its pods are not crash-looping.", who),
		), "\n")
		a.add(fd)
	}
}

// ---------------------------------------------------------------------------
// Drops conntrack caused (the line's conntrack object): one finding per
// cause and node. An INVALID packet whose rule has a Kubernetes meaning
// (kube-proxy's) is meaningFindings'.

func (a *analysis) conntrackFindings() {
	var gs groups
	cause := map[*group]string{}
	maxes := map[*group]counter{}
	for _, f := range a.rec.Flows {
		if a.used[f] || f.Conntrack == "" || (f.Conntrack == conntrack.CauseInvalid && f.Meaning.Kind != "") {
			continue
		}
		g := gs.get(f.Conntrack + "|" + f.Node)
		g.add(f)
		g.pods.add(workload(f.DstK8s, f.Dst), f.Count)
		cause[g] = f.Conntrack
		if maxes[g] == nil {
			maxes[g] = counter{}
		}
		if f.CtMax > 0 {
			maxes[g].add(fmt.Sprint(f.CtMax), f.Count)
		}
		a.used[f] = true
	}
	for _, g := range gs.order {
		n := plural(g.count, "packet", "packets")
		when, where := capital(span(g.first, g.last)), g.senders.names(3)
		fd := Finding{Severity: SevWarning, Kind: "conntrack-" + cause[g], Count: g.count, First: g.first, Last: g.last}
		var fix []string
		switch cause[g] {
		case conntrack.CauseInsertFailed:
			fd.Severity = SevCritical
			fd.Title = fmt.Sprintf("Conntrack insert failures (NAT port clash) dropped %s from %s to %s", n, g.sources.names(3), g.pods.names(3))
			fd.Detail = fmt.Sprintf("%s, conntrack dropped %s at %s: each was the first packet of a connection that lost the race to enter the conntrack table (`conntrack -S` insert_failed), because another connection NAT had mapped to the same addresses and ports was confirmed first. "+
				"For TCP this is the SNAT port race: the SYN is retransmitted a second later (1 s connect delays). For UDP it is typically parallel A and AAAA DNS queries from one socket through the DNAT of the DNS Service, on kernels that cannot resolve the clash: the lookup waits for the resolver's timeout (5 s DNS delays).",
				when, n, where)
			fix = []string{
				"DNS: run NodeLocal DNSCache (queries go to a node-local address without DNAT or conntrack), or set `options single-request-reopen` (glibc) in the pods' `dnsConfig`, or make the resolver use TCP (`options use-vc`).",
				"SNAT: give MASQUERADE a wider port range and full randomisation (`--random-fully`, the CNI's masquerade setting), or more egress addresses; fewer parallel connections to one destination through one SNAT address.",
				"Watch `conntrack -S` (insert_failed, clash_resolve) on the node.",
			}
		case conntrack.CauseTableFull:
			fd.Severity = SevCritical
			limit := ""
			if len(maxes[g]) > 0 {
				limit = " (nf_conntrack_max " + maxes[g].names(2) + ")"
			}
			fd.Title = fmt.Sprintf("Conntrack table full%s: %s dropped", limit, n)
			fd.Detail = fmt.Sprintf("%s, conntrack dropped %s from %s to %s at %s: its table held nf_conntrack_max entries and none could be evicted early, so new connections got no entry (the kernel logs \"nf_conntrack: table full, dropping packet\").",
				when, n, g.sources.names(3), g.pods.names(3), where)
			fix = []string{
				"Compare `net.netfilter.nf_conntrack_count` with `net.netfilter.nf_conntrack_max` on the node, and raise the limit (kube-proxy sets it from `conntrack.maxPerCore` and `conntrack.min`).",
				"Find who opens so many connections: `conntrack -L | awk '{print $5}' | sort | uniq -c | sort -rn | head` (sources), and shorten idle timeouts if connections linger (`nf_conntrack_tcp_timeout_established`, `nf_conntrack_udp_timeout`).",
			}
		case conntrack.CauseDrop:
			fd.Title = fmt.Sprintf("Conntrack dropped %s from %s to %s", n, g.sources.names(3), g.pods.names(3))
			fd.Detail = fmt.Sprintf("%s, conntrack dropped %s at %s (`conntrack -S` drop) while its table was not seen full: out of memory, or its protocol tracker refused the packet.", when, n, where)
			fix = []string{"Check `conntrack -S` (drop, early_drop, invalid) and the kernel log (`dmesg | grep nf_conntrack`) on the node."}
		case conntrack.CauseInvalid:
			fd.Title = fmt.Sprintf("A rule dropped %s that conntrack calls INVALID", n)
			fd.Detail = fmt.Sprintf("%s, a rule matching conntrack state INVALID dropped %s from %s to %s at %s (`conntrack -S` invalid moved with it). Usually TCP packets out of the window conntrack tracks (retransmissions after a conntrack entry was lost, asymmetric routing).",
				when, n, g.sources.names(3), g.pods.names(3), where)
			fix = []string{
				"Check for asymmetric routing (replies leaving by another node or interface) and for conntrack entries flushed under live connections.",
				"Setting `net.netfilter.nf_conntrack_tcp_be_liberal=1` stops out-of-window TCP packets from being INVALID.",
			}
		}
		fd.Fix = strings.Join(fix, "\n")
		a.add(fd)
	}
}

// ---------------------------------------------------------------------------
// Drops whose rule kdrop decoded into its Kubernetes meaning (rule.k8s):
// one finding per meaning and Service or NetworkPolicies. No endpoints at
// all is noEndpointFindings'.

func (a *analysis) meaningFindings() {
	var gs groups
	meaning := map[*group]Meaning{}
	ports := map[*group]counter{}
	for _, f := range a.rec.Flows {
		m := f.Meaning
		if a.used[f] || m.Kind == "" || m.Kind == netfilter.MeaningNoEndpoints {
			continue
		}
		g := gs.get(m.Kind + "|" + m.Service + "|" + m.Policies + "|" + m.Direction + "|" + fmt.Sprint(m.Internal))
		g.add(f)
		meaning[g] = m
		if ports[g] == nil {
			ports[g] = counter{}
		}
		if f.Dport != 0 {
			ports[g].add(strings.ToUpper(f.Proto)+" "+fmt.Sprint(f.Dport), f.Count)
		}
		a.used[f] = true
	}
	for _, g := range gs.order {
		m := meaning[g]
		svc := m.Service
		if m.Port != "" {
			svc += " port " + m.Port
		}
		on := ""
		if len(ports[g]) > 0 {
			on = " on " + ports[g].names(3)
		}
		when := capital(span(g.first, g.last))
		fd := Finding{Severity: SevWarning, Kind: m.Kind, Count: g.count, First: g.first, Last: g.last}
		var fix []string
		switch m.Kind {
		case netfilter.MeaningNoLocalEndpoints:
			policy := "externalTrafficPolicy"
			if m.Internal {
				policy = "internalTrafficPolicy"
			}
			fd.Severity = SevCritical
			fd.Title = fmt.Sprintf("%s: Local on Service %s and no endpoint on %s: %s dropped", policy, m.Service, g.senders.names(3), plural(g.count, "packet", "packets"))
			fd.Detail = fmt.Sprintf("%s, kube-proxy dropped %s to Service %s%s from %s: the Service has %s: Local and the node has no ready endpoint of it, so the traffic is dropped instead of forwarded to another node (clients time out).",
				when, plural(g.count, "packet", "packets"), svc, on, g.sources.list(3), policy)
			if m.Internal {
				fix = []string{
					fmt.Sprintf("Run an endpoint of %s on every node whose pods call it (a DaemonSet), or set `internalTrafficPolicy: Cluster`.", m.Service),
				}
			} else {
				fix = []string{
					fmt.Sprintf("Use `externalTrafficPolicy: Cluster` on %s (the client's source address is then lost to SNAT), or", m.Service),
					"make the load balancer health-check the node port of `spec.healthCheckNodePort`, so it only sends to nodes with a ready endpoint (cloud load balancers do this by default; check MetalLB/custom ones).",
					"Or run an endpoint on every node that receives the traffic.",
				}
			}
		case netfilter.MeaningSourceRange:
			fd.Title = fmt.Sprintf("Service %s refused sources outside its loadBalancerSourceRanges: %s dropped", m.Service, plural(g.count, "packet", "packets"))
			fd.Detail = fmt.Sprintf("%s, kube-proxy dropped %s to Service %s%s from %s: their source is not in the Service's `spec.loadBalancerSourceRanges`.",
				when, plural(g.count, "packet", "packets"), svc, on, g.sources.list(3))
			fix = []string{
				fmt.Sprintf("If these clients should reach %s, add their address range to `spec.loadBalancerSourceRanges`.", m.Service),
				"If not, nothing to fix: the range is working.",
			}
		case netfilter.MeaningInvalidConntrack:
			fd.Title = fmt.Sprintf("%s dropped %s that conntrack calls INVALID", m.Engine, plural(g.count, "packet", "packets"))
			fd.Detail = fmt.Sprintf("%s, %s's rule for conntrack state INVALID dropped %s%s from %s to %s, on %s. Usually TCP packets out of the window conntrack tracks (retransmissions after a conntrack entry was lost, asymmetric routing); the connection may be reset or stall.",
				when, m.Engine, plural(g.count, "packet", "packets"), on, g.sources.list(3), g.pods.names(3), g.senders.names(3))
			fix = []string{
				"Check conntrack's own counters on the node: `conntrack -S` (invalid, insert_failed, drop) and `net.netfilter.nf_conntrack_count` against `nf_conntrack_max`.",
				"Setting `net.netfilter.nf_conntrack_tcp_be_liberal=1` (kube-proxy's `conntrack.tcpBeLiberal`) makes kube-proxy skip its rule.",
			}
		case netfilter.MeaningMartianLocalhost:
			fd.Title = fmt.Sprintf("Traffic from outside to 127.0.0.0/8 blocked: %s dropped", plural(g.count, "packet", "packets"))
			fd.Detail = fmt.Sprintf("%s, the KUBE-FIREWALL rule (kubelet's and kube-proxy's) dropped %s%s from %s to a loopback address on %s: with route_localnet on, such packets from other hosts are martians.",
				when, plural(g.count, "packet", "packets"), on, g.sources.list(3), g.senders.names(3))
			fix = []string{"Do not reach NodePorts through 127.0.0.1 from other hosts; use the node's address (kube-proxy's `nodePortAddresses` chooses which are served)."}
		case netfilter.MeaningNetworkPolicy:
			dir, who := "ingress", "destination"
			if m.Direction == "egress" {
				dir, who = "egress", "source"
			}
			f0 := g.flows[0]
			src, dst := workload(f0.SrcK8s, f0.Src), workload(f0.DstK8s, f0.Dst)
			what := strings.TrimPrefix(on, " on ")
			if what == "" {
				what = "its port"
			}
			fd.Title = fmt.Sprintf("NetworkPolicy %s blocks %s from %s to %s%s: %s dropped", m.Policies, dir, src, dst, on, plural(g.count, "packet", "packets"))
			fd.Detail = fmt.Sprintf("%s, %s from %s to %s%s were dropped: NetworkPolicy %s selects the %s for %s and none of its rules allows this traffic.",
				when, plural(g.count, "packet", "packets"), g.sources.list(3), dst, on, m.Policies, who, dir)
			peer := src
			if dir == "egress" {
				peer = dst
			}
			fix = []string{
				fmt.Sprintf("If it should pass, add an allow rule to NetworkPolicy %s for %s on %s (`kubectl edit networkpolicy`; namespaceSelector and podSelector both have to match).", m.Policies, peer, what),
				"If it should be blocked, nothing to fix: the policy is working.",
			}
		}
		fd.Detail += g.ruleSentence()
		fd.Fix = strings.Join(fix, "\n")
		a.add(fd)
	}
}

// ---------------------------------------------------------------------------
// NO_SOCKET: nothing listening

func isSYN(flags string) bool {
	has := map[string]bool{}
	for _, f := range strings.Split(flags, "|") {
		has[strings.ToUpper(strings.TrimSpace(f))] = true
	}
	return has["SYN"] && !has["ACK"]
}

// inside names a destination for "in X" phrases.
func inside(k *K8s, ip netip.Addr) string {
	if !known(k) && !ip.IsValid() { // a flow kept by kind only (past MaxFlows)
		return "at addresses not kept (flows past the first " + num(MaxFlows) + ", counted by kind only)"
	}
	if !known(k) {
		return "at " + ip.String()
	}
	switch {
	case k.Kind == "node":
		return "on node " + k.Name
	case k.Kind == "service":
		return "behind Service " + nsName(k.Namespace, k.Name)
	case k.WorkloadName != "":
		return "in pods of " + workload(k, ip)
	}
	return "in " + pod(k, ip)
}

// portWords names a destination port, or says it was not kept (0: a flow
// kept by kind only; NO_SOCKET is always to a port).
func portWords(proto string, port uint16) string {
	if port == 0 {
		return proto + " ports"
	}
	return fmt.Sprintf("%s port %d", proto, port)
}

func (a *analysis) noSocketFindings() {
	var gs groups
	type extra struct {
		syn, gone uint64
		flags     counter
		sample    *Flow
	}
	ex := map[*group]*extra{}
	for _, f := range a.rec.Flows {
		if f.Type != "drop" || f.Reason != "NO_SOCKET" || a.used[f] {
			continue
		}
		g := gs.get(workload(f.DstK8s, f.Dst) + "|" + f.Proto + "|" + fmt.Sprint(f.Dport))
		g.add(f)
		g.pods.add(shortPod(f.DstK8s, f.Dst), f.Count)
		e := ex[g]
		if e == nil {
			e = &extra{flags: counter{}, sample: f}
			ex[g] = e
		}
		if f.Proto != "tcp" || isSYN(f.TCPFlags) || f.TCPFlags == "" {
			e.syn += f.Count
		}
		if f.TCPFlags != "" {
			e.flags.add(f.TCPFlags, f.Count)
		}
		if k := f.DstK8s; k != nil && (k.Terminating || k.DeletedAgo > 0) {
			e.gone += f.Count
		}
		a.used[f] = true
	}
	for _, g := range gs.order {
		e := ex[g]
		f0 := e.sample
		proto := strings.ToUpper(f0.Proto)
		if proto == "" {
			proto = "IP"
		}
		in := inside(f0.DstK8s, f0.Dst)
		fd := Finding{
			Severity: SevWarning, Kind: "no-socket", Count: g.count, First: g.first, Last: g.last,
			Title: fmt.Sprintf("Nothing listens on %s %s: %s dropped (NO_SOCKET)", portWords(proto, f0.Dport), in, plural(g.count, "packet", "packets")),
		}
		lateOnly := f0.Proto == "tcp" && e.syn == 0
		if lateOnly {
			fd.Severity, fd.Kind = SevInfo, "closed-connection"
			fd.Title = fmt.Sprintf("Packets for closed TCP connections on port %d %s: %s dropped (NO_SOCKET)", f0.Dport, in, plural(g.count, "packet", "packets"))
		}
		var d strings.Builder
		fmt.Fprintf(&d, "%s, %s reached %s for %s port %d, but no socket there was bound to that port, so the kernel dropped them",
			capital(span(g.first, g.last)), plural(g.count, "packet", "packets"), strings.TrimPrefix(strings.TrimPrefix(in, "in "), "at "), proto, f0.Dport)
		switch f0.Proto {
		case "tcp":
			d.WriteString(" and answered with a reset: the client sees \"Connection refused\". ")
		case "udp":
			d.WriteString(" and answered with ICMP port-unreachable. ")
		default:
			d.WriteString(". ")
		}
		if known(f0.DstK8s) && len(g.pods) > 1 {
			fmt.Fprintf(&d, "Pods: %s. ", g.pods.list(4))
		}
		fmt.Fprintf(&d, "Senders: %s.", g.sources.list(3))
		if f0.Proto == "tcp" && e.syn < g.count {
			fmt.Fprintf(&d, " Only %s of them opened a connection (SYN); the rest (%s) belonged to connections the pod no longer has, typically after the app restarted or closed them.", num(e.syn), e.flags.names(3))
		}
		if e.gone > 0 {
			fmt.Fprintf(&d, " %s arrived while the pod was terminating or already deleted: the app had stopped listening before traffic stopped coming.", capital(plural(e.gone, "packet", "packets")))
		}
		fd.Detail = d.String()
		podName := "POD"
		if known(f0.DstK8s) && f0.DstK8s.Kind == "pod" {
			podName = cmdArg(f0.DstK8s.Name, "POD")
		}
		nsFlag := ""
		if known(f0.DstK8s) && f0.DstK8s.Namespace != "" {
			nsFlag = " -n " + cmdArg(f0.DstK8s.Namespace, "NAMESPACE")
		}
		fix := []string{
			fmt.Sprintf("See what the app really listens on: `kubectl exec%s %s -- ss -ltnu` (or netstat); nothing listens on port %d.", nsFlag, podName, f0.Dport),
			fmt.Sprintf("Make the Service's targetPort and the pod's containerPort match the port the app listens on (clients use %d).", f0.Dport),
			"If the app listens on 127.0.0.1 only, make it bind 0.0.0.0 (or ::): traffic from other pods arrives on the pod IP.",
			"If it happens right after pods start, the app was not listening yet: add a readinessProbe (and a startupProbe for slow starts) so no traffic arrives before it listens.",
		}
		if e.gone > 0 {
			fix = append(fix, "For pods that are shutting down: a preStop hook that sleeps 5–15 s keeps the app listening until its endpoint is gone everywhere.")
		}
		if lateOnly {
			fix = []string{
				"Usually harmless: a peer kept sending on a connection this end had already closed or forgotten (after a restart or a timeout); it gets a reset and reconnects.",
				"If it is frequent, align idle timeouts: the client's keep-alive/idle timeout should be shorter than the server's, so the client never reuses a connection the server closed.",
			}
		}
		fd.Fix = strings.Join(fix, "\n")
		a.add(fd)
	}
}

// ---------------------------------------------------------------------------
// NETFILTER_DROP: firewall rules and NetworkPolicies

func (a *analysis) netfilterFindings() {
	var gs groups
	type extra struct {
		locations counter
		dstPods   counter
		unknown   counter // why kdrop named no rule
		sample    *Flow
	}
	ex := map[*group]*extra{}
	for _, f := range a.rec.Flows {
		if f.Type != "drop" || f.Reason != "NETFILTER_DROP" || a.used[f] {
			continue
		}
		g := gs.get(workload(f.SrcK8s, f.Src) + "|" + workload(f.DstK8s, f.Dst) + "|" + f.Proto + "|" + fmt.Sprint(f.Dport))
		g.add(f)
		g.pods.add(shortPod(f.SrcK8s, f.Src), f.Count)
		e := ex[g]
		if e == nil {
			e = &extra{locations: counter{}, dstPods: counter{}, unknown: counter{}, sample: f}
			ex[g] = e
		}
		if f.Location != "" {
			e.locations.add(f.Location, f.Count)
		}
		if f.NamedRule != nil && f.NamedRule.Unknown != "" {
			e.unknown.add(f.NamedRule.Unknown, f.Count)
		}
		e.dstPods.add(shortPod(f.DstK8s, f.Dst), f.Count)
		a.used[f] = true
	}
	for _, g := range gs.order {
		e := ex[g]
		f0 := e.sample
		src, dst := workload(f0.SrcK8s, f0.Src), workload(f0.DstK8s, f0.Dst)
		if !f0.Src.IsValid() {
			// summary lines: a flow is keyed by its destination, over sources
			src = "any source (summaries of rate-limited flows)"
		}
		if !f0.Dst.IsValid() {
			dst = "many destinations (kdrop's flow table was full)"
		}
		port := ""
		if f0.Dport != 0 {
			port = fmt.Sprintf(" %s port %d", strings.ToUpper(f0.Proto), f0.Dport)
		}
		fd := Finding{
			Severity: SevWarning, Kind: "netfilter", Count: g.count, First: g.first, Last: g.last,
			Title: fmt.Sprintf("Firewall dropped traffic from %s to %s%s: %s (NETFILTER_DROP)", src, dst, port, plural(g.count, "packet", "packets")),
		}
		var d strings.Builder
		fmt.Fprintf(&d, "%s, an iptables/nftables rule dropped %s from %s (pods: %s) to %s (pods: %s)%s, at %s",
			capital(span(g.first, g.last)), plural(g.count, "packet", "packets"), src, g.pods.names(3), dst, e.dstPods.names(3), port, g.senders.names(3))
		if len(e.locations) > 0 {
			fmt.Fprintf(&d, " (kernel function %s)", e.locations.names(2))
		}
		d.WriteString(".")
		if len(e.unknown) > 0 {
			fmt.Fprintf(&d, " kdrop could not name the rule: %s.", e.unknown.list(2))
		}
		d.WriteString(" In Kubernetes this is usually a NetworkPolicy (the CNI turns policies into such rules), or a firewall rule on the node. The sender sees its connection attempts time out.")
		fd.Detail = d.String()
		dstNS, srcNS := "NAMESPACE", "NAMESPACE"
		if known(f0.DstK8s) {
			dstNS = cmdArg(f0.DstK8s.Namespace, dstNS)
		}
		if known(f0.SrcK8s) {
			srcNS = cmdArg(f0.SrcK8s.Namespace, srcNS)
		}
		fd.Fix = strings.Join([]string{
			fmt.Sprintf("List the policies of the destination's namespace: `kubectl get networkpolicy -n %s`, and check that one selecting %s allows ingress from %s%s (namespaceSelector and podSelector both have to match).", dstNS, dst, src, port),
			fmt.Sprintf("Check egress policies in the source namespace %s: a default-deny egress needs an explicit allow for this destination (and for DNS).", srcNS),
			"Outside Kubernetes policies, look for the rule on the node: `iptables-save | grep -E 'DROP|REJECT'` or `nft list ruleset`; kube-proxy also drops packets conntrack marks INVALID.",
			"If this traffic should be blocked, nothing to fix: the policy is working.",
		}, "\n")
		a.add(fd)
	}
}

// ---------------------------------------------------------------------------
// Everything else, by drop reason and by ICMP error

type reasonInfo struct {
	meaning, fix string
}

var reasonText = map[string]reasonInfo{
	"NO_SOCKET":            {meaning: "no socket was listening on (or connected to) the destination port", fix: "Check that the app listens on that port and address, and that containerPort/targetPort match."},
	"NETFILTER_DROP":       {meaning: "an iptables/nftables rule dropped it: a NetworkPolicy, kube-proxy or a node firewall", fix: "Check the NetworkPolicies of both namespaces and the node's rules (iptables-save, nft list ruleset)."},
	"NEIGH_FAILED":         {meaning: "nothing answered ARP/neighbor discovery for the next hop: no host holds that IP (a deleted pod, a wrong address, a node that is down)", fix: "Check the destination exists (`kubectl get pods -A -o wide | grep IP`); if it is a pod that just went away, use a preStop sleep so clients stop using it first; if it is a node or gateway, check it is up."},
	"NEIGH_QUEUEFULL":      {meaning: "too many packets were waiting for an ARP/neighbor answer", fix: "Same causes as NEIGH_FAILED (an address nobody answers for); on large flat networks raise net.ipv4.neigh.default.unres_qlen_bytes."},
	"NEIGH_CREATEFAIL":     {meaning: "the node's neighbor (ARP) table could not take a new entry: it is full", fix: "Raise net.ipv4.neigh.default.gc_thresh1/2/3 (and the ipv6 ones) on the nodes: big clusters outgrow the defaults."},
	"NEIGH_DEAD":           {meaning: "the neighbor entry was being removed", fix: "Usually transient; frequent ones point at a flapping next hop."},
	"SOCKET_RCVBUFF":       {meaning: "the receiving socket's buffer was full: the app reads more slowly than data arrives", fix: "Give the app more CPU or read faster; raise its receive buffer (SO_RCVBUF, capped by net.core.rmem_max). Common for UDP: DNS, metrics, syslog."},
	"SOCKET_BACKLOG":       {meaning: "the socket's backlog queue (packets held while the app used the socket) was full", fix: "The app holds its socket busy too long or is starved of CPU; check CPU throttling."},
	"PROTO_MEM":            {meaning: "the node hit its memory limit for TCP or UDP buffers (net.ipv4.tcp_mem / udp_mem)", fix: "Look at `cat /proc/net/sockstat` on the node: find the sockets hoarding buffers, or raise net.ipv4.tcp_mem / udp_mem."},
	"SOCKET_FILTER":        {meaning: "a filter attached to the socket (classic BPF, e.g. by tcpdump or the app) refused it", fix: "Expected when an app filters its own traffic; otherwise find what attached the filter."},
	"QDISC_DROP":           {meaning: "an interface's traffic-control queue (qdisc) dropped it: sending faster than the queue or a bandwidth limit allows", fix: "Check `tc -s qdisc` on the node; pod bandwidth annotations (kubernetes.io/egress-bandwidth) or a saturated NIC."},
	"CPU_BACKLOG":          {meaning: "the per-CPU input queue (net.core.netdev_max_backlog) was full", fix: "Raise net.core.netdev_max_backlog on the node and spread packet processing over CPUs (RSS/RPS)."},
	"FULL_RING":            {meaning: "a device ring buffer was full", fix: "Raise the NIC ring size (`ethtool -G`) and check for CPU starvation of the receive path."},
	"IP_OUTNOROUTES":       {meaning: "there was no route to the destination", fix: "Check `ip route get DST` in the pod and on the node; a missing pod CIDR route usually means the CNI is broken on a node."},
	"IP_INNOROUTES":        {meaning: "there was no route for an incoming packet", fix: "Check the node's routes to the pod CIDRs (`ip route`) and the CNI's health."},
	"IP_RPFILTER":          {meaning: "the strict reverse-path filter dropped it: the route back to the sender uses another interface (a multi-homed node)", fix: "Asymmetric routing (several NICs, policy routing): fix the routes or set net.ipv4.conf.*.rp_filter=2 (loose) on the node."},
	"OTHERHOST":            {meaning: "the packet was for another host's MAC address (seen by a promiscuous interface)", fix: "Usually harmless."},
	"PKT_TOO_BIG":          {meaning: "the packet was bigger than the path MTU and could not be fragmented", fix: "MTU mismatch: the pod MTU must be the node MTU minus the overlay's overhead (VXLAN 50 bytes); make sure ICMP frag-needed is not filtered."},
	"TC_INGRESS":           {meaning: "a tc/eBPF program on an interface dropped it: the CNI's datapath (e.g. Cilium) or a policy it enforces", fix: "Ask the CNI why (e.g. `hubble observe --verdict DROPPED`, `cilium monitor --type drop`) and check its policies."},
	"TC_EGRESS":            {meaning: "a tc/eBPF program on an interface dropped it on the way out: the CNI's datapath or a policy it enforces", fix: "Ask the CNI why (e.g. `hubble observe --verdict DROPPED`) and check its policies."},
	"BPF_CGROUP_EGRESS":    {meaning: "a cgroup eBPF program refused the packet (a CNI or service-mesh policy)", fix: "Check the policies of the CNI or mesh that attaches cgroup programs."},
	"BPF_CGROUP_INGRESS":   {meaning: "a cgroup eBPF program refused the packet (a CNI or service-mesh policy)", fix: "Check the policies of the CNI or mesh that attaches cgroup programs."},
	"XDP":                  {meaning: "an XDP program on the NIC dropped it", fix: "Find the XDP program (`ip link` shows prog/xdp) and its rules (DDoS protection, load balancer)."},
	"IP_NOPROTO":           {meaning: "nothing on the host handles this IP protocol (e.g. SCTP or GRE not loaded)", fix: "Load the protocol's module or stop sending it."},
	"UNHANDLED_PROTO":      {meaning: "nothing handles this protocol", fix: "Load the protocol's module or stop sending it."},
	"TCP_ZEROWINDOW":       {meaning: "the receiver's window was zero: the app at this end is not reading", fix: "The receiving app is stuck or too slow; check its CPU and what it waits on."},
	"TCP_OFO_DROP":         {meaning: "an out-of-order segment was dropped for lack of buffer memory", fix: "Buffer pressure: check the app reads fast enough and the node's TCP memory."},
	"TCP_OFO_QUEUE_PRUNE":  {meaning: "the out-of-order queue was pruned under memory pressure", fix: "Buffer pressure: check the app reads fast enough and the node's TCP memory."},
	"TCP_RFC7323_PAWS":     {meaning: "the segment's TCP timestamp was older than the connection's (PAWS): often clients behind one NAT address with different clocks", fix: "Look at the NAT in front of the server; tcp_tw_recycle is gone since Linux 4.12."},
	"TCP_RFC7323_TW_PAWS":  {meaning: "a segment for a connection in TIME_WAIT had an older TCP timestamp (PAWS): often a new client behind the same NAT address and port", fix: "Look at the NAT in front of the server; tcp_tw_recycle is gone since Linux 4.12."},
	"TCP_CSUM":             {meaning: "bad TCP checksum", fix: "A NIC or driver offload bug or corruption on the wire: check `ethtool -k` offloads (VXLAN checksum offload is a known offender)."},
	"UDP_CSUM":             {meaning: "bad UDP checksum", fix: "A NIC or driver offload bug or corruption: check `ethtool -k` offloads."},
	"IP_CSUM":              {meaning: "bad IP header checksum", fix: "Corruption on the wire or an offload bug: check the NIC and `ethtool -k` offloads."},
	"IPV6DISABLED":         {meaning: "IPv6 is disabled on this interface", fix: "Enable IPv6 where it is used, or stop clients preferring IPv6 addresses."},
	"NOMEM":                {meaning: "the kernel had no memory for the packet", fix: "Check the node's memory pressure."},
	"TCP_CLOSE":            {meaning: "the segment arrived for a TCP connection being closed", fix: "Usually harmless."},
	"TCP_RESET":            {meaning: "the segment arrived for a connection that was reset", fix: "Usually harmless."},
	"TCP_FLAGS":            {meaning: "invalid TCP flags", fix: "Usually scans or broken middleboxes."},
	"TCP_INVALID_SYN":      {meaning: "a SYN arrived in an established connection", fix: "Usually harmless; frequent ones point at port reuse by NAT."},
	"NOT_SPECIFIED":        {meaning: "the kernel dropped the packet at a site that has no reason yet (kdrop hides the ones known to be normal)", fix: "The location tells what: ip_error means routed into a blackhole, unreachable or prohibit route, or no route at all (a CNI route left for a deleted pod, a missing route): check `ip route` on that node for the destination. tcp_v4_rcv or tcp_v6_rcv means a segment a TIME_WAIT socket handled: the peer's FIN after this side closed first (normal), data that came after this side closed (lost: the peer wrote to a closed connection), or, if TcpExtPAWSTimewait moves with them, timestamps that went backwards (clients behind one NAT)."},
	"TCP_OLD_DATA":         {meaning: "retransmitted data the receiver already had", fix: "Harmless: a retransmission."},
	"TCP_OLD_ACK":          {meaning: "an ACK older than what was already acknowledged", fix: "Harmless."},
	"TCP_TOO_OLD_ACK":      {meaning: "an ACK for data never sent or long acknowledged", fix: "Harmless."},
	"TCP_OLD_SEQUENCE":     {meaning: "a segment from before the current window", fix: "Harmless: a retransmission."},
	"TCP_INVALID_SEQUENCE": {meaning: "a segment outside the receive window", fix: "Harmless in small numbers."},
	"QUEUE_PURGE":          {meaning: "a queue was flushed (a socket or device closing)", fix: "Harmless."},
	"unknown":              {meaning: "the kernel gave no reason (kernels before 5.17 have none)", fix: "Look at the kernel function in the location column to tell them apart."},
}

func reasonMeaning(r string) reasonInfo {
	if i, ok := reasonText[r]; ok {
		return i
	}
	return reasonInfo{meaning: "see SKB_DROP_REASON_" + r + " in the kernel's include/net/dropreason-core.h", fix: "Look at the kernel function where it happened (location) and the reason's comment in the kernel source."}
}

func (a *analysis) otherDropFindings() {
	var gs groups
	locs := map[*group]counter{}
	dsts := map[*group]counter{}
	for _, f := range a.rec.Flows {
		if f.Type != "drop" || a.used[f] {
			continue
		}
		g := gs.get(f.Reason)
		g.add(f)
		if locs[g] == nil {
			locs[g], dsts[g] = counter{}, counter{}
		}
		if f.Location != "" {
			locs[g].add(f.Location, f.Count)
		}
		dsts[g].add(onPort(f.DstK8s, f.Dst, f.Dport), f.Count)
	}
	for _, g := range gs.order {
		info := reasonMeaning(g.key)
		sev := SevWarning
		if tracer.IsBenign(g.key) {
			sev = SevInfo
		}
		fd := Finding{
			Severity: sev, Kind: "drop-reason", Count: g.count, First: g.first, Last: g.last,
			Title: fmt.Sprintf("%s: %s dropped — %s", g.key, plural(g.count, "packet", "packets"), firstClause(info.meaning)),
		}
		var d strings.Builder
		fmt.Fprintf(&d, "%s, the kernel dropped %s with reason %s, meaning %s. Destinations: %s. Senders: %s.",
			capital(span(g.first, g.last)), plural(g.count, "packet", "packets"), g.key, info.meaning, dsts[g].list(3), g.sources.list(3))
		if len(locs[g]) > 0 {
			fmt.Fprintf(&d, " Where in the kernel: %s.", locs[g].names(3))
		}
		fd.Detail = d.String()
		fd.Fix = info.fix
		a.add(fd)
	}
}

// firstClause shortens a meaning for a title.
func firstClause(s string) string {
	if i := strings.IndexAny(s, ":("); i > 0 {
		return strings.TrimSpace(s[:i])
	}
	return s
}

var icmpText = map[string]reasonInfo{
	"port-unreachable": {meaning: "nothing listens on that port (for UDP; TCP gets a reset instead), or a firewall rule REJECTed the packet", fix: "For UDP, check the server is up on that port; late DNS answers to a client that already gave up also cause these and are harmless. For Services, kube-proxy answers this when there are no endpoints."},
	"host-unreachable": {meaning: "the destination host did not answer ARP/neighbor discovery, or a REJECT rule answered so, or an `unreachable` route covers it", fix: "Check the destination IP still belongs to something (`kubectl get pods -A -o wide | grep IP`) and that the node or gateway is up; `ip route get DST` shows an unreachable route (a CNI can leave one for a deleted pod's IP)."},
	"addr-unreachable": {meaning: "the destination address did not answer neighbor discovery", fix: "Check the destination IP still belongs to something (`kubectl get pods -A -o wide | grep IP`)."},
	"net-unreachable":  {meaning: "there was no route to the destination network", fix: "Check `ip route get DST` in the pod and on the node; a missing route usually means the CNI is broken on a node."},
	"no-route":         {meaning: "there was no route to the destination, or an `unreachable` route covers it", fix: "Check `ip -6 route get DST` in the pod and on the node."},
	"admin-prohibited": {meaning: "a firewall rule REJECTed the packet (some CNIs enforce NetworkPolicies this way), or a `prohibit` route covers the destination", fix: "Check the NetworkPolicies of both namespaces and the node's iptables/nftables rules, and `ip route get DST` for a prohibit route (a CNI can leave one for a deleted pod's IP)."},
	"host-prohibited":  {meaning: "a firewall rule REJECTed the packet (iptables REJECT --reject-with icmp-host-prohibited)", fix: "Check the node's iptables/nftables rules (firewalld's default reject uses it)."},
	"net-prohibited":   {meaning: "a firewall rule REJECTed the packet", fix: "Check the node's iptables/nftables rules."},
	"frag-needed":      {meaning: "the packet was bigger than the next link's MTU and had don't-fragment set (path MTU discovery)", fix: "Harmless in small numbers; many mean an MTU mismatch: pod MTU must leave room for the overlay (VXLAN 50 bytes)."},
	"packet-too-big":   {meaning: "the packet was bigger than the next link's MTU (path MTU discovery)", fix: "Harmless in small numbers; many mean an MTU mismatch between pods and the overlay."},
	"time-exceeded":    {meaning: "the packet's TTL ran out: a routing loop, or traceroute", fix: "If it is not someone's traceroute, look for a routing loop (`ip route get DST` along the path)."},
	"redirect-host":    {meaning: "a router had to send the packet back out the interface it came in on, to a gateway on the sender's own link, and told the sender to use that gateway (the one the line names) instead", fix: "The sender's route to that destination goes through the wrong next hop: check `ip route get DST` on the sender and give it the gateway named (or a route to the subnet); if the router is meant to hairpin, set net.ipv4.conf.IFACE.send_redirects=0 on it."},
	"redirect-net":     {meaning: "a router had to send the packet back out the interface it came in on, and told the sender to use the gateway the line names for that network instead", fix: "The sender's route to that network goes through the wrong next hop: check `ip route get DST` on the sender and add a route via the gateway named."},
}

func (a *analysis) otherICMPFindings() {
	var gs groups
	dsts := map[*group]counter{}
	for _, f := range a.rec.Flows {
		if f.Type != "unreach" || a.used[f] {
			continue
		}
		g := gs.get(f.ICMP)
		g.add(f)
		if dsts[g] == nil {
			dsts[g] = counter{}
		}
		dsts[g].add(onPort(f.DstK8s, f.Dst, f.Dport), f.Count)
	}
	for _, g := range gs.order {
		info, ok := icmpText[icmpBase(g.key)]
		if !ok {
			info = reasonInfo{meaning: "the kernel sent this ICMP error", fix: "See the destinations and senders above."}
		}
		fd := Finding{
			Severity: SevWarning, Kind: "icmp", Count: g.count, First: g.first, Last: g.last,
			Title: fmt.Sprintf("ICMP %s sent %s — %s", g.key, plural(g.count, "time", "times"), firstClause(info.meaning)),
		}
		if isTooBig(g.key) || g.key == "time-exceeded" {
			fd.Severity = SevInfo
		}
		fd.Detail = fmt.Sprintf("%s, the kernel answered %s with ICMP %s, meaning %s. Packets were going to %s, from %s; the error was sent by %s.",
			capital(span(g.first, g.last)), plural(g.count, "packet", "packets"), g.key, info.meaning, dsts[g].list(3), g.sources.list(3), g.senders.names(3))
		fd.Fix = info.fix
		a.add(fd)
	}
}

// ---------------------------------------------------------------------------
// The recording itself

// perNodeWords is " (n1: 30, n2: 7)" for counts by node, "" for none.
func perNodeWords(perNode counter) string {
	if len(perNode) == 0 {
		return ""
	}
	var parts []string
	for _, e := range perNode.top(4) {
		parts = append(parts, e.Name+": "+num(e.Count))
	}
	if len(perNode) > 4 {
		parts = append(parts, fmt.Sprintf("%d more nodes", len(perNode)-4))
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func nodeOr(n string) string {
	if n == "" {
		return "unknown node"
	}
	return n
}

// missedParts sums missed occurrences by cause; what the trailer counts
// beyond the notices, and causes this kdrop does not know, are unknown.
func missedParts(rec *Incident) (kernel, stream, unknown uint64) {
	var sum uint64
	for _, m := range rec.Misses {
		switch m.Cause {
		case MissedByKernel:
			kernel += m.Missed
		case MissedByStream:
			stream += m.Missed
		default:
			unknown += m.Missed
		}
		sum += m.Missed
	}
	unknown += rec.Missed() - sum // Missed() is never below the notices' sum
	return kernel, stream, unknown
}

// missedCauses says why occurrences were missed, one clause per cause.
func missedCauses(rec *Incident) string {
	kernel, stream, unknown := missedParts(rec)
	var parts []string
	if kernel > 0 {
		parts = append(parts, fmt.Sprintf("the kernel skipped kdrop's program %s because it was already running on that CPU (e.g. a drop nested in softirq)", plural(kernel, "time", "times")))
	}
	if stream > 0 {
		parts = append(parts, fmt.Sprintf("the agents' stream to the recorder fell behind and the agents dropped lines holding %s", plural(stream, "occurrence", "occurrences")))
	}
	if unknown > 0 {
		parts = append(parts, fmt.Sprintf("%s missed for a reason the file does not name", plural(unknown, "occurrence was", "occurrences were")))
	}
	return capital(strings.Join(parts, "; ")) + "."
}

// maxGapsNamed bounds the gaps a finding names one by one.
const maxGapsNamed = 20

func (a *analysis) recordingFindings() {
	rec := a.rec
	missed := rec.Missed()
	if missed > 0 {
		perNode := counter{}
		for _, m := range rec.Misses {
			perNode.add(nodeOr(m.Node), m.Missed)
		}
		kernel, stream, _ := missedParts(rec)
		fix := []string{"Read every count in this report as a lower bound: the true totals may be higher, by up to " + num(missed) + " in all."}
		if kernel > 0 {
			fix = append(fix,
				"The kernel's own counters miss nothing: compare with nstat -az on the node (e.g. TcpExtListenOverflows, IcmpOutDestUnreachs) over the same window.",
				"Kernel misses are rare and no kdrop setting prevents them; if there are many, check the hooks' attach mode (kdrop check): kprobe programs share one per-CPU guard with every other kprobe and tracepoint program on the node, fentry programs do not.")
		}
		if stream > 0 {
			fix = append(fix, "Record less through the agents: narrow with --type, --reason, --namespace, --pod, --cidr or --port, or record on the node itself with kdrop record --from watch.")
		}
		a.add(Finding{
			Severity: SevWarning, Kind: "missed", Count: missed,
			Title: fmt.Sprintf("Counts are short: %s never counted", plural(missed, "occurrence was", "occurrences were")),
			Detail: fmt.Sprintf("%s Those occurrences%s are in no line and no count: every total in this report may be short, by up to %s in all (up to, as the kernel counts its misses before kdrop's filters). Unlike lost lines, they do not come back in summary lines.",
				missedCauses(rec), perNodeWords(perNode), num(missed)),
			Fix: strings.Join(fix, "\n"),
		})
	}
	if lost := rec.Lost(); lost > 0 {
		perNode := counter{}
		for _, l := range rec.Losses {
			perNode.add(nodeOr(l.Node), l.Lost)
		}
		where := perNodeWords(perNode)
		rate := "the current --rate-limit"
		if rec.Header.From == "tail" {
			rate = "the agents' --rate-limit (in the DaemonSet's args)"
		} else if rec.Header.RateLimit > 0 {
			rate = fmt.Sprintf("--rate-limit (now %d per second per flow)", rec.Header.RateLimit)
		} else if len(rec.Losses) > 0 || rec.Header.Format > 0 {
			rate = "--rate-limit (the recording had none: every event was a line)"
		}
		// "exact" only when nothing was missed: then the counts are short
		// anyway, for the other reason.
		title := fmt.Sprintf("%s not recorded as lines (counts are still exact)", plural(lost, "event was", "events were"))
		counts := "so every count in this report is exact"
		if missed > 0 {
			title = fmt.Sprintf("%s not recorded as lines (their occurrences are still counted)", plural(lost, "event was", "events were"))
			counts = "so they are in the counts of this report (which are short for another reason: see the missed finding)"
		}
		a.add(Finding{
			Severity: SevWarning, Kind: "lost", Count: lost,
			Title:  title,
			Detail: fmt.Sprintf("The kernel's ring buffer had no room for %s%s. Their occurrences were added to later summary lines, %s; what is missing are those events' own lines: their individual times, source ports and pod identities. The stream was incomplete in lines, not in counts.", plural(lost, "event", "events"), where, counts),
			Fix: strings.Join([]string{
				"Record less: narrow with --type, --reason, --namespace, --pod, --selector, --cidr or --port.",
				"Lower " + rate + " so more repeats fold into summary lines, e.g. --rate-limit 20.",
				"Record fewer nodes at once, or for a shorter window.",
			}, "\n"),
		})
	}
	if rec.Truncated() {
		_, end := rec.Window()
		detail := fmt.Sprintf("The file ends without kdrop record's end-of-recording line: the recorder was killed, or ran out of disk, before it finished. The report covers up to the last event it wrote, at %s.", stamp(end))
		if rec.cutOff {
			detail += " The compressed data itself is cut off, so the last events written may be missing too."
		}
		detail += " The lost-line and missed totals come from the loss notices in the file only."
		a.add(Finding{
			Severity: SevWarning, Kind: "truncated", Last: end,
			Title:  "Recording truncated: it has no end-of-recording line",
			Detail: detail,
			Fix:    "Stop kdrop record with Ctrl-C or SIGTERM, or give it --duration, so it finishes the file; make sure the disk has room for it.",
		})
	}
	if len(rec.Gaps) > 0 {
		total := rec.foldedGapTime
		first, last := rec.Gaps[0].From, rec.Gaps[0].To
		if rec.foldedGaps > 0 {
			if rec.foldedFrom.Before(first) {
				first = rec.foldedFrom
			}
			if rec.foldedTo.After(last) {
				last = rec.foldedTo
			}
		}
		for _, g := range rec.Gaps {
			total += g.To.Sub(g.From)
			if g.From.Before(first) {
				first = g.From
			}
			if g.To.After(last) {
				last = g.To
			}
		}
		var where []string
		for i, g := range rec.Gaps {
			if i == maxGapsNamed {
				where = append(where, fmt.Sprintf("and %d more", len(rec.Gaps)+rec.foldedGaps-maxGapsNamed))
				break
			}
			where = append(where, fmt.Sprintf("%s from %s to %s (%s)", g.Node, stamp(g.From), stamp(g.To), dur(g.To.Sub(g.From))))
		}
		a.add(Finding{
			Severity: SevWarning, Kind: "gap", First: first, Last: last,
			Title: fmt.Sprintf("%s without an agent stream, %s in all", plural(uint64(len(rec.Gaps)+rec.foldedGaps), "gap", "gaps"), dur(total)),
			Detail: "The recording came from the agents (kdrop record --from tail), and for these windows one node's agent was not streaming: it restarted, was deleted or its node left. " +
				"Nothing that node's kernel did in those windows is in this report, not even in the counts: " + strings.Join(where, "; ") + ".",
			Fix: strings.Join([]string{
				"Check why the agent restarted: kubectl -n kdrop describe pod, and its previous logs (kubectl logs --previous).",
				"For the missing window, the node's own counters still hold the totals: nstat -az TcpExtListenOverflows IcmpOutDestUnreachs on the node.",
			}, "\n"),
		})
	}
	var unresolved uint64
	for _, f := range rec.Flows {
		if (f.SrcK8s != nil && f.SrcK8s.Unresolved) || (f.DstK8s != nil && f.DstK8s.Unresolved) {
			unresolved += f.Count
		}
	}
	if unresolved > 0 && unresolved*20 >= a.total {
		a.add(Finding{
			Severity: SevInfo, Kind: "unresolved", Count: unresolved,
			Title:  fmt.Sprintf("Pod names unknown for %s (%s of all)", plural(unresolved, "occurrence", "occurrences"), pct(unresolved, a.total)),
			Detail: "kdrop could not tell which pod or service some addresses belonged to: the Kubernetes API was unreachable, refused kdrop's service account, or had not synced yet. Those ends are shown by address.",
			Fix:    "Check kdrop's logs for API errors and that its ClusterRole allows list/watch of pods, services, endpointslices and nodes.",
		})
	}
}

// ---------------------------------------------------------------------------
// Tables

func (a *analysis) tables() {
	type lkey struct {
		node  string
		netns uint64
		dst   netip.Addr
		port  uint16
	}
	ls := map[lkey]*listenerRow{}
	lq := map[lkey]counter{}
	var lorder []lkey
	type ukey struct {
		dst   netip.Addr
		port  uint16
		proto string
	}
	us := map[ukey]*unreachRow{}
	type uextra struct {
		icmp, sentBy, owner, sources counter
		ago                          minmax
	}
	ux := map[ukey]*uextra{}
	var uorder []ukey
	reasons := map[string]*reasonRow{}
	rlocs := map[string]counter{}
	locs := map[string]*locationRow{}
	lreasons := map[string]counter{}
	type top struct {
		row        topRow
		pods, what few
	}
	tops := [3]map[string]*top{{}, {}, {}}
	var drops uint64

	for _, f := range a.rec.Flows {
		switch f.Type {
		case "overflow":
			k := lkey{f.Node, f.Netns, f.Dst, f.Dport}
			r := ls[k]
			if r == nil {
				r = &listenerRow{Listener: addr(f.Dst, f.Dport), Pod: pod(f.DstK8s, f.Dst), Workload: "–", Node: f.Node}
				if known(f.DstK8s) && f.DstK8s.WorkloadName != "" {
					r.Workload = workload(f.DstK8s, f.Dst)
				}
				if r.Node == "" && known(f.DstK8s) {
					r.Node = f.DstK8s.Node
				}
				ls[k], lq[k] = r, counter{}
				lorder = append(lorder, k)
			}
			lq[k].add(f.Queue, f.Count)
			r.QueueMax = max(r.QueueMax, f.QueueMax)
			r.MaxLen = max(r.MaxLen, f.MaxQueueLen, f.MaxSynQueueLen)
			r.Somaxconn = max(r.Somaxconn, f.Somaxconn)
			r.Syncookies += f.Syncookies
			r.Count += f.Count
		case "unreach":
			k := ukey{f.Dst, f.Dport, f.Proto}
			r := us[k]
			if r == nil {
				r = &unreachRow{Dest: addr(f.Dst, f.Dport), Proto: f.Proto}
				us[k] = r
				ux[k] = &uextra{icmp: counter{}, sentBy: counter{}, owner: counter{}, sources: counter{}}
				uorder = append(uorder, k)
			}
			x := ux[k]
			r.Count += f.Count
			x.icmp.add(f.ICMP, f.Count)
			x.sentBy.add(actor(f), f.Count)
			x.sources.add(workload(f.SrcK8s, f.Src), f.Count)
			x.owner.add(owner(f.DstK8s), f.Count)
			if f.DstK8s != nil && f.DstK8s.DeletedAgo > 0 {
				x.ago.add(f.DstK8s.DeletedAgo)
			}
		case "drop":
			drops += f.Count
			r := reasons[f.Reason]
			if r == nil {
				r = &reasonRow{Reason: f.Reason, Meaning: reasonMeaning(f.Reason).meaning}
				reasons[f.Reason], rlocs[f.Reason] = r, counter{}
			}
			r.Count += f.Count
			loc := f.Location
			if loc == "" {
				loc = "–"
			}
			rlocs[f.Reason].add(loc, f.Count)
			l := locs[loc]
			if l == nil {
				l = &locationRow{Location: loc}
				locs[loc], lreasons[loc] = l, counter{}
			}
			l.Count += f.Count
			lreasons[loc].add(f.Reason, f.Count)
		}
		port := ""
		if f.Dport != 0 {
			port = fmt.Sprint(f.Dport)
		}
		keys := [3]struct{ name, port, pod string }{
			{workload(f.DstK8s, f.Dst), port, shortPod(f.DstK8s, f.Dst)},
			{pod(f.DstK8s, f.Dst), port, shortPod(f.DstK8s, f.Dst)},
			{workload(f.SrcK8s, f.Src), "", shortPod(f.SrcK8s, f.Src)},
		}
		for i, k := range keys {
			t := tops[i][k.name+"|"+k.port]
			if t == nil {
				t = &top{row: topRow{Name: k.name, Port: k.port}}
				tops[i][k.name+"|"+k.port] = t
			}
			t.row.Count += f.Count
			t.pods.add(k.pod, 0)
			t.what.add(f.series, f.Count)
		}
	}
	for _, k := range lorder {
		r := ls[k]
		r.Queues = lq[k].names(2)
		switch {
		case r.Somaxconn == 0:
			r.Limit = "unknown"
		case r.QueueMax >= r.Somaxconn:
			r.Limit = "somaxconn"
		default:
			r.Limit = "backlog"
		}
		a.listeners = append(a.listeners, *r)
	}
	sort.SliceStable(a.listeners, func(i, j int) bool { return a.listeners[i].Count > a.listeners[j].Count })
	for _, k := range uorder {
		r, x := us[k], ux[k]
		r.ICMP = x.icmp.names(3)
		r.SentBy = x.sentBy.names(2)
		r.Owner = x.owner.names(2)
		r.Deleted = x.ago.String()
		r.Sources = x.sources.list(2)
		a.unreach = append(a.unreach, *r)
	}
	sort.SliceStable(a.unreach, func(i, j int) bool { return a.unreach[i].Count > a.unreach[j].Count })
	for name, r := range reasons {
		r.Share = pct(r.Count, drops)
		r.Locations = rlocs[name].names(3)
		a.reasons = append(a.reasons, *r)
	}
	sort.Slice(a.reasons, func(i, j int) bool {
		if a.reasons[i].Count != a.reasons[j].Count {
			return a.reasons[i].Count > a.reasons[j].Count
		}
		return a.reasons[i].Reason < a.reasons[j].Reason
	})
	for name, l := range locs {
		l.Reasons = lreasons[name].names(3)
		a.locations = append(a.locations, *l)
	}
	sort.Slice(a.locations, func(i, j int) bool {
		if a.locations[i].Count != a.locations[j].Count {
			return a.locations[i].Count > a.locations[j].Count
		}
		return a.locations[i].Location < a.locations[j].Location
	})
	out := [3]*[]topRow{&a.dstWork, &a.dstPods, &a.sources}
	for i, m := range tops {
		for _, t := range m {
			t.row.Pods = t.pods.len()
			var parts []string
			for _, w := range t.what.counter().top(3) {
				parts = append(parts, fmt.Sprintf("%s %s", w.Name, num(w.Count)))
			}
			if t.what.len() > 3 {
				parts = append(parts, "…")
			}
			t.row.What = strings.Join(parts, " · ")
			*out[i] = append(*out[i], t.row)
		}
		rows := *out[i]
		sort.Slice(rows, func(x, y int) bool {
			if rows[x].Count != rows[y].Count {
				return rows[x].Count > rows[y].Count
			}
			return rows[x].Name+rows[x].Port < rows[y].Name+rows[y].Port
		})
	}
}

// owner says whom an address belonged to, for the unreachable table.
func owner(k *K8s) string {
	if k == nil {
		return "unknown"
	}
	if k.Unresolved {
		return "unknown (not resolved)"
	}
	s := pod(k, netip.Addr{})
	if k.Kind == "pod" || k.Kind == "" {
		if k.WorkloadName != "" {
			s += " of " + workload(k, netip.Addr{})
		}
		switch {
		case k.DeletedAgo > 0:
			s += ", deleted"
		case k.Terminating:
			s += ", terminating"
		}
	}
	if k.Kind == "service" && k.ReadyEndpoints >= 0 { // < 0: unknown
		s += fmt.Sprintf(", %s", plural(k.ReadyEndpoints, "ready endpoint", "ready endpoints"))
	}
	if len(k.Previous) > 0 {
		var prev []string
		for i := range k.Previous {
			prev = append(prev, pod(&k.Previous[i], netip.Addr{}))
		}
		s += "; before: " + join(prev)
	}
	return s
}

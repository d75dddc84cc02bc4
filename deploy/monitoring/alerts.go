// Package monitoring is the one source of kdrop's alerts and Grafana
// dashboard: the Prometheus rules file, the PrometheusRule of the
// prometheus-operator, the dashboard JSON and the ConfigMaps that ship them
// with kustomize and the Helm chart are all written from here by `make
// monitoring` (go run ./deploy/monitoring/gen), and `make check-monitoring`
// fails when a committed file differs from what this package writes.
package monitoring

// Alert is one Prometheus alerting rule.
type Alert struct {
	Name     string
	Expr     string
	For      string
	Severity string // critical, warning or info
	Summary  string // one line, with the alert's labels
	Runbook  string // what it means, what to do
}

// Group is a rule group: alerts evaluated together.
type Group struct {
	Name   string
	Alerts []Alert
}

// Rate windows: 5 minutes covers a few scrapes at any usual interval.
const window = "5m"

// increase is what a counter's series sel rose by in the last window, a
// series that appeared within it counting with its whole value: the agent
// exports kdrop_events_total{...} at its first occurrence, already at the
// burst's count, and increase() alone reads 0 for a burst within one
// scrape.
func increase(sel string) string {
	return "((increase(" + sel + "[" + window + "]) and " + sel + " offset " + window + ") or " + sel + ")"
}

// Groups are kdrop's alerts: the incidents kdrop diagnoses, then kdrop's own
// health. Every label they match on is one the agent exports
// (kdrop_events_total{type,reason,namespace,workload}, see
// cmd/kdrop/sinks/metrics); the tests hold them to a real scrape.
var Groups = []Group{
	{Name: "kdrop-incidents", Alerts: []Alert{
		{
			Name: "KdropListenQueueOverflow",
			Expr: `sum by (namespace, workload) ` + increase(`kdrop_events_total{type="overflow", reason=~"accept-queue|syn-queue"}`) + ` > 10`,
			For:  "2m", Severity: "warning",
			Summary: `{{ $labels.namespace }}/{{ $labels.workload }}: {{ $value | humanize }} connections dropped by full listen queues in 5 minutes`,
			Runbook: "The kernel dropped connections to this workload because a listening socket's accept or SYN queue was full: clients see timeouts and retransmitted SYNs, not errors. " +
				"The application accepts too slowly for its load, or its queue is too small: the queue limit is min(listen backlog, net.core.somaxconn) of the pod's network namespace. " +
				"Run `kdrop tail -n NAMESPACE --type overflow` for the listener, port and queue (length/limit); raise the application's backlog and net.core.somaxconn (a safe sysctl in the pod's securityContext), add replicas, or find why accept() stalls.",
		},
		{
			Name: "KdropUnreachableToWorkload",
			Expr: `sum by (namespace, workload) ` + increase(`kdrop_events_total{type="unreach", reason=~"host-unreachable|addr-unreachable", workload!=""}`) + ` > 5`,
			For:  "1m", Severity: "warning",
			Summary: `{{ $labels.namespace }}/{{ $labels.workload }}: {{ $value | humanize }} "No route to host" answers for its pods' addresses in 5 minutes`,
			Runbook: "More than 5 times in 5 minutes, clients sent traffic to an address of this workload's pods that nobody answers: the kernel answered host-unreachable (\"No route to host\"). " +
				"During a rollout this is traffic to pods already deleted, whose IPs clients or load balancers still use; otherwise a pod or node is gone or unreachable. " +
				"Run `kdrop tail -n NAMESPACE --type unreach`: a destination marked \"deleted … ago\" is a deleted pod. Give the pods a preStop delay longer than endpoint propagation, a readinessProbe, and terminationGracePeriodSeconds above it; check clients that cache DNS or connections.",
		},
		{
			Name: "KdropServiceWithoutEndpoints",
			Expr: `sum by (namespace, workload) ` + increase(`kdrop_events_total{type="unreach", reason="port-unreachable", workload=~"Service/.+"}`) + ` > 0`,
			For:  "1m", Severity: "warning",
			Summary: `{{ $labels.namespace }}/{{ $labels.workload }}: {{ $value | humanize }} connections refused in 5 minutes, the Service has no ready endpoints`,
			Runbook: "Clients connect to this Service while it has no ready endpoints: kube-proxy rejects them (port-unreachable, \"Connection refused\"). " +
				"Check `kubectl get endpointslices -n NAMESPACE -l kubernetes.io/service-name=NAME`: the selector matches no pod, or no pod is ready (readinessProbe failing, rollout stuck, scaled to zero). " +
				"`kdrop tail -n NAMESPACE --type unreach` names the clients.",
		},
	}},
	{Name: "kdrop-health", Alerts: []Alert{
		{
			Name: "KdropMissedOccurrences",
			Expr: `increase(kdrop_missed_total[` + window + `]) > 0`,
			For:  "10m", Severity: "warning",
			Summary: `kdrop on {{ $labels.instance }} missed {{ $value | humanize }} occurrences in 5 minutes: its counts are short`,
			Runbook: "The kernel skipped kdrop's programs because they were already running on that CPU (a drop nested in softirq): kdrop_events_total is short by up to this much, and the stream lacks those events. " +
				"Rare and bounded; if it persists, the node drops heavily in nested contexts: look at `kdrop tail --node NODE` for what drops, and compare with the kernel's own counters (nstat).",
		},
		{
			Name: "KdropLostLines",
			Expr: `increase(kdrop_lost_lines_total[` + window + `]) > 0`,
			For:  "10m", Severity: "info",
			Summary: `kdrop on {{ $labels.instance }} lost {{ $value | humanize }} event lines in 5 minutes (counts stay exact)`,
			Runbook: "kdrop's ring buffer was full: those events have no line in the stream or the logs, but their occurrences came back in summary lines, so kdrop_events_total stays exact. " +
				"Sustained, it means a drop storm on the node: find it with `kdrop tail --node NODE` (the +N summary lines), or lower --rate-limit to send fewer lines per flow.",
		},
		{
			Name: "KdropHookNotAttached",
			// Only a hook the kernel should have: kfree_skb (every kernel
			// kdrop runs on has it), or one another agent of the job
			// attached (this node differs). A hook refused on every node
			// (icmp6_send where fentry is forbidden and kprobe unsupported)
			// is how those kernels are: `kdrop check` says so, the alert
			// would only ever fire.
			Expr: `(kdrop_hook_attached{mode="none"} == 0 and on (job, hook) kdrop_hook_attached{mode!="none"} == 1) or kdrop_hook_attached{mode="none", hook="kfree_skb"} == 0`,
			For:  "5m", Severity: "warning",
			Summary: `kdrop on {{ $labels.instance }} could not attach hook {{ $labels.hook }}: those events are not traced`,
			Runbook: "The kernel refused every attach mode of this hook (kfree_skb: drops; tcp_*: listen overflows; icmp*_send: ICMP errors), so kdrop does not see those events on this node. It fires for kfree_skb (all drops), or for a hook another node's agent attached; a hook refused on every node is left to `kdrop check` (kernels without it). " +
				"The agent's log says why each mode failed; `kdrop check` on the node lists what the kernel supports. Usual causes: no BTF (CONFIG_DEBUG_INFO_BTF), lockdown, a seccomp/AppArmor/SELinux profile (see deploy/README.md, capabilities mode), or a kernel without the function.",
		},
		{
			Name: "KdropEventWritesFailing",
			Expr: `increase(kdrop_k8s_events_writes_total{result="failed"}[` + window + `]) > 0`,
			For:  "15m", Severity: "warning",
			Summary: `kdrop on {{ $labels.instance }} failed {{ $value | humanize }} Kubernetes Event writes in 5 minutes`,
			Runbook: "The agent's Kubernetes Events (NothingListening, ListenQueueOverflow, ...) are not reaching the API server: `kubectl describe` and `kubectl events` lack findings this node made. " +
				"The agent's log says why (\"cannot write a Kubernetes Event\"): RBAC (the kdrop-agent ClusterRole needs create and patch on events.k8s.io events), a ResourceQuota on events, namespaces deleted or terminating (those series are dropped, counted in kdrop_k8s_events_unrecorded_total), or an API server unreachable or throttling (retried with backoff).",
		},
		{
			Name: "KdropEventsUnrecorded",
			Expr: `increase(kdrop_k8s_events_unrecorded_total[` + window + `]) > 0`,
			For:  "15m", Severity: "info",
			Summary: `kdrop on {{ $labels.instance }}: {{ $value | humanize }} occurrences of findings in no Kubernetes Event in 5 minutes`,
			Runbook: "Occurrences of findings the agent could not put in any Event: their Event's write failed for good (the namespace is gone or terminating, the write invalid or forbidden), kept failing for 10 minutes, or the agent held 10000 series. " +
				"kdrop_events_total still counts them. Read the agent's log for the refused writes; sustained, check RBAC and quotas on events, or a storm of findings on the node (`kdrop tail --node NODE`).",
		},
		{
			Name: "KdropAgentDown",
			Expr: `up{job=~".*kdrop.*"} == 0`,
			For:  "5m", Severity: "warning",
			Summary: `kdrop agent {{ $labels.instance }} is not answering Prometheus: its node's drops are neither traced nor counted`,
			Runbook: "Prometheus cannot scrape this kdrop agent: the pod is crash-looping, not ready, evicted, or its metrics port is blocked. Its node's drops are not traced, counted, or posted as Events, and every other kdrop alert is blind there. " +
				"Check `kubectl -n kdrop get pods -o wide` and the pod's log and events (`kubectl -n kdrop describe pod`); the usual causes are a kernel refusing the BPF programs (`kdrop check` on the node), missing privileges, or a NetworkPolicy blocking the metrics port.",
		},
		{
			Name: "KdropAgentAbsent",
			Expr: `absent(up{job=~".*kdrop.*"})`,
			For:  "15m", Severity: "warning",
			Summary: `Prometheus scrapes no kdrop agent`,
			Runbook: "Prometheus has no kdrop target at all: the DaemonSet is gone or schedules no pod, or the ServiceMonitor / scrape config does not select the agents (its job label must contain \"kdrop\" for these alerts). " +
				"Check `kubectl -n kdrop get daemonset,pods` and Prometheus's targets page; no kdrop alert can fire while this one does.",
		},
		{
			Name: "KdropIdentityUnhealthy",
			Expr: `kdrop_identity_healthy == 0`,
			For:  "5m", Severity: "warning",
			Summary: `kdrop on {{ $labels.instance }} cannot name pods: identity is not synced with the API server`,
			Runbook: "The agent cannot list or watch pods, Services or EndpointSlices: events are marked unresolved, and kdrop_events_total counts them without namespace and workload, so the incident alerts do not fire for them. " +
				"Check the agent's log for the API server's errors: unreachable API server, or RBAC (the kdrop-agent ClusterRole must be bound to the agent's ServiceAccount).",
		},
	}},
}

package monitoring

import (
	"encoding/json"
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// Query is one PromQL query of a panel, with its legend. Queries may use
// the dashboard's variables $namespace (a regex, ".*" for all) and Grafana's
// $__rate_interval.
type Query struct{ Expr, Legend string }

// Panel is one panel of the dashboard.
type Panel struct {
	Title, Description string
	Unit               string
	Stat               bool   // a single value instead of a time series
	Width, Height      uint32 // in grid units (24 wide); default 12×8, a stat 6×4
	Queries            []Query
}

// Row is a titled row of panels.
type Row struct {
	Title  string
	Panels []Panel
}

// events selects kdrop_events_total of one type in the chosen namespaces.
func events(matchers string) string {
	return `kdrop_events_total{` + matchers + `, namespace=~"$namespace"}`
}

func rate(sel string) string { return `rate(` + sel + `[$__rate_interval])` }

// Rows are the dashboard's contents, top to bottom.
var Rows = []Row{
	{Title: "Drops", Panels: []Panel{
		{Title: "Drops by reason", Unit: "pps",
			Description: "Packets the kernel freed with a drop reason, per second, by reason (NO_SOCKET: nothing listening; NETFILTER_DROP: a firewall, kube-proxy or NetworkPolicy rule; NEIGH_FAILED: no neighbour answers).",
			Queries:     []Query{{`sum by (reason) (` + rate(events(`type="drop"`)) + `)`, "{{reason}}"}}},
		{Title: "Drops by workload", Unit: "pps",
			Description: "The same drops by the namespace and workload of the pod concerned (where the kernel dropped, else the destination); empty: not a pod (the node, or an address kdrop could not name).",
			Queries:     []Query{{`sum by (namespace, workload) (` + rate(events(`type="drop"`)) + `)`, "{{namespace}}/{{workload}}"}}},
		{Title: "Netfilter drops by kind of rule", Unit: "pps", Width: 24, Height: 8,
			Description: "NETFILTER_DROP by the kind of rule kdrop named: backend (nftables, which holds iptables-nft's rules; iptables-legacy), verdict (drop: the sender times out; reject: it gets an error at once; policy: a chain's drop policy) and Kubernetes meaning (no-endpoints, network-policy, …; none: a plain rule, which `kdrop report` names with its table, chain and comment). unknown: kdrop could not name the rule.",
			Queries:     []Query{{`sum by (backend, verdict, meaning) (` + rate(`kdrop_netfilter_drops_total{namespace=~"$namespace"}`) + `)`, "{{backend}} {{verdict}} {{meaning}}"}}},
	}},
	{Title: "Listen queue overflows", Panels: []Panel{
		{Title: "Listen queue overflows by workload", Unit: "cps",
			Description: "Connections a listener's full accept or SYN queue dropped, per second, by workload and queue (syn-queue+syncookie: answered with a syncookie instead, not dropped). Raise the listen backlog and net.core.somaxconn, or accept faster.",
			Queries:     []Query{{`sum by (namespace, workload, reason) (` + rate(events(`type="overflow"`)) + `)`, "{{namespace}}/{{workload}} {{reason}}"}}},
	}},
	{Title: "Unreachables", Panels: []Panel{
		{Title: "ICMP errors sent by kind", Unit: "pps",
			Description: "ICMP errors the kernel sent (past its rate limits), per second: host-unreachable is \"No route to host\", port-unreachable \"Connection refused\".",
			Queries:     []Query{{`sum by (reason) (` + rate(events(`type="unreach"`)) + `)`, "{{reason}}"}}},
		{Title: "No route to host, by destination workload", Unit: "pps",
			Description: "host-unreachable (addr-unreachable in IPv6) for addresses of a workload's pods: during a rollout, traffic to pods already deleted.",
			Queries:     []Query{{`sum by (namespace, workload) (` + rate(events(`type="unreach", reason=~"host-unreachable|addr-unreachable", workload!=""`)) + `)`, "{{namespace}}/{{workload}}"}}},
		{Title: "Connections refused by Services without endpoints", Unit: "pps",
			Description: "port-unreachable answers for a Service's address: kube-proxy rejects connections to a Service with no ready endpoints.",
			Queries:     []Query{{`sum by (namespace, workload) (` + rate(events(`type="unreach", reason="port-unreachable", workload=~"Service/.+"`)) + `)`, "{{namespace}}/{{workload}}"}}},
	}},
	{Title: "kdrop health", Panels: []Panel{
		{Title: "Hooks attached", Stat: true,
			Description: "Hooks attached on all nodes (each node attaches up to 6); a hook the kernel refused counts in the next panel.",
			Queries:     []Query{{`sum(kdrop_hook_attached)`, "attached"}}},
		{Title: "Hooks refused", Stat: true,
			Description: "Hooks a node's kernel refused: those events are not traced there (alert KdropHookNotAttached; the agent's log says why).",
			Queries:     []Query{{`count(kdrop_hook_attached == 0) or vector(0)`, "refused"}}},
		{Title: "Nodes with pod identity", Stat: true,
			Description: "Agents whose pod identity is synced with the API server, of all agents scraped; the others mark events unresolved.",
			Queries:     []Query{{`sum(kdrop_identity_healthy)`, "healthy"}, {`count(kdrop_identity_healthy)`, "agents"}}},
		{Title: "Stream clients", Stat: true,
			Description: "Clients connected to the agents' /events streams (kdrop tail, record --from tail).",
			Queries:     []Query{{`sum(kdrop_stream_clients)`, "clients"}}},
		{Title: "Lost lines, missed and coarsened occurrences", Unit: "ops",
			Description: "lost lines: the ring buffer was full, the lines are missing but counts stay exact; missed: occurrences kdrop never saw, counts are short by that much; coarsened: counted exactly under a coarser key because the flow table was full.",
			Queries: []Query{
				{`sum by (instance) (rate(kdrop_lost_lines_total[$__rate_interval]))`, "lost lines {{instance}}"},
				{`sum by (instance) (rate(kdrop_missed_total[$__rate_interval]))`, "missed {{instance}}"},
				{`sum by (instance) (rate(kdrop_coarsened_total[$__rate_interval]))`, "coarsened {{instance}}"},
			}},
		{Title: "Hooks by node and attach mode", Stat: true, Width: 12, Height: 8,
			Description: "Each hook of each node: 1 attached (in the mode named), 0 refused (mode none).",
			Queries:     []Query{{`kdrop_hook_attached`, "{{instance}} {{hook}} {{mode}}"}}},
	}},
}

// UID is the dashboard's uid: links to it stay stable across imports.
const UID = "kdrop-drops"

var prometheusDS = common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}

// Dashboard builds the Grafana dashboard from Rows with Grafana's typed SDK.
func Dashboard() ([]byte, error) {
	b := dashboard.NewDashboardBuilder("kdrop: kernel drops").
		Uid(UID).
		Description("Packets the kernel dropped, listen queue overflows and ICMP errors, by namespace and workload, from kdrop's agents; and kdrop's own health. Generated by deploy/monitoring (make monitoring).").
		Tags([]string{"kdrop", "network", "kubernetes"}).
		Refresh("1m").
		Time("now-3h", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").Label("Data source").Type("prometheus")).
		WithVariable(dashboard.NewQueryVariableBuilder("namespace").Label("Namespace").
			Datasource(prometheusDS).
			Query(dashboard.StringOrMap{String: cog.ToPtr("label_values(kdrop_events_total, namespace)")}).
			Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
			Multi(true).IncludeAll(true).AllValue(".*").
			Sort(dashboard.VariableSortAlphabeticalAsc))
	id := uint32(0)
	for _, r := range Rows {
		id++
		b.WithRow(dashboard.NewRowBuilder(r.Title).Id(id))
		for _, p := range r.Panels {
			id++
			b.WithPanel(panel(p, id))
		}
	}
	d, err := b.Build()
	if err != nil {
		return nil, fmt.Errorf("building the dashboard: %w", err)
	}
	out, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

func panel(p Panel, id uint32) cog.Builder[dashboard.Panel] {
	targets := make([]cog.Builder[variants.Dataquery], 0, len(p.Queries))
	for i, q := range p.Queries {
		qb := prometheus.NewDataqueryBuilder().Expr(q.Expr).LegendFormat(q.Legend).RefId(string(rune('A' + i)))
		if p.Stat {
			qb.Instant()
		}
		targets = append(targets, qb)
	}
	w, h := p.Width, p.Height
	if w == 0 {
		w, h = 12, 8
		if p.Stat {
			w, h = 6, 4
		}
	}
	if p.Stat {
		s := stat.NewPanelBuilder().Id(id).Title(p.Title).Description(p.Description).Datasource(prometheusDS).
			Height(h).Span(w).Targets(targets).
			ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"}))
		if p.Unit != "" {
			s.Unit(p.Unit)
		}
		return s
	}
	return timeseries.NewPanelBuilder().Id(id).Title(p.Title).Description(p.Description).Datasource(prometheusDS).
		Height(h).Span(w).Targets(targets).Unit(p.Unit).Min(0).
		Legend(common.NewVizLegendOptionsBuilder().DisplayMode(common.LegendDisplayModeTable).
			Placement(common.LegendPlacementRight).ShowLegend(true).Calcs([]string{"max", "lastNotNull"}))
}

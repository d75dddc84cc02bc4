package monitoring

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/prometheus/prometheus/promql/parser"
)

// DashboardQueries is every PromQL query of a dashboard JSON: each
// panel target's "expr", wherever it is nested.
func DashboardQueries(dashboardJSON []byte) ([]string, error) {
	var v any
	if err := json.Unmarshal(dashboardJSON, &v); err != nil {
		return nil, err
	}
	var out []string
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if e, ok := v["expr"].(string); ok {
				out = append(out, e)
			}
			for _, c := range v {
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(v)
	return out, nil
}

// Instant is q as Grafana sends it with the dashboard's defaults: every
// namespace, and a rate interval of rateInterval.
func Instant(q, rateInterval string) string {
	return strings.NewReplacer("$__rate_interval", rateInterval, "$namespace", ".*").Replace(q)
}

// Selectors parses expr with Prometheus's own PromQL parser and returns its
// vector selectors (those inside range selectors included).
func Selectors(expr string) ([]*parser.VectorSelector, error) {
	e, err := parser.ParseExpr(expr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", expr, err)
	}
	var out []*parser.VectorSelector
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			out = append(out, vs)
		}
		return nil
	})
	return out, nil
}

// Grouping is every label name expr aggregates by (sum by (...)).
func Grouping(expr string) ([]string, error) {
	e, err := parser.ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var out []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if a, ok := n.(*parser.AggregateExpr); ok && !a.Without {
			out = append(out, a.Grouping...)
		}
		return nil
	})
	return out, nil
}

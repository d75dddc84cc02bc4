package report

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"
)

// num writes a count with thousands separators: 12,345.
func num[T ~int | ~int64 | ~uint64 | ~uint32](v T) string {
	s := fmt.Sprint(v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// plural writes "1 packet", "3 packets".
func plural[T ~int | ~uint64](n T, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return num(n) + " " + many
}

// dur writes a duration the way a person says it: 850 ms, 1.2 s, 4 min 5 s.
func dur(d time.Duration) string {
	switch {
	case d < 0:
		return "-" + dur(-d)
	case d < time.Second:
		return fmt.Sprintf("%d ms", d.Milliseconds())
	case d < 10*time.Second:
		return strings.Replace(fmt.Sprintf("%.1f s", d.Seconds()), ".0 s", " s", 1)
	case d < time.Minute:
		return fmt.Sprintf("%d s", int(d.Round(time.Second).Seconds()))
	case d < time.Hour:
		d = d.Round(time.Second)
		m, s := int(d/time.Minute), int(d%time.Minute/time.Second)
		if s == 0 {
			return fmt.Sprintf("%d min", m)
		}
		return fmt.Sprintf("%d min %d s", m, s)
	default:
		d = d.Round(time.Minute)
		h, m := int(d/time.Hour), int(d%time.Hour/time.Minute)
		if m == 0 {
			return fmt.Sprintf("%d h", h)
		}
		return fmt.Sprintf("%d h %d min", h, m)
	}
}

// clock writes a time of day in UTC, with milliseconds only when the window
// is short enough for them to matter.
func clock(t time.Time) string { return t.UTC().Format("15:04:05") }

// stamp writes a full UTC time.
func stamp(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") }

// span writes when something happened: "at 11:51:29" or "11:51:29–11:52:03".
func span(first, last time.Time) string {
	if last.Sub(first) < time.Second {
		return "at " + clock(first) + " UTC"
	}
	return "between " + clock(first) + " and " + clock(last) + " UTC"
}

func pct(part, total uint64) string {
	if total == 0 {
		return "–"
	}
	p := float64(part) * 100 / float64(total)
	if p < 1 && part > 0 {
		return "<1%"
	}
	return fmt.Sprintf("%.0f%%", p)
}

// addr writes an address with its port: 10.0.0.1:80, [fd00::1]:80.
func addr(ip netip.Addr, port uint16) string {
	if !ip.IsValid() {
		if port != 0 {
			return fmt.Sprintf("port %d", port)
		}
		return "unknown address"
	}
	if port == 0 {
		return ip.String()
	}
	return netip.AddrPortFrom(ip, port).String()
}

// known says an identity names something.
func known(k *K8s) bool { return k != nil && !k.Unresolved && k.Name != "" }

// nsName writes namespace/name, or name alone for cluster-scoped things.
func nsName(ns, name string) string {
	if ns == "" {
		return name
	}
	return ns + "/" + name
}

// workload names the workload an identity belongs to, "Deployment web/api",
// or the pod, service or node itself when it has no workload. Unknown
// identities are named by address.
func workload(k *K8s, ip netip.Addr) string {
	if known(k) && k.Kind != "service" && k.Kind != "node" && k.WorkloadName != "" {
		kind := k.WorkloadKind
		if kind == "" {
			kind = "workload"
		}
		return kind + " " + nsName(k.Namespace, k.WorkloadName)
	}
	return pod(k, ip)
}

// pod names the pod (or service, node) itself: "pod web/api-5c8".
func pod(k *K8s, ip netip.Addr) string {
	if !known(k) {
		return addr(ip, 0)
	}
	switch k.Kind {
	case "service":
		return "Service " + nsName(k.Namespace, k.Name)
	case "node":
		return "node " + k.Name
	}
	s := "pod " + nsName(k.Namespace, k.Name)
	if k.HostNetwork {
		s += " (host network)"
	}
	return s
}

// shortPod is the pod's bare name, for lists inside a sentence that already
// names the workload.
func shortPod(k *K8s, ip netip.Addr) string {
	if !known(k) {
		return addr(ip, 0)
	}
	return k.Name
}

// counter adds up occurrences by name and lists the biggest.
type counter map[string]uint64

func (c counter) add(k string, n uint64) { c[k] += n }

// few is a counter that needs no map while it holds one key: the rows of a
// big report's tables (one per destination of a port scan, 20,000 flows)
// mostly have one pod and one kind, and two maps a row were most of the
// memory a report took.
type few struct {
	key  string
	n    uint64
	set  bool
	more counter // all keys, once there are two
}

func (f *few) add(k string, n uint64) {
	switch {
	case f.more != nil:
		f.more.add(k, n)
	case !f.set || f.key == k:
		f.key, f.set = k, true
		f.n += n
	default:
		f.more = counter{f.key: f.n}
		f.more.add(k, n)
	}
}

// len is the number of distinct keys.
func (f *few) len() int {
	if f.more != nil {
		return len(f.more)
	}
	if f.set {
		return 1
	}
	return 0
}

func (f *few) counter() counter {
	if f.more != nil {
		return f.more
	}
	if f.set {
		return counter{f.key: f.n}
	}
	return counter{}
}

type named struct {
	Name  string
	Count uint64
}

func (c counter) top(n int) []named {
	out := make([]named, 0, len(c))
	for k, v := range c {
		out = append(out, named{k, v})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Name < out[j].Name
	})
	if n > 0 && len(out) > n {
		out = out[:n]
	}
	return out
}

// list writes the biggest entries as "a (30), b (12) and 3 more".
func (c counter) list(n int) string {
	all := c.top(0)
	var parts []string
	for i, e := range all {
		if i == n {
			parts = append(parts, fmt.Sprintf("%d more", len(all)-n))
			break
		}
		parts = append(parts, fmt.Sprintf("%s (%s)", e.Name, num(e.Count)))
	}
	return join(parts)
}

// names writes the biggest entries by name only: "a, b and 3 more".
func (c counter) names(n int) string {
	all := c.top(0)
	var parts []string
	for i, e := range all {
		if i == n {
			parts = append(parts, fmt.Sprintf("%d more", len(all)-n))
			break
		}
		parts = append(parts, e.Name)
	}
	return join(parts)
}

func join(parts []string) string {
	switch len(parts) {
	case 0:
		return ""
	case 1:
		return parts[0]
	}
	return strings.Join(parts[:len(parts)-1], ", ") + " and " + parts[len(parts)-1]
}

// minmax tracks a range of durations.
type minmax struct {
	lo, hi time.Duration
	set    bool
}

func (m *minmax) add(d time.Duration) {
	if !m.set || d < m.lo {
		m.lo = d
	}
	if !m.set || d > m.hi {
		m.hi = d
	}
	m.set = true
}

func (m minmax) String() string {
	if !m.set {
		return ""
	}
	if dur(m.lo) == dur(m.hi) {
		return dur(m.lo)
	}
	return dur(m.lo) + " to " + dur(m.hi)
}

package main

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kdrop/kdrop/cmd/kdrop/report"
	"github.com/kdrop/kdrop/tracer"
)

func recordCmd() *cobra.Command {
	var f watchFlags
	var agents streamFlags
	var out, from string
	cmd := &cobra.Command{
		Use:   "record -o FILE",
		Short: "Record a window of events to a file for an incident (then: kdrop report FILE)",
		Long: `Record writes the events, with a header (cluster, nodes, kernels, kdrop
version, filters) and a trailer (event and loss counts), to a gzip-compressed
file of JSON lines. Stop it with --duration or Ctrl-C; "kdrop report FILE"
turns the file into an HTML page and a Markdown summary with hints.

  --from watch  (default) traces this machine, like "kdrop watch" (needs root)
  --from tail   records the whole cluster through the agents, like "kdrop tail";
                agents that restart or disappear are recorded as gaps

With --from tail, only the stream filters apply (--type, --reason, --cidr,
--port, --proto, --namespace, --pod); the agents' own settings decide the
rest.`,
		Example: `  sudo kdrop record -o incident.jsonl.gz --duration 5m
  kdrop record --from tail -o incident.jsonl.gz -n shop      # every node, until Ctrl-C
  kdrop report incident.jsonl.gz --html incident.html --markdown incident.md`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("-o FILE is required: where to write the recording")
			}
			switch from {
			case "watch":
				return recordWatch(cmd.Context(), f, out)
			case "tail":
				for _, name := range []string{"netns", "rate-limit", "attach", "include-benign", "selector", "identity", "node", "deleted-window"} {
					if fl := cmd.Flags().Lookup(name); fl != nil && fl.Changed {
						return fmt.Errorf("--%s applies to --from watch only: with --from tail the agents' own settings decide it", name)
					}
				}
				return recordTail(cmd.Context(), f, agents, out)
			}
			return fmt.Errorf("--from %q: use watch (this machine) or tail (every agent in the cluster)", from)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&out, "output", "o", "", "file to write (gzip JSON lines); required")
	fl.StringVar(&from, "from", "watch", "where events come from: watch (trace this machine) or tail (the cluster's agents)")
	fl.DurationVarP(&f.duration, "duration", "d", 0, "stop after this long; 0 records until interrupted")
	fl.StringVar(&f.readyFile, "ready-file", "", "create this file once recording has started, with --from tail once every agent streams (for scripts)")
	f.register(fl)
	agents.register(fl)
	return cmd
}

// recordHeader is the first line of a recording (see cmd/kdrop/report).
type recordHeader struct {
	Record    int            `json:"kdrop_record"`
	Started   time.Time      `json:"started"`
	Version   string         `json:"version"`
	From      string         `json:"from"` // watch or tail
	Cluster   string         `json:"cluster,omitempty"`
	Nodes     []report.Node  `json:"nodes"`
	Filters   report.Filters `json:"filters"`
	RateLimit uint32         `json:"rate_limit"`
}

// recording writes one file: header, lines, trailer. It writes to a
// temporary name, renamed when complete, so a file with the final name
// always has its trailer.
type recording struct {
	out                  string
	tmp                  *os.File
	gz                   *gzip.Writer
	w                    *bufio.Writer
	events, lost, missed uint64
}

func createRecording(out string, f watchFlags, hdr recordHeader) (*recording, error) {
	tmp, err := os.CreateTemp(filepath.Dir(out), ".kdrop-record-*")
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", out, err)
	}
	r := &recording{out: out, tmp: tmp, gz: gzip.NewWriter(tmp)}
	r.w = bufio.NewWriterSize(r.gz, 64<<10)
	hdr.Record, hdr.Started, hdr.Version = 1, time.Now().UTC(), version
	hdr.Filters = report.Filters{Types: f.types, Reasons: f.reasons, CIDRs: f.cidrs, Port: f.port, Namespace: f.id.namespace, Pod: f.id.pod, Selector: f.id.selector}
	if ino, err := parseNetnsIfSet(f.netns); err == nil {
		hdr.Filters.Netns = uint64(ino)
	}
	b, _ := json.Marshal(hdr)
	r.w.Write(append(b, '\n'))
	return r, nil
}

func (r *recording) line(b []byte) { r.w.Write(b); r.w.WriteByte('\n') }

// Loss notices, in /events streams and recordings (cmd/kdrop/report reads
// them). Two types, as they mean different things:
//
//	{"time":T,"type":"lost","node":N,"lost":L}
//	    L events found the ring buffer full: their lines are missing, but
//	    their occurrences arrive in later summary lines, so counts stay exact.
//	{"time":T,"type":"missed","node":N,"missed":M,"cause":C}
//	    M occurrences are in no line at all: counts are short by M. C is
//	    "kernel" (the kernel skipped kdrop's program: it was already running
//	    on that CPU; counted before kdrop's filters, so short by up to M) or
//	    "stream" (this /events client fell behind and the agent dropped
//	    lines for it).
//
// "missed" is a type of its own rather than a field of "lost" so that a
// kdrop from before it shows or reports it as a type it does not know,
// instead of reading it as lost lines with exact counts. A recording's
// trailer carries both totals: {"kdrop_record_end":1,...,"lost":L,"missed":M}.
func lostJSON(at time.Time, node string, lines uint64) []byte {
	return fmt.Appendf(nil, `{"time":%q,"type":"lost","node":%q,"lost":%d}`, at.Format(time.RFC3339Nano), node, lines)
}

func missedJSON(at time.Time, node string, n uint64, cause string) []byte {
	return fmt.Appendf(nil, `{"time":%q,"type":"missed","node":%q,"missed":%d,"cause":%q}`, at.Format(time.RFC3339Nano), node, n, cause)
}

// lossNotices records what the tracer's loss counters grew by.
func (r *recording) lossNotices(node string, d tracer.Stats) {
	now := time.Now().UTC()
	if d.Missed > 0 {
		r.missed += d.Missed
		r.line(missedJSON(now, node, d.Missed, report.MissedByKernel))
	}
	if n := d.LostLinesTotal(); n > 0 {
		r.lost += n
		r.line(lostJSON(now, node, n))
	}
}

func (r *recording) discard() {
	r.tmp.Close()
	os.Remove(r.tmp.Name())
}

// finish writes the trailer and puts the file in place.
func (r *recording) finish(log *zap.Logger) error {
	defer os.Remove(r.tmp.Name()) // a no-op once renamed
	fmt.Fprintf(r.w, `{"kdrop_record_end":1,"ended":%q,"events":%d,"lost":%d,"missed":%d}`+"\n", time.Now().UTC().Format(time.RFC3339Nano), r.events, r.lost, r.missed)
	err := r.w.Flush()
	if err == nil {
		err = r.gz.Close()
	}
	if cerr := r.tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(r.tmp.Name(), r.out)
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", r.out, err)
	}
	log.Info("recorded", zap.String("file", r.out), zap.Uint64("lines", r.events), zap.Uint64("lost_lines", r.lost), zap.Uint64("missed", r.missed))
	if r.missed > 0 {
		log.Warn("the recording's counts are short: occurrences were missed (kdrop report says why)", zap.Uint64("missed", r.missed))
	}
	return nil
}

// recordWatch records what this machine's kernel does.
func recordWatch(parent context.Context, f watchFlags, out string) error {
	f.output = "json"
	log := newLogger(f.verbose)
	defer log.Sync()
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	p, err := newPipeline(ctx, f, log)
	if err != nil {
		return err
	}
	defer p.close()
	if err := p.ready(ctx, ""); err != nil {
		return err
	}
	var u unix.Utsname
	_ = unix.Uname(&u)
	node := p.node
	if node == "" {
		node, _ = os.Hostname()
	}
	r, err := createRecording(out, f, recordHeader{From: "watch", RateLimit: f.rateLimit,
		Nodes: []report.Node{{Name: node, Kernel: unix.ByteSliceToString(u.Release[:])}}})
	if err != nil {
		return err
	}
	if err := writeReadyFile(f.readyFile); err != nil {
		r.discard()
		return err
	}
	log.Info("recording", zap.String("file", out))
	// counted from now: loading and syncing are not part of the window
	ctx, cancel := withDuration(ctx, f.duration)
	defer cancel()
	lossNotices := func() { r.lossNotices(node, p.newLoss()) }
	p.every(ctx, time.Second, lossNotices)
	var buf []byte
	err = p.run(ctx, func(rec *record) {
		buf = rec.appendJSON(buf[:0])
		r.line(buf)
		r.events++
	})
	if err != nil {
		r.discard()
		return err
	}
	p.t.Lock()
	defer p.t.Unlock()
	lossNotices()
	return r.finish(log)
}

// recordTail records the cluster through its agents.
func recordTail(parent context.Context, f watchFlags, agents streamFlags, out string) error {
	f.output = "json"
	log := newLogger(f.verbose)
	defer log.Sync()
	t, err := newTailer(f, agents)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := withDuration(ctx, f.duration)
	defer cancel()
	hdr := recordHeader{From: "tail", Cluster: clusterName(f.id)}
	if hdr.Nodes, err = agentNodes(ctx, t); err != nil {
		return err
	}
	r, err := createRecording(out, f, hdr)
	if err != nil {
		return err
	}
	log.Info("recording the cluster's agents", zap.String("file", out), zap.Int("nodes", len(hdr.Nodes)))
	// Ready once every agent found at the start streams, so a script can
	// start the incident knowing nothing is missed.
	pending := map[string]bool{}
	for _, n := range hdr.Nodes {
		pending[n.Name] = true
	}
	var readyErr error
	ready := func() {
		readyErr = writeReadyFile(f.readyFile)
		if readyErr != nil {
			cancel()
		}
	}
	if len(pending) == 0 {
		ready()
	}
	t.onConnect = func(node string) {
		if len(pending) > 0 {
			delete(pending, node)
			if len(pending) == 0 {
				ready()
			}
		}
	}
	t.run(ctx, func(lines []tailLine) {
		for _, l := range lines {
			switch l.typ {
			case "lost": // counted as the agents report it
				r.lost += l.lost
			case "missed":
				r.missed += l.miss
			case "drop", "overflow", "unreach":
				r.events++
			}
			r.line(l.line)
		}
	})
	// A node still unseen at the end is a gap up to now.
	now := time.Now().UTC()
	for node, since := range t.openGaps() {
		r.line(noticeJSON(now, node, "no agent stream from node "+node+" since "+since.Format(time.RFC3339)+" until the recording ended", since, now))
	}
	t.mu.Lock() // onConnect sets readyErr under it, and streams may still connect
	err = readyErr
	t.mu.Unlock()
	if err != nil {
		r.discard()
		return err
	}
	return r.finish(log)
}

func writeReadyFile(path string) error {
	if path == "" {
		return nil
	}
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		return fmt.Errorf("--ready-file: %w", err)
	}
	return nil
}

// clusterName is the kubeconfig's name for the cluster, "" if unknown.
func clusterName(id identityFlags) string {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = id.kubeconfig
	raw, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: id.context}).RawConfig()
	if err != nil {
		return ""
	}
	ctx := id.context
	if ctx == "" {
		ctx = raw.CurrentContext
	}
	if c, ok := raw.Contexts[ctx]; ok {
		return c.Cluster
	}
	return ""
}

// agentNodes lists the nodes that run an agent now, with their kernels as
// the nodes report them.
func agentNodes(ctx context.Context, t *tailer) ([]report.Node, error) {
	pods, err := t.cs.CoreV1().Pods(t.agents.namespace).List(ctx, metav1.ListOptions{LabelSelector: t.agents.selector})
	if err != nil {
		return nil, fmt.Errorf("listing the agents in namespace %s: %w", t.agents.namespace, err)
	}
	var nodes []report.Node
	seen := map[string]bool{}
	for _, p := range pods.Items {
		n := p.Spec.NodeName
		if n == "" || seen[n] {
			continue
		}
		seen[n] = true
		kernel := ""
		if node, err := t.cs.CoreV1().Nodes().Get(ctx, n, metav1.GetOptions{}); err == nil {
			kernel = node.Status.NodeInfo.KernelVersion
		}
		nodes = append(nodes, report.Node{Name: n, Kernel: kernel})
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
	return nodes, nil
}

func parseNetnsIfSet(s string) (uint32, error) {
	if s == "" {
		return 0, nil
	}
	return parseNetns(s)
}

func reportCmd() *cobra.Command {
	var html, md string
	cmd := &cobra.Command{
		Use:   "report FILE",
		Short: "Turn a recording into an HTML page and a Markdown summary, with hints on what to fix",
		Example: `  kdrop report incident.jsonl.gz                       # Markdown summary on stdout
  kdrop report incident.jsonl.gz --html incident.html --markdown incident.md`,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			rec, err := report.Read(f)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			write := func(path string, fn func(*os.File) error) error {
				if path == "" {
					return nil
				}
				if path == "-" {
					return fn(os.Stdout)
				}
				o, err := os.Create(path)
				if err != nil {
					return err
				}
				if err := fn(o); err != nil {
					o.Close()
					return err
				}
				return o.Close()
			}
			if html == "" && md == "" {
				md = "-"
			}
			if err := write(html, func(o *os.File) error { return report.WriteHTML(o, rec) }); err != nil {
				return fmt.Errorf("--html: %w", err)
			}
			if err := write(md, func(o *os.File) error { return report.WriteMarkdown(o, rec) }); err != nil {
				return fmt.Errorf("--markdown: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&html, "html", "", "write a self-contained HTML page here (- for stdout)")
	cmd.Flags().StringVar(&md, "markdown", "", "write a Markdown summary here (- for stdout; the default when neither is given)")
	return cmd
}

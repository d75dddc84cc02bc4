package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich"
	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/cmd/kdrop/tail"
)

type tailFlags struct {
	filter   enrich.Filter
	id       identityFlags
	agents   tail.Agents
	output   string
	duration time.Duration
	count    uint64
}

func tailCmd() *cobra.Command {
	var f tailFlags
	cmd := &cobra.Command{
		Use:   "tail",
		Short: "Follow the events of every kdrop agent in the cluster, merged in time order",
		Long: `Tail finds the kdrop agents (the DaemonSet's pods), connects to each one's
/events stream through the API server's pod proxy, and prints one stream
for the whole cluster in time order, with the node and pod identity of
every event. It keeps going when an agent restarts or a node joins or
leaves, and says what it could not see meanwhile.

Your own credentials never leave the API server: for each node, tail asks
the API server for a short-lived stream token (service account
--stream-account, audience kdrop.dev/stream, bound to that node; the API
server itself refuses it) and shows the agent only that.

You need, in the agents' namespace: "list,watch" on pods, "get" on
pods/proxy and "create" on serviceaccounts/token for kdrop-stream. ClusterRole
kdrop-viewer has them; bind it there:
  kubectl create rolebinding kdrop-viewer-$USER -n kdrop --clusterrole=kdrop-viewer --user=<you>
tail checks this first and says what is missing.

Installed as kubectl-kdrop on your PATH (make install does it), this is
"kubectl kdrop tail".`,
		Example: `  kubectl kdrop tail
  kdrop tail -o json --type overflow
  kdrop tail -n web --reason NO_SOCKET,NETFILTER_DROP
  kdrop record --from tail -o incident.jsonl.gz --duration 10m   # keep it for the ticket`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runTail(cmd.Context(), &f) },
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.output, "output", "o", "table", "output format: table or json")
	fl.DurationVarP(&f.duration, "duration", "d", 0, "stop after this long; 0 runs until interrupted")
	fl.Uint64VarP(&f.count, "count", "c", 0, "stop after this many events; 0 for no limit")
	registerFilter(fl, &f.filter, false)
	f.id.registerKubeconfig(fl, "kubeconfig file (default $KUBECONFIG, else ~/.kube/config)", "kubeconfig context")
	registerAgents(fl, &f.agents)
	return cmd
}

func runTail(parent context.Context, f *tailFlags) error {
	if f.output != "table" && f.output != "json" {
		return fmt.Errorf("--output %q: use table or json", f.output)
	}
	t, err := newTailer(parent, f.filter, &f.id, f.agents)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := withDuration(ctx, f.duration)
	defer cancel()

	out := bufio.NewWriterSize(os.Stdout, 64<<10)
	defer out.Flush()
	if f.output == "table" {
		fmt.Fprintln(out, line.ClusterTableHeader)
	}
	var printed uint64
	var d line.Decoder
	var l line.Line
	t.Run(ctx, func(lines []tail.Line) {
		for _, tl := range lines {
			if f.count > 0 && printed >= f.count {
				break
			}
			if f.output == "json" {
				out.Write(append(tl.Raw, '\n'))
			} else {
				fmt.Fprintln(out, clusterRow(&d, &l, tl.Raw))
			}
			printed++
		}
		out.Flush()
		if f.count > 0 && printed >= f.count {
			cancel()
		}
	})
	if !t.Reached() {
		return errNoAgent(f.agents, "above")
	}
	return nil
}

// errNoAgent says that no agent's stream ever connected, and where to look:
// the notices, which went to where (the terminal, or a recording).
func errNoAgent(a tail.Agents, where string) error {
	return fmt.Errorf("no kdrop agent could be reached (pods in namespace %s with labels %s, port %d): the notices %s say why; check that kdrop is deployed there and that the agents' --stream-listen port is --agent-port",
		a.Namespace, a.Selector, a.Port, where)
}

// clusterRow renders a line of an agent's stream as a table row; a line
// this kdrop cannot read is shown as it is. Either is made safe for a
// terminal (line.Printable): an agent's words are not trusted with it.
func clusterRow(d *line.Decoder, l *line.Line, raw []byte) string {
	row := string(raw)
	if d.Decode(raw, l) == nil {
		switch l.Kind {
		case line.KindEvent:
			row = l.Event.ClusterRow()
		case line.KindNotice:
			row = l.Notice.ClusterRow()
		}
	}
	return line.Printable(row)
}

// newTailer checks the filters, and asks the API server whether the caller
// may tail; no agent is contacted yet.
func newTailer(ctx context.Context, filter enrich.Filter, id *identityFlags, agents tail.Agents) (*tail.Tailer, error) {
	if _, err := filter.Trace(); err != nil { // here, rather than once per agent
		return nil, err
	}
	cfg, err := id.restConfig()
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	t := tail.New(cs, agents, filter.Query())
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := t.CheckAccess(ctx); err != nil {
		return nil, err
	}
	return t, nil
}

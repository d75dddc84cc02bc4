package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/client-go/rest"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/stream"
	"github.com/kdrop/kdrop/cmd/kdrop/tail"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

// traceFlags are what every command that traces this machine shares
// (watch, record, agent): the filter, the rate limit, attach modes and
// pod identity.
type traceFlags struct {
	filter    enrich.Filter
	rateLimit uint32
	attach    string
	verbose   bool
	rules     bool
	id        identityFlags
}

func (f *traceFlags) register(fl *pflag.FlagSet) {
	registerFilter(fl, &f.filter, true)
	fl.Uint32Var(&f.rateLimit, "rate-limit", 100, "events per second per flow before the rest are counted into that flow's summary line, which comes every second (0: no limit, every occurrence a line)")
	fl.StringVar(&f.attach, "attach", "auto", "attach modes to try, in order: auto, or a list of fentry,kprobe,tp_btf,raw_tp,sock_diag")
	fl.BoolVarP(&f.verbose, "verbose", "v", false, "log debug details to stderr")
	fl.BoolVar(&f.rules, "rules", true, "name the netfilter rule behind each NETFILTER_DROP drop (reads the rules of the drop's network namespace, at most every 200 ms: nftables over netlink, which holds iptables-nft's rules too, and iptables-legacy's ip_tables/ip6_tables where the kernel has them, named by chain and position; needs CAP_NET_ADMIN and, for other namespaces, CAP_SYS_ADMIN; kdrop check says whether they can be read); the drop's line comes out up to 2 s later. kube-proxy's rules (iptables and nftables modes) also say what they mean, as rule.k8s: no-endpoints, no-local-endpoints, invalid-conntrack, martian-localhost, source-range, with the Service from the rule's comment or kube-proxy's map element; with pod identity, NetworkPolicies that isolate either end and allow nothing like the packet are named too (rule.k8s meaning network-policy), evaluated from the API server whatever enforces them")
	f.id.register(fl)
}

// registerFilter adds the filter's flags: with all, every one; without,
// those an agent's stream applies for its caller (tail, record --from
// tail), the agent's own settings deciding the rest.
func registerFilter(fl *pflag.FlagSet, f *enrich.Filter, all bool) {
	fl.StringSliceVarP(&f.Types, "type", "t", nil, "event types to show: drop, overflow, unreach (default all)")
	fl.StringSliceVarP(&f.Reasons, "reason", "r", nil, "drop reasons to show, e.g. NO_SOCKET,NETFILTER_DROP (see kdrop reasons)")
	fl.StringSliceVar(&f.CIDRs, "cidr", nil, "only packets with either end in this address or CIDR (repeatable); an overflow read through sock_diag (no peer known) of a listener bound to 0.0.0.0 or ::, or not told apart, passes any")
	fl.Uint16VarP(&f.Port, "port", "p", 0, "only packets with either port equal to this")
	fl.StringVar(&f.Proto, "proto", "", "only this IP protocol: tcp, udp, icmp, icmpv6, sctp or a number")
	fl.StringVarP(&f.Namespace, "namespace", "n", "", "only events with a pod of this namespace at either end (or where the kernel acted)")
	fl.StringVar(&f.Pod, "pod", "", "only events with this pod (name, or namespace/name) at either end")
	if !all {
		return
	}
	fl.BoolVar(&f.IncludeBenign, "include-benign", false, "also show drops that are not faults: reasons "+strings.Join(tracer.BenignReasons, ", ")+"; NOT_SPECIFIED at "+strings.Join(tracer.BenignPlaces, ", ")+" (other NOT_SPECIFIED drops are always shown: sites without a reason yet, e.g. ip_error for blackhole routes)")
	fl.StringVar(&f.Netns, "netns", "", "only this network namespace: an inode number or a path such as /run/netns/NAME or /proc/PID/ns/net")
	fl.StringVarP(&f.Selector, "selector", "l", "", "only events with a pod matching this label selector at either end (e.g. app=api)")
}

// traceOnly lists the flags of traceFlags that an agent's stream does not
// take (record --from tail refuses them).
func traceOnly() []string {
	var all traceFlags
	full, stream := pflag.NewFlagSet("", pflag.ContinueOnError), pflag.NewFlagSet("", pflag.ContinueOnError)
	all.register(full)
	registerFilter(stream, &enrich.Filter{}, false)
	all.id.registerKubeconfig(stream, "", "")
	var out []string
	full.VisitAll(func(f *pflag.Flag) {
		if stream.Lookup(f.Name) == nil && f.Name != "verbose" {
			out = append(out, f.Name)
		}
	})
	return out
}

// options turns the flags into tracer options, rejecting bad values with
// a message that says what is accepted.
func (f *traceFlags) options(log *zap.Logger) (tracer.Options, error) {
	o := tracer.Options{RateLimit: f.rateLimit, Log: log}
	var err error
	if o.Filter, err = f.filter.Trace(); err != nil {
		return o, err
	}
	if o.Modes, err = tracer.ParseModes(f.attach); err != nil {
		return o, fmt.Errorf("--attach: %w", err)
	}
	return o, nil
}

// newPipeline checks the flags, starts identity (never blocking on the API
// server) and loads the tracer.
func newPipeline(ctx context.Context, f *traceFlags, log *zap.Logger) (*enrich.Pipeline, error) {
	opts, err := f.options(log)
	if err != nil {
		return nil, err
	}
	res, err := f.id.resolver(f.filter.HasPods(), log)
	if err != nil {
		return nil, err
	}
	var cfg *rest.Config
	if f.filter.Selector != "" {
		if cfg, err = f.id.restConfig(); err != nil {
			return nil, err
		}
	}
	match, err := f.filter.PodMatcher(cfg, f.id.deletedWindow)
	if err != nil {
		return nil, err
	}
	p, err := enrich.New(ctx, opts, res, match, log)
	if p != nil && !f.rules {
		p.Rules = nil
	}
	return p, err
}

// identityFlags select the cluster whose pods name the addresses kdrop
// sees.
type identityFlags struct {
	mode          string
	kubeconfig    string
	context       string
	node          string
	deletedWindow time.Duration
	rest          *rest.Config // set by the agent, which also needs it for authorization
}

func (f *identityFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.mode, "identity", "auto", "resolve addresses to pods: auto (when a kubeconfig or in-cluster config exists), on, off")
	f.registerKubeconfig(fl, "kubeconfig file (default $KUBECONFIG, else ~/.kube/config, else in-cluster)", "kubeconfig context (default: its current context)")
	fl.StringVar(&f.node, "node", "", "this node's name (default $NODE_NAME, else the hostname)")
	fl.DurationVar(&f.deletedWindow, "deleted-window", 5*time.Minute, "how long a deleted pod's IP still resolves to it (and it still matches --selector)")
}

func (f *identityFlags) registerKubeconfig(fl *pflag.FlagSet, kubeconfigHelp, contextHelp string) {
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", kubeconfigHelp)
	fl.StringVar(&f.context, "context", "", contextHelp)
}

// clusterConfigured says whether "auto" finds a cluster to ask.
func (f *identityFlags) clusterConfigured() bool {
	if f.kubeconfig != "" || f.context != "" || os.Getenv("KUBECONFIG") != "" || os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		return true
	}
	home, _ := os.UserHomeDir()
	_, err := os.Stat(filepath.Join(home, ".kube", "config"))
	return err == nil
}

// resolver starts identity resolution, or returns nil when it is off.
// podFilters says --namespace, --pod or --selector were given: they need it.
func (f *identityFlags) resolver(podFilters bool, log *zap.Logger) (*k8s.Resolver, error) {
	switch f.mode {
	case "off":
		if podFilters {
			return nil, fmt.Errorf("--namespace, --pod and --selector need pod identity: drop --identity off")
		}
		return nil, nil
	case "auto":
		if !f.clusterConfigured() {
			if podFilters {
				return nil, fmt.Errorf("--namespace, --pod and --selector need a cluster: no kubeconfig found (set --kubeconfig or $KUBECONFIG)")
			}
			return nil, nil
		}
	case "on":
	default:
		return nil, fmt.Errorf("--identity %q: use auto, on or off", f.mode)
	}
	return k8s.New(k8s.Config{Kubeconfig: f.kubeconfig, Context: f.context, Node: f.node, DeletedWindow: f.deletedWindow, REST: f.rest}, log)
}

// restConfig is the cluster config identity, authorization and tail share.
func (f *identityFlags) restConfig() (*rest.Config, error) {
	if f.rest != nil {
		return f.rest, nil
	}
	return k8s.LoadConfig(f.kubeconfig, f.context)
}

// registerAgents adds the flags that say where the agents are and how to
// reach them (tail and record --from tail).
func registerAgents(fl *pflag.FlagSet, a *tail.Agents) {
	fl.StringVar(&a.Namespace, "agents-namespace", "kdrop", "namespace of the kdrop agents")
	fl.StringVar(&a.Selector, "agents-selector", "app.kubernetes.io/name=kdrop", "label selector of the agent pods")
	fl.IntVar(&a.Port, "agent-port", 9966, "the agents' --stream-listen port")
	fl.StringVar(&a.Account, "stream-account", stream.DefaultAccount, "service account in --agents-namespace whose stream tokens the agents take (their --stream-account)")
	fl.DurationVar(&a.Delay, "merge-delay", time.Second, "how long to hold events to put the nodes' streams in time order")
	fl.DurationVar(&a.IdleTimeout, "idle-timeout", tail.DefaultIdleTimeout, "how long an agent's stream may stay silent (no event, no heartbeat) before it counts as lost and its node as a gap")
}

func newLogger(verbose bool) *zap.Logger {
	cfg := zap.NewDevelopmentConfig()
	cfg.Level = zap.NewAtomicLevelAt(zapcore.InfoLevel)
	if verbose {
		cfg.Level = zap.NewAtomicLevelAt(zapcore.DebugLevel)
	}
	cfg.DisableStacktrace = true
	cfg.EncoderConfig.EncodeLevel = zapcore.CapitalColorLevelEncoder
	log, err := cfg.Build()
	if err != nil {
		return zap.NewNop()
	}
	return log
}

// withDuration ends ctx after d (--duration; 0: never), and its cancel ends
// it sooner (--count).
func withDuration(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d > 0 {
		return context.WithTimeout(ctx, d)
	}
	return context.WithCancel(ctx)
}

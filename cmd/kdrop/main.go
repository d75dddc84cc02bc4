// Command kdrop shows where the kernel throws traffic away: drops with the
// kernel's reason, listen queue overflows with the queue and its limit, and
// the ICMP "unreachable" errors the kernel sends.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"
)

// version is set at build time (-ldflags -X main.version=...).
var version = "dev"

func main() {
	root := &cobra.Command{
		Use:   "kdrop",
		Short: "See where the kernel drops your traffic",
		Long: `kdrop traces, live, every place where the Linux kernel gives up on traffic:

  drop      a packet freed with a drop reason (kfree_skb), with the reason by
            name from this kernel's BTF and the kernel function that dropped it
  overflow  a listener's accept or SYN queue was full: the SYN or the final ACK
            was refused, with the queue length and its limit (somaxconn)
  unreach   the kernel answered with an ICMP error such as host-unreachable
            ("No route to host") or port-unreachable ("Connection refused")

It needs root and a kernel with BTF (CONFIG_DEBUG_INFO_BTF=y). Start with
"kdrop check" to see what this kernel supports, then "kdrop watch".`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	// Installed as kubectl-kdrop, kubectl runs it as a plugin ("kubectl kdrop
	// tail"): help and usage say so.
	if strings.HasPrefix(filepath.Base(os.Args[0]), "kubectl-kdrop") {
		root.Annotations = map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl kdrop"}
	}
	root.AddCommand(watchCmd(), tailCmd(), recordCmd(), reportCmd(), agentCmd(), checkCmd(), reasonsCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "kdrop:", err)
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(int(ee))
		}
		os.Exit(1)
	}
}

// exitError carries a specific exit code without another message.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func init() {
	// client-go's own logging (klog) would interleave with the event
	// stream; the resolver reports API trouble through zap, once.
	klog.SetOutput(io.Discard)
	klog.LogToStderr(false)
}

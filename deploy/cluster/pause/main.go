// Command pause is the test cluster's pod sandbox process, imported as
// registry.k8s.io/pause:3.6 (containerd 1.6's default sandbox_image) so that
// nothing is ever pulled. It holds the pod's namespaces open: it sleeps,
// reaps the zombies it inherits as the pod's PID 1 (shared PID namespace),
// and exits 0 on SIGTERM or SIGINT, as the upstream pause does.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		// One SIGCHLD may stand for several exited children.
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

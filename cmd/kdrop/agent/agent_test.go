package agent

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
)

// A new agent on a hostNetwork pod may start while the old one still holds
// the port: it waits for it rather than failing.
func TestListenRetryWaitsForThePort(t *testing.T) {
	old, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := old.Addr().String()
	go func() { time.Sleep(500 * time.Millisecond); old.Close() }()
	start := time.Now()
	ln, err := Listen(context.Background(), addr, 10*time.Second, zap.NewNop())
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	ln.Close()
	if waited := time.Since(start); waited < 400*time.Millisecond {
		t.Errorf("got the port after %v, while the old listener held it for 500ms", waited)
	}
	// Still in use at the deadline: the error says so.
	busy, _ := net.Listen("tcp", "127.0.0.1:0")
	defer busy.Close()
	if _, err := Listen(context.Background(), busy.Addr().String(), 300*time.Millisecond, zap.NewNop()); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("a port held past the deadline: got %v, want EADDRINUSE", err)
	}
}
